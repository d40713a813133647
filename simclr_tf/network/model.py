"""The SimCLR model: encoder, projection head and supervised head."""

import keras
import tensorflow as tf

from simclr_tf.config import ModelConfig
from simclr_tf.devices import precision
from simclr_tf.network import architectures
from simclr_tf.network.heads import ProjectionHead, SupervisedHead
from simclr_tf.network.resnet import ResNet


class SimCLRModel(keras.Model):
  """`call(images)` returns a dict of named outputs.

  * `final_avg_pool`: the representation, [batch, feature_dim].
  * `proj_head_output`: the projection fed to the contrastive loss.
  * `logits_sup` (with a supervised head): class logits. When pretraining,
    the head sees stop_gradient(features), so linear evaluation runs
    alongside pretraining without changing the encoder.
  """

  def __init__(self, config: ModelConfig, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.encoder = ResNet(config.encoder, name='resnet')
    self.projection_head = ProjectionHead(config.projection_head,
                                          config.encoder,
                                          name='head_projection')
    self.supervised_head = None
    head = config.supervised_head
    if architectures.has_supervised_head(config):
      self.supervised_head = SupervisedHead(
          head.num_classes, head.zero_init_logits_layer,
          standardize=architectures.standardizes_supervised_head(config),
          encoder_config=config.encoder,
          name='head_supervised')
    if config.train_mode != 'pretrain':  # Fine-tuning or distillation.
      self.encoder.freeze_through(config.fine_tune_after_block)
      # The supervised head reads hiddens[ft_proj_selector]: the projection
      # layers after it get no gradient, so they are not trained.
      for layer in self.projection_head.projection_layers[
          head.ft_proj_selector:]:
        layer.trainable = False

  def call(self, images, training=None, supervised=True):
    """`supervised=False` leaves the supervised head out (pretraining steps
    that train it on other images: `supervised_head_logits`)."""
    features = self.encoder(images, training=training)['final_avg_pool']
    projection, hiddens = self.projection_head(features, training=training)
    outputs = {'final_avg_pool': features, 'proj_head_output': projection}
    if self.supervised_head is not None and supervised:
      head_input = hiddens[self.config.supervised_head.ft_proj_selector]
      if self.config.train_mode == 'pretrain':
        head_input = tf.stop_gradient(head_input)
      outputs['logits_sup'] = self.supervised_head(head_input,
                                                   training=training)
    return outputs

  def supervised_head_logits(self, images):
    """The supervised head's logits on `images` as evaluation sees them
    (pretraining's --lineareval_view=eval): encoder and projection head in
    inference mode (moving statistics, nothing updated, no gradient), the
    head itself in training mode."""
    features = self.encoder(images, training=False)['final_avg_pool']
    _, hiddens = self.projection_head(features, training=False)
    head_input = tf.stop_gradient(
        hiddens[self.config.supervised_head.ft_proj_selector])
    return self.supervised_head(head_input, training=True)

  # --- Variable groups: what optimizers and exports select by ------------

  @property
  def encoder_variables(self) -> list:
    return self.encoder.trainable_variables

  @property
  def projection_variables(self) -> list:
    return self.projection_head.trainable_variables

  @property
  def supervised_variables(self) -> list:
    head = self.supervised_head
    return head.trainable_variables if head is not None else []

  @property
  def batch_norm_statistics(self) -> list:
    """The moving means and variances of every batch norm."""
    return [variable for layer in self._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
            for variable in (layer.moving_mean, layer.moving_variance)]

  @property
  def batch_norm_variables(self) -> list:
    """The trainable scales and offsets of every batch norm."""
    return [variable for layer in self._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
            for variable in layer.trainable_variables]


def create_model(config: ModelConfig, image_size: int) -> SimCLRModel:
  """The model with its variables created, computing in `config.precision`
  (call inside the strategy's scope to place its variables there)."""
  with precision.dtype_policy(config.precision):
    model = SimCLRModel(config)
  build_eagerly(model, tf.zeros([1, image_size, image_size, 3]))
  return model


def build_eagerly(layer: keras.layers.Layer, inputs):
  """Creates `layer`'s variables by calling it once, eagerly, on `inputs`
  (in inference mode); returns what it returned.

  A Keras layer without a `build` method of its own builds by tracing its
  `call` symbolically, and each such layer inside it does so again: the
  ResNet's ops would be traced once per level of nesting (~2 s for a tiny
  ResNet-18). Layers that own no variables of their own are marked built,
  so that the one eager call builds each variable-owning layer from the
  shape it receives, in the same order and under the same names.
  """
  for sublayer in layer._flatten_layers(include_self=True):  # pylint: disable=protected-access
    if type(sublayer).build is keras.layers.Layer.build and not sublayer.built:
      sublayer.built = True
  return layer(inputs, training=False)
