"""Layers the encoder and the heads share: batch norm (+ ReLU) as the SimCLR
code configures it, and named lists of sub-layers."""

import keras
import tensorflow as tf

from simclr_tf.config import EncoderConfig
from simclr_tf.network.speedups.batch_norm import FusedBatchNormalization

BATCH_NORM_EPSILON = 1e-5  # The original's.


def set_layers(owner, prefix: str, layers) -> int:
  """Makes each layer a named attribute of `owner`; returns how many.

  Keras 3 does not put lists of layers into `tf.train.Checkpoint`s, so
  sequences of sub-layers are kept as attributes `prefix1`, `prefix2`, ...
  and read back with `get_layers`.
  """
  for i, layer in enumerate(layers, start=1):
    setattr(owner, f'{prefix}{i}', layer)
  return len(layers)


def get_layers(owner, prefix: str, count: int) -> list:
  return [getattr(owner, f'{prefix}{i}') for i in range(1, count + 1)]


class BatchNormRelu(keras.layers.Layer):
  """Batch norm (global when `synchronized`), then an optional ReLU."""

  def __init__(self, config: EncoderConfig, relu=True, zero_gamma=False,
               center=True, **kwargs):
    super().__init__(**kwargs)
    self.relu = relu
    self.bn = FusedBatchNormalization(
        momentum=config.batch_norm_decay, epsilon=BATCH_NORM_EPSILON,
        center=center, synchronized=config.global_bn,
        gamma_initializer='zeros' if zero_gamma else 'ones')

  def call(self, inputs, training=None):
    outputs = self.bn(inputs, training=training)
    return tf.nn.relu(outputs) if self.relu else outputs
