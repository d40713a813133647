"""SimCLR pretraining throughput in PyTorch with lightly: the reference
benchmarks/side_by_side.py measures simclr_tf against.

  python benchmarks/torch_simclr.py --precision=bfloat16 --compile

Runs in its own environment (benchmarks/requirements-torch.txt: PyTorch's CPU
build, torchvision, lightly); imports neither TensorFlow nor simclr_tf.
The same work as simclr_tf's `resnet18_32px_b128` throughput configuration:
torchvision's ResNet-18 with the CIFAR stem (3x3/1 convolution, no max pool)
on 32 px images, two views of 128 images per step, lightly's 2-layer
SimCLRProjectionHead (512-512-128) and NTXentLoss (temperature 0.5), a
linear classifier on the detached features trained alongside, lightly's
LARS. PyTorch's CPU settings: bfloat16 through `torch.autocast`,
`torch.compile` of the whole forward and backward pass (the optimizer step
stays eager; it takes a few milliseconds), channels-last tensors
(`--memory_format`; oneDNN's preferred layout) or PyTorch's default NCHW.
Images are random tensors made once, so this is the model step alone,
without an input pipeline. Prints `RESULT {json}`.
"""

import argparse
import importlib
import importlib.util
import json
import resource
import sys
import time
import types


def import_torchvision_models():
  """`torchvision.models`, also where torchvision's C operators cannot load
  (PyPI's torchvision is built against CUDA PyTorch; beside the CPU build
  its import fails registering them): the models are plain PyTorch modules,
  imported then without the package's __init__. (The tests load PyTorch
  exports into them through this function too.)"""
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
    return torchvision.models
  except RuntimeError:
    for name in [n for n in sys.modules if n.split('.')[0] == 'torchvision']:
      del sys.modules[name]
    spec = importlib.util.find_spec('torchvision')
    package = types.ModuleType('torchvision')
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules['torchvision'] = package
    return importlib.import_module('torchvision.models')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--precision', choices=['float32', 'bfloat16'],
                      default='bfloat16')
  parser.add_argument('--compile', action='store_true',
                      help='torch.compile the forward and backward pass.')
  parser.add_argument('--memory_format', default='channels_last',
                      choices=['channels_last', 'contiguous'],
                      help='Tensor layout: channels-last (NHWC) or '
                      'PyTorch\'s default (NCHW).')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--warmup_steps', type=int, default=3)
  parser.add_argument('--timed_steps', type=int, default=6)
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  models = import_torchvision_models()
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.nn import functional  # pylint: disable=g-import-not-at-top
  from lightly.loss import NTXentLoss  # pylint: disable=g-import-not-at-top
  from lightly.models.modules import SimCLRProjectionHead  # pylint: disable=g-import-not-at-top
  from lightly.utils.lars import LARS  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  backbone = models.resnet18()
  backbone.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
  backbone.maxpool = nn.Identity()
  backbone.fc = nn.Identity()
  head = SimCLRProjectionHead(512, 512, 128, num_layers=2)
  classifier = nn.Linear(512, 10)
  memory_format = getattr(torch, f'{args.memory_format}_format'
                          if args.memory_format == 'contiguous'
                          else args.memory_format)
  modules = nn.ModuleList([backbone, head, classifier]).to(
      memory_format=memory_format)
  criterion = NTXentLoss(temperature=0.5)
  optimizer = LARS(modules.parameters(), lr=0.1, momentum=0.9,
                   weight_decay=1e-6)
  low_precision = args.precision == 'bfloat16'

  def loss_of(view1, view2, labels):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=low_precision):
      features = backbone(torch.cat([view1, view2]))
      projections = head(features).float()
      logits = classifier(features.detach()).float()
    first, second = projections.chunk(2)
    return (criterion(first, second) +
            functional.cross_entropy(logits, torch.cat([labels, labels])))

  step_loss = torch.compile(loss_of) if args.compile else loss_of
  generator = torch.Generator().manual_seed(0)
  shape = (args.batch_size, 3, args.image_size, args.image_size)
  views = [torch.rand(shape, generator=generator).contiguous(
      memory_format=memory_format) for _ in range(2)]
  labels = torch.randint(0, 10, (args.batch_size,), generator=generator)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = step_loss(*views, labels)
    loss.backward()
    optimizer.step()
    return loss.item()

  started = time.perf_counter()
  for _ in range(args.warmup_steps):
    step()
  warmup_seconds = time.perf_counter() - started
  started = time.perf_counter()
  for _ in range(args.timed_steps):
    loss = step()
  seconds = time.perf_counter() - started
  result = {
      'system': 'lightly + PyTorch' + (', torch.compile' if args.compile
                                        else ', eager'),
      'precision': args.precision, 'memory_format': args.memory_format,
      'batch_size': args.batch_size,
      'image_size': args.image_size,
      'images_per_second': args.batch_size * args.timed_steps / seconds,
      'warmup_seconds': warmup_seconds,
      'peak_memory_gb': resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
      'last_loss': loss, 'torch': torch.__version__,
      'threads': torch.get_num_threads(),
  }
  print('RESULT ' + json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
