"""ResNet v1 encoders as in the SimCLR code (v1 and v2): width multipliers,
selective kernels, squeeze-excitation and a CIFAR stem.

Conventions taken from the original: stride on the 3x3 convolution,
convolutions without bias, "fixed" padding for strided convolutions, the last
batch norm of each block starting at zero gamma, a 1x1 projection on the
shortcut of every block group's first block, BN epsilon 1e-5.
"""

import keras
import tensorflow as tf

from simclr_tf.config import EncoderConfig
from simclr_tf.network.architectures import DEPTHS
from simclr_tf.network import recompute
from simclr_tf.network.layers import BatchNormRelu, get_layers, set_layers
from simclr_tf.network.speedups import weight_gradients

# Stages that `fine_tune_after_block` can freeze: 0 the stem, 1-4 the groups.
STAGE_NAMES = ('stem', 'block_group1', 'block_group2', 'block_group3',
               'block_group4')


def _width(base: int, multiplier: float) -> int:
  return max(1, int(round(base * multiplier)))


def _conv_initializer():
  return keras.initializers.VarianceScaling()


class FixedPaddingConv2D(keras.layers.Layer):
  """Convolution whose padding depends only on the kernel, not the input.

  Strided convolutions pad explicitly (as the SimCLR and TPU ResNet code do)
  so that the output does not shift with the input size's parity.
  """

  def __init__(self, filters, kernel_size, strides, **kwargs):
    super().__init__(**kwargs)
    self.strides = strides
    total = kernel_size - 1
    self.pad = keras.layers.ZeroPadding2D(
        ((total // 2, total - total // 2),) * 2) if strides > 1 else None
    self.conv = keras.layers.Conv2D(
        filters, kernel_size, strides=strides,
        padding='valid' if strides > 1 else 'same', use_bias=False,
        kernel_initializer=_conv_initializer())

  def build(self, input_shape):
    if self.pad is not None:
      input_shape = self.pad.compute_output_shape(input_shape)
    self.conv.build(input_shape)

  def call(self, inputs, training=None):
    del training  # Same signature as the other layers of a block.
    if self.pad is not None:
      inputs = self.pad(inputs)
    if weight_gradients.applies(inputs.shape, self.conv.kernel_size[0],
                                self.strides, inputs.dtype):
      return weight_gradients.conv3x3(self.strides)(
          inputs, tf.cast(self.conv.kernel, inputs.dtype))
    return self.conv(inputs)


class SelectiveKernel(keras.layers.Layer):
  """SimCLRv2's selective-kernel 3x3 convolution: two streams (one 3x3
  convolution of twice the filters, split in two) mixed per channel by
  softmax weights computed from their pooled sum."""

  def __init__(self, config: EncoderConfig, filters, strides, min_dim=32,
               **kwargs):
    super().__init__(**kwargs)
    self.conv = FixedPaddingConv2D(2 * filters, 3, strides)
    self.bn = BatchNormRelu(config)
    self.reduce = keras.layers.Conv2D(
        max(int(filters * config.sk_ratio), min_dim), 1, use_bias=False,
        kernel_initializer=_conv_initializer())
    self.reduce_bn = BatchNormRelu(config)
    self.expand = keras.layers.Conv2D(2 * filters, 1, use_bias=False,
                                      kernel_initializer=_conv_initializer())

  def call(self, inputs, training=None):
    streams = self.bn(self.conv(inputs), training=training)
    streams = tf.stack(tf.split(streams, 2, axis=-1))  # [2, B, H, W, C]
    pooled = tf.reduce_mean(tf.reduce_sum(streams, 0), [1, 2], keepdims=True)
    mixing = self.expand(self.reduce_bn(self.reduce(pooled),
                                        training=training))
    mixing = tf.nn.softmax(tf.stack(tf.split(mixing, 2, axis=-1)), axis=0)
    return tf.reduce_sum(streams * mixing, axis=0)


class SqueezeExcite(keras.layers.Layer):
  """Channel gating from pooled features (squeeze to filters * se_ratio)."""

  def __init__(self, filters, se_ratio, **kwargs):
    super().__init__(**kwargs)
    self.squeezed = max(1, int(filters * se_ratio))

  def build(self, input_shape):
    channels = input_shape[-1]
    # Built after the model's dtype policy scope has closed: the policy is
    # passed on, or the gate would compute in float32 beside bfloat16 inputs.
    self.reduce = keras.layers.Conv2D(self.squeezed, 1, use_bias=True,
                                      kernel_initializer=_conv_initializer(),
                                      dtype=self.dtype_policy)
    self.expand = keras.layers.Conv2D(channels, 1, use_bias=True,
                                      kernel_initializer=_conv_initializer(),
                                      dtype=self.dtype_policy)

  def call(self, inputs):
    gate = tf.reduce_mean(inputs, [1, 2], keepdims=True)
    gate = self.expand(tf.nn.relu(self.reduce(gate)))
    return tf.sigmoid(gate) * inputs


class Shortcut(keras.layers.Layer):
  """1x1 projection of the shortcut; with SK, ResNet-D's average pool first."""

  def __init__(self, config: EncoderConfig, filters_out, strides, **kwargs):
    super().__init__(**kwargs)
    self.strides = strides
    self.pool = None
    if config.sk_ratio > 0:
      if strides > 1:
        self.pool = keras.Sequential([
            keras.layers.ZeroPadding2D(((0, 1), (0, 1))),
            keras.layers.AveragePooling2D(2, strides, padding='valid')])
      else:
        self.pool = keras.layers.AveragePooling2D(2, 1, padding='same')
      self.conv = FixedPaddingConv2D(filters_out, 1, 1)
    else:
      self.conv = FixedPaddingConv2D(filters_out, 1, strides)
    self.bn = BatchNormRelu(config, relu=False)

  def call(self, inputs, training=None):
    if self.pool is not None:
      inputs = self.pool(inputs)
    return self.bn(self.conv(inputs), training=training)


class _ResidualBlock(keras.layers.Layer):
  """relu(residual(x) [gated by squeeze-excitation] + shortcut(x))."""

  def __init__(self, config: EncoderConfig, filters, filters_out, strides,
               use_projection, **kwargs):
    super().__init__(**kwargs)
    self.shortcut = (Shortcut(config, filters_out, strides) if use_projection
                     else None)
    self.se = (SqueezeExcite(filters, config.se_ratio)
               if config.se_ratio > 0 else None)

  def residual(self, inputs, training):
    raise NotImplementedError

  def call(self, inputs, training=None):
    shortcut = (self.shortcut(inputs, training=training) if self.shortcut
                else inputs)
    x = self.residual(inputs, training)
    if self.se is not None:
      x = self.se(x)
    return tf.nn.relu(x + shortcut)


class BasicBlock(_ResidualBlock):
  """Two 3x3 convolutions (ResNet-18 and -34)."""

  expansion = 1

  def __init__(self, config: EncoderConfig, filters, strides, use_projection,
               **kwargs):
    super().__init__(config, filters, filters, strides, use_projection,
                     **kwargs)
    self.conv1 = FixedPaddingConv2D(filters, 3, strides)
    self.bn1 = BatchNormRelu(config)
    self.conv2 = FixedPaddingConv2D(filters, 3, 1)
    self.bn2 = BatchNormRelu(config, relu=False,
                              zero_gamma=config.zero_init_residual)

  def residual(self, inputs, training):
    x = self.bn1(self.conv1(inputs), training=training)
    return self.bn2(self.conv2(x), training=training)


class BottleneckBlock(_ResidualBlock):
  """1x1 reduce, 3x3 (strided), 1x1 expand x4 (ResNet-50 and deeper)."""

  expansion = 4

  def __init__(self, config: EncoderConfig, filters, strides, use_projection,
               **kwargs):
    super().__init__(config, filters, 4 * filters, strides, use_projection,
                     **kwargs)
    self.conv1 = FixedPaddingConv2D(filters, 1, 1)
    self.bn1 = BatchNormRelu(config)
    if config.sk_ratio > 0:
      # Selective kernels bring their own batch norm and ReLU.
      self.conv2 = SelectiveKernel(config, filters, strides)
      self.bn2 = None
    else:
      self.conv2 = FixedPaddingConv2D(filters, 3, strides)
      self.bn2 = BatchNormRelu(config)
    self.conv3 = FixedPaddingConv2D(4 * filters, 1, 1)
    self.bn3 = BatchNormRelu(config, relu=False,
                              zero_gamma=config.zero_init_residual)

  def residual(self, inputs, training):
    x = self.bn1(self.conv1(inputs), training=training)
    x = self.conv2(x, training=training)
    if self.bn2 is not None:
      x = self.bn2(x, training=training)
    return self.bn3(self.conv3(x), training=training)


class BlockGroup(keras.layers.Layer):
  """A stage of blocks; the first one strides and projects the shortcut."""

  def __init__(self, config: EncoderConfig, block_cls, filters, num_blocks,
               strides, **kwargs):
    super().__init__(**kwargs)
    self.recompute_blocks = config.recompute == 'blocks'
    self.num_blocks = set_layers(self, 'block', [
        block_cls(config, filters, strides if i == 0 else 1,
                  use_projection=(i == 0), name=f'block{i + 1}')
        for i in range(num_blocks)])

  @property
  def blocks(self):
    return get_layers(self, 'block', self.num_blocks)

  def call(self, inputs, training=None):
    for block in self.blocks:
      if training and self.recompute_blocks:
        inputs = recompute.recomputed_call(block, inputs, training)
      else:
        inputs = block(inputs, training=training)
    return inputs


class Stem(keras.layers.Layer):
  """7x7/2 conv + 3x3/2 max pool; ResNet-D's three 3x3 convs with SK; a
  single 3x3/1 conv and no pool for CIFAR-sized images.

  As in the SimCLR code, `initial_conv` is the last convolution's output
  before its batch norm and `initial_max_pool` the stem's output (after the
  pool; with the CIFAR stem, which has none, after batch norm and ReLU).
  """

  def __init__(self, config: EncoderConfig, **kwargs):
    super().__init__(**kwargs)
    width = _width(64, config.width_multiplier)
    if config.cifar_stem:
      convs = [FixedPaddingConv2D(width, 3, 1)]
    elif config.sk_ratio > 0:
      convs = [FixedPaddingConv2D(width // 2, 3, 2),
               FixedPaddingConv2D(width // 2, 3, 1),
               FixedPaddingConv2D(width, 3, 1)]
    else:
      convs = [FixedPaddingConv2D(width, 7, 2)]
    self.num_convs = set_layers(self, 'conv', convs)
    set_layers(self, 'bn', [BatchNormRelu(config) for _ in convs])
    self.pool = (None if config.cifar_stem else
                 keras.layers.MaxPooling2D(3, 2, padding='same'))

  def call(self, inputs, training=None):
    endpoints = {}
    x = inputs
    for conv, bn in zip(self.convs, self.bns):
      x = conv(x)
      if conv is self.convs[-1]:
        endpoints['initial_conv'] = x
      x = bn(x, training=training)
    if self.pool is not None:
      x = self.pool(x)
    endpoints['initial_max_pool'] = x
    return x, endpoints

  @property
  def convs(self):
    return get_layers(self, 'conv', self.num_convs)

  @property
  def bns(self):
    return get_layers(self, 'bn', self.num_convs)


class ResNet(keras.Model):
  """ResNet v1 encoder returning named endpoints.

  `call` returns a dict with `initial_conv`, `initial_max_pool`,
  `block_group1`..`block_group4` and `final_avg_pool`, the
  [batch, feature_dim] representation.
  """

  def __init__(self, config: EncoderConfig, **kwargs):
    super().__init__(**kwargs)
    if config.resnet_depth not in DEPTHS:
      raise ValueError(f'resnet_depth={config.resnet_depth} is not one of '
                       f'{tuple(DEPTHS)}.')
    self.config = config
    kind, blocks_per_group = DEPTHS[config.resnet_depth]
    block_cls = BasicBlock if kind == 'basic' else BottleneckBlock
    self.stem = Stem(config, name='stem')
    set_layers(self, 'block_group', [
        BlockGroup(config, block_cls,
                   _width(base, config.width_multiplier), num_blocks,
                   strides=1 if i == 0 else 2, name=f'block_group{i + 1}')
        for i, (base, num_blocks) in enumerate(zip((64, 128, 256, 512),
                                                   blocks_per_group))])
    self.feature_dim = (_width(512, config.width_multiplier) *
                        block_cls.expansion)
    self.frozen_stages = 0

  @property
  def block_groups(self):
    return get_layers(self, 'block_group', 4)

  def freeze_through(self, stage: int):
    """Freezes the stem (0) and block groups up to `stage` (1-4); -1: none.

    Frozen layers are not trainable, run their batch norm in inference mode,
    and gradients stop at their output (`fine_tune_after_block`).
    """
    if not -1 <= stage <= 4:
      raise ValueError(f'fine_tune_after_block={stage} must be in [-1, 4].')
    self.frozen_stages = stage + 1
    for i, layer in enumerate([self.stem, *self.block_groups]):
      layer.trainable = i >= self.frozen_stages

  def call(self, inputs, training=None):
    x, endpoints = self.stem(inputs, training=training)
    if self.frozen_stages == 1:
      x = tf.stop_gradient(x)
    for i, group in enumerate(self.block_groups, start=2):
      x = group(x, training=training)
      endpoints[group.name] = x
      if self.frozen_stages == i:
        x = tf.stop_gradient(x)
    endpoints['final_avg_pool'] = tf.reduce_mean(x, [1, 2])
    return endpoints
