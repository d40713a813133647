"""Projection head (for the contrastive loss) and supervised head.

Each projection layer is a dense layer followed by batch norm, as in the
SimCLR code: the batch norm normalises every output unit over the (global)
batch; the dense layer has no bias because batch norm's beta takes its place,
and the last layer has neither beta nor ReLU, so the projection output is
centred per unit before the contrastive loss normalises each vector.
"""

import keras
import tensorflow as tf

from simclr_tf.config import EncoderConfig, ProjectionHeadConfig
from simclr_tf.network import architectures
from simclr_tf.network.layers import BatchNormRelu, get_layers, set_layers
from simclr_tf.network.speedups.batch_norm import FusedBatchNormalization


class LinearLayer(keras.layers.Layer):
  """Dense (N(0, 0.01) init), optionally followed by batch norm."""

  def __init__(self, units, encoder_config: EncoderConfig | None = None,
               use_bias=True, use_bn=False, zero_init=False, **kwargs):
    super().__init__(**kwargs)
    self.units = units  # None: as many as the input has.
    self.use_bias = use_bias
    self.use_bn = use_bn
    self.zero_init = zero_init
    self.bn = (BatchNormRelu(encoder_config, relu=False, center=use_bias)
               if use_bn else None)

  def build(self, input_shape):
    initializer = ('zeros' if self.zero_init else
                   keras.initializers.RandomNormal(stddev=0.01))
    self.dense = keras.layers.Dense(
        self.units or input_shape[-1], kernel_initializer=initializer,
        use_bias=self.use_bias and not self.use_bn,
        trainable=self.trainable)  # Built after a freeze, it stays frozen.

  def call(self, inputs, training=None):
    outputs = self.dense(inputs)
    if self.bn is not None:
      outputs = self.bn(outputs, training=training)
    return outputs


class ProjectionHead(keras.layers.Layer):
  """`none`: identity; `linear`: one layer; `nonlinear`: `num_proj_layers`
  layers with ReLU between them (middle layers keep the input width).

  `call` returns (projection output, hiddens) where hiddens[0] is the input
  and hiddens[k] the output of layer k, for `ft_proj_selector`.
  """

  def __init__(self, config: ProjectionHeadConfig,
               encoder_config: EncoderConfig,
               **kwargs):
    super().__init__(**kwargs)
    self.config = config
    layers = []
    num_layers = architectures.projection_layers(config.proj_head_mode,
                                                 config.num_proj_layers)
    for j in range(num_layers):
      last = j == num_layers - 1
      layers.append(LinearLayer(
          config.proj_out_dim if last else None, encoder_config,
          use_bias=not last, use_bn=True, name=f'layer{j + 1}'))
    self.num_layers = set_layers(self, 'layer', layers)

  @property
  def projection_layers(self):
    return get_layers(self, 'layer', self.num_layers)

  def call(self, inputs, training=None):
    hiddens = [inputs]
    for j, layer in enumerate(self.projection_layers):
      outputs = layer(hiddens[-1], training=training)
      if j != len(self.projection_layers) - 1:
        outputs = tf.nn.relu(outputs)
      hiddens.append(outputs)
    return hiddens[-1], hiddens


class SupervisedHead(keras.layers.Layer):
  """One dense layer with bias producing class logits; with `standardize`,
  a batch norm without scale or offset first (the features of a linear
  evaluation at a common scale whatever pretraining does to them)."""

  def __init__(self, num_classes, zero_init=False, standardize=False,
               encoder_config: EncoderConfig | None = None, **kwargs):
    super().__init__(**kwargs)
    # Over the global batch with global batch norm, like every other.
    self.standardize = (FusedBatchNormalization(
        momentum=encoder_config.batch_norm_decay, center=False, scale=False,
        synchronized=encoder_config.global_bn, name='standardize')
                        if standardize else None)
    self.linear = LinearLayer(num_classes, use_bias=True, use_bn=False,
                              zero_init=zero_init)

  def call(self, inputs, training=None):
    if self.standardize is not None:
      inputs = self.standardize(inputs, training=training)
    return self.linear(inputs, training=training)
