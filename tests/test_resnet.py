"""The ResNet encoder: sizes from the paper, SimCLR conventions, freezing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import EncoderConfig
from simclr_tf.network import resnet
from simclr_tf.network.layers import get_layers, set_layers
from simclr_tf.network.model import build_eagerly


def _num_params(layer):
  return sum(int(np.prod(v.shape)) for v in layer.trainable_variables)


def _build(image_size=224, **kwargs):
  config = EncoderConfig(cifar_stem=image_size <= 32, **kwargs)
  model = resnet.ResNet(config)
  # As model.create builds (test_model checks it against Keras' own build).
  outputs = build_eagerly(
      model, tf.zeros([2, image_size, image_size, 3]))
  return model, outputs


@pytest.mark.parametrize('width,sk_ratio,paper_millions', [
    (1, 0.0, 24), (2, 0.0, 94), (4, 0.0, 375), (1, 0.0625, 35)])
def test_resnet50_parameter_counts_match_the_paper(width, sk_ratio,
                                                   paper_millions):
  # The input size does not change the count; small inputs keep it fast.
  model, _ = _build(image_size=64, resnet_depth=50, width_multiplier=width,
                    sk_ratio=sk_ratio)
  millions = _num_params(model) / 1e6
  assert abs(millions - paper_millions) / paper_millions < 0.025, millions


def test_endpoints_of_resnet50_at_224_px():
  _, outputs = _build(resnet_depth=50, width_multiplier=0.25)
  shapes = {k: tuple(v.shape) for k, v in outputs.items()}
  assert shapes == {
      'initial_conv': (2, 112, 112, 16), 'initial_max_pool': (2, 56, 56, 16),
      'block_group1': (2, 56, 56, 64), 'block_group2': (2, 28, 28, 128),
      'block_group3': (2, 14, 14, 256), 'block_group4': (2, 7, 7, 512),
      'final_avg_pool': (2, 512)}


def test_cifar_stem_keeps_the_resolution():
  model, outputs = _build(image_size=32, resnet_depth=18, width_multiplier=0.25)
  assert outputs['initial_conv'].shape == (2, 32, 32, 16)
  # No pool: as in the SimCLR code, `initial_max_pool` is the stem's output.
  assert outputs['initial_max_pool'].shape == (2, 32, 32, 16)
  assert outputs['block_group1'].shape == (2, 32, 32, 16)
  assert outputs['block_group4'].shape == (2, 4, 4, 128)
  assert model.feature_dim == 128
  kernel = model.stem.convs[0].conv.kernel
  assert tuple(kernel.shape) == (3, 3, 3, 16)


@pytest.mark.parametrize('depth,blocks', [(18, [2, 2, 2, 2]),
                                          (34, [3, 4, 6, 3]),
                                          (101, [3, 4, 23, 3]),
                                          (152, [3, 8, 36, 3]),
                                          (200, [3, 24, 36, 3])])
def test_depths_have_the_standard_block_counts(depth, blocks):
  model = resnet.ResNet(EncoderConfig(resnet_depth=depth,
                                      width_multiplier=0.25))
  assert [len(g.blocks) for g in model.block_groups] == blocks


def test_unsupported_depth_is_rejected():
  with pytest.raises(ValueError, match='resnet_depth=20'):
    resnet.ResNet(EncoderConfig(resnet_depth=20))


def test_simclr_conventions():
  model, _ = _build(image_size=32, resnet_depth=50, width_multiplier=0.25,
                    batch_norm_decay=0.95)
  layers = model._flatten_layers()  # pylint: disable=protected-access
  convs = [l for l in layers if isinstance(l, keras.layers.Conv2D)]
  bns = [l for l in layers if isinstance(l, keras.layers.BatchNormalization)]
  assert all(not c.use_bias for c in convs)
  assert all(b.epsilon == 1e-5 and b.momentum == 0.95 and b.synchronized
             for b in bns)
  # The stride sits on the 3x3 convolution of the first bottleneck.
  first = model.block_groups[1].blocks[0]
  assert first.conv1.strides == 1 and first.conv2.strides == 2
  # Each block's last batch norm starts at zero gamma...
  for group in model.block_groups:
    for block in group.blocks:
      assert not block.bn3.bn.gamma.numpy().any()
      assert block.bn1.bn.gamma.numpy().all()


def test_zero_gamma_makes_each_block_start_as_its_shortcut(rng):
  config = EncoderConfig(resnet_depth=18, width_multiplier=0.25)
  block = resnet.BasicBlock(config, 8, 1, use_projection=False)
  x = tf.constant(rng.normal(size=(2, 6, 6, 8)), tf.float32)
  np.testing.assert_allclose(block(x, training=False), tf.nn.relu(x),
                             atol=1e-6)


def test_standard_initialisation_keeps_every_residual_branch(rng):
  x = tf.constant(rng.normal(size=(2, 6, 6, 8)), tf.float32)
  config = EncoderConfig(resnet_depth=18, width_multiplier=0.25,
                         zero_init_residual=False)
  block = resnet.BasicBlock(config, 8, 1, use_projection=False)
  output = block(x, training=False)
  assert block.bn2.bn.gamma.numpy().all()
  # In inference mode with initial statistics, batch norm is x / sqrt(1 +
  # eps): the block is relu(x + conv2(relu(conv1(x) / s)) / s).
  scale = np.sqrt(1 + 1e-5)
  inner = tf.nn.relu(block.conv1(x) / scale)
  expected = tf.nn.relu(x + block.conv2(inner) / scale)
  np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)
  assert np.abs(output - tf.nn.relu(x)).max() > 0.1


def test_global_bn_flag_selects_synchronized_batch_norm():
  model, _ = _build(image_size=32, resnet_depth=18, width_multiplier=0.25,
                    global_bn=False)
  bns = [l for l in model._flatten_layers()  # pylint: disable=protected-access
         if isinstance(l, keras.layers.BatchNormalization)]
  assert bns and not any(b.synchronized for b in bns)


def test_fixed_padding_halves_odd_and_even_sizes():
  conv = resnet.FixedPaddingConv2D(4, 3, 2)
  for size, expected in [(7, 4), (8, 4), (9, 5)]:
    assert conv(tf.zeros([1, size, size, 2])).shape[1] == expected


def test_squeeze_excite_matches_numpy(rng):
  layer = resnet.SqueezeExcite(filters=8, se_ratio=0.25)
  x = rng.normal(size=(2, 3, 3, 8)).astype(np.float32)
  out = layer(tf.constant(x)).numpy()
  w1, b1 = layer.reduce.kernel.numpy()[0, 0], layer.reduce.bias.numpy()
  w2, b2 = layer.expand.kernel.numpy()[0, 0], layer.expand.bias.numpy()
  assert w1.shape == (8, 2)
  pooled = x.mean(axis=(1, 2))
  gate = 1 / (1 + np.exp(-(np.maximum(pooled @ w1 + b1, 0) @ w2 + b2)))
  np.testing.assert_allclose(out, x * gate[:, None, None, :], rtol=1e-5,
                             atol=1e-6)


def test_selective_kernel_and_se_build_and_mix(rng):
  model, outputs = _build(image_size=64, resnet_depth=50, width_multiplier=0.25,
                          sk_ratio=0.0625, se_ratio=0.25)
  assert outputs['final_avg_pool'].shape == (2, 512)
  sk = model.block_groups[0].blocks[0].conv2
  assert isinstance(sk, resnet.SelectiveKernel)
  # ResNet-D stem: three 3x3 convolutions, the first strided.
  assert [c.conv.kernel.shape[0] for c in model.stem.convs] == [3, 3, 3]
  assert model.stem.convs[0].strides == 2
  # The SK output is a per-channel convex mix of its two streams.
  x = tf.constant(rng.normal(size=(1, 8, 8, 16)), tf.float32)
  streams = tf.split(sk.bn(sk.conv(x), training=False), 2, axis=-1)
  out = sk(x, training=False).numpy()
  low = np.minimum(streams[0], streams[1]) - 1e-5
  high = np.maximum(streams[0], streams[1]) + 1e-5
  assert ((out >= low) & (out <= high)).all()


@pytest.mark.parametrize('stage,frozen', [(-1, []), (0, ['stem']),
                                          (2, ['stem', 'block_group1',
                                               'block_group2'])])
def test_freeze_through_stops_training_up_to_the_stage(stage, frozen, rng):
  model, _ = _build(image_size=16, resnet_depth=18, width_multiplier=0.25)
  model.freeze_through(stage)
  stages = [model.stem, *model.block_groups]
  for layer in stages:
    assert bool(layer.trainable_variables) == (layer.name not in frozen)
  for v in model.weights:  # Zero gammas would stop gradients by themselves.
    if v.name == 'gamma':
      v.assign(tf.ones_like(v))
  # Watch every kernel, frozen or not: gradients must stop at the frozen
  # stages' output and reach every kernel after it.
  kernels = {layer.name: [v.value for v in layer.weights
                          if v.name == 'kernel'] for layer in stages}
  x = tf.constant(rng.uniform(size=(2, 16, 16, 3)), tf.float32)
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    for variables in kernels.values():
      tape.watch(variables)
    loss = tf.reduce_sum(model(x, training=True)['final_avg_pool'] ** 2)
  grads = tape.gradient(loss, kernels)
  for name, layer_grads in grads.items():
    reached = [g is not None and np.any(g.numpy()) for g in layer_grads]
    assert all(reached) == (name not in frozen)
    assert any(reached) == (name not in frozen)


def test_keras_still_leaves_lists_of_layers_out_of_checkpoints(tmp_path):
  # Why set_layers keeps sub-layers as named attributes: Keras 3
  # (3.15 with TensorFlow 2.21) does not track a list of layers for
  # tf.train.Checkpoint. When this fails, lists work and set_layers can go.
  class WithList(keras.layers.Layer):
    def __init__(self):
      super().__init__()
      self.blocks = [keras.layers.Dense(3), keras.layers.Dense(4)]

    def call(self, x):
      for block in self.blocks:
        x = block(x)
      return x

  class WithAttributes(keras.layers.Layer):
    def __init__(self):
      super().__init__()
      self.count = set_layers(
          self, 'block', [keras.layers.Dense(3), keras.layers.Dense(4)])

    def call(self, x):
      for block in get_layers(self, 'block', self.count):
        x = block(x)
      return x

  saved = {}
  for cls in (WithList, WithAttributes):
    layer = cls()
    layer(tf.zeros([1, 2]))
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / cls.__name__))
    saved[cls] = [name for name, _ in tf.train.list_variables(path)
                  if 'kernel' in name or 'bias' in name]
  assert saved[WithList] == []
  assert len(saved[WithAttributes]) == 4
