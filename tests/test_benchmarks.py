"""The FLOP count that benchmarks/throughput.py reports GFLOP/s with."""

import pytest

from benchmarks import throughput
from simclr_tf import config as c
from simclr_tf import task as task_lib


def _resnet18_cifar_macs(size=32, width=64):
  """Multiply-adds of ResNet-18 with the CIFAR stem, by hand."""
  macs = size * size * 3 * width * 9  # Stem: 3x3, stride 1.
  channels = width
  for group in range(4):
    out = width * 2**group
    side = size // 2**group
    # First block: 3x3 (maybe strided) + 3x3, then 1x1 shortcut if needed.
    macs += side * side * (channels * out * 9 + out * out * 9)
    if group > 0 or channels != out:
      macs += side * side * channels * out
    macs += side * side * 2 * out * out * 9  # Second block.
    channels = out
  return macs


def test_forward_flops_of_resnet18_match_the_hand_count():
  config = c.build({'model_dir': '/tmp/unused', 'image_size': 32,
                    'resnet_depth': 18, 'cifar_stem': True,
                    'proj_head_mode': 'none'})
  model = task_lib.build_model(config)
  flops = throughput.forward_flops(model, 32)
  expected = 2 * _resnet18_cifar_macs()
  assert expected == pytest.approx(1.11e9, rel=0.01)  # 6.7 GFLOP / 6.
  # Convolutions dominate; batch norm, ReLU and the add are ~1% more.
  assert flops == pytest.approx(expected, rel=0.02)
