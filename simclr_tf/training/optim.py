"""Optimizers (LARS, Nesterov momentum, Adam), weight decay and the
warmup + cosine learning-rate schedule."""

import math

import keras
from keras import ops
import tensorflow as tf

from simclr_tf.config import OptimConfig


def _is_vector(variable) -> bool:
  """Biases and normalisation scales / offsets: the 1-D variables."""
  return len(variable.shape) <= 1


def _matches(variable, exclusions) -> bool:
  """`exclusions` holds variables, or substrings of variable paths."""
  path = getattr(variable, 'path', variable.name)
  return any(variable is item if not isinstance(item, str) else item in path
             for item in exclusions)


class LearningRateMultipliers:
  """A Keras optimizer mixin: `scaled_variables` take their steps at
  `learning_rate_scale` times the learning rate (momentum, Adam's moments and
  everything else unchanged). Whatever the optimizer, the variables' whole
  update scales, the weight decay of their loss included: a loss weight would
  leave Adam's steps as they were (Adam normalises the gradient's scale) and
  the decay unscaled.
  """

  def __init__(self, *args, scaled_variables=(), learning_rate_scale=1.0,
               **kwargs):
    super().__init__(*args, **kwargs)
    self.scaled_variables = list(scaled_variables)
    self.learning_rate_scale = learning_rate_scale

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    scaled = {id(v) for v in self.scaled_variables}
    self._learning_rate_scales = [
        self.learning_rate_scale if id(v) in scaled else 1.0
        for v in variables]

  def update_step(self, gradient, variable, learning_rate):
    scale = self._learning_rate_scales[self._get_variable_index(variable)]
    if scale != 1.0:
      learning_rate = learning_rate * scale
    super().update_step(gradient, variable, learning_rate)


class LARS(keras.optimizers.Optimizer):
  """Layer-wise Adaptive Rate Scaling (You et al. 2017) with momentum.

  For each variable w with gradient g:
    g' = g + weight_decay * w                     (unless excluded)
    trust = eeta * |w| / |g'|  (1 if either norm is 0, or if excluded)
    v = momentum * v + learning_rate * trust * g'
    w = w - v

  Biases and batch-norm parameters (the 1-D variables) are excluded from
  both. `exclude_from_weight_decay` / `exclude_from_layer_adaptation` add
  variables, or substrings of variable paths (layer names), to exclude; the
  latter defaults to the former.
  """

  def __init__(self, learning_rate=0.001, momentum=0.9, weight_decay=0.0,
               eeta=0.001, exclude_from_weight_decay=None,
               exclude_from_layer_adaptation=None, name='LARS', **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = momentum
    # Not the base class's (decoupled) weight_decay: LARS adds it to g.
    self.lars_weight_decay = weight_decay
    self.eeta = eeta
    self.exclude_from_weight_decay_names = list(
        exclude_from_weight_decay or [])
    self.exclude_from_layer_adaptation_names = list(
        exclude_from_layer_adaptation
        if exclude_from_layer_adaptation is not None
        else self.exclude_from_weight_decay_names)

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    self.momentums = self.add_optimizer_variables(variables, 'momentum')
    self._decays = [self._use_decay(v) for v in variables]
    self._adapts = [self._use_adaptation(v) for v in variables]

  def _use_decay(self, variable) -> bool:
    return (self.lars_weight_decay > 0 and not _is_vector(variable) and
            not _matches(variable, self.exclude_from_weight_decay_names))

  def _use_adaptation(self, variable) -> bool:
    return (not _is_vector(variable) and
            not _matches(variable, self.exclude_from_layer_adaptation_names))

  def update_step(self, gradient, variable, learning_rate):
    index = self._get_variable_index(variable)
    learning_rate = ops.cast(learning_rate, variable.dtype)
    gradient = ops.cast(gradient, variable.dtype)
    if self._decays[index]:
      gradient = gradient + self.lars_weight_decay * variable
    if self._adapts[index]:
      weight_norm = tf.norm(variable)
      grad_norm = tf.norm(gradient)
      trust_ratio = tf.where(
          weight_norm > 0,
          tf.where(grad_norm > 0, self.eeta * weight_norm / grad_norm, 1.0),
          1.0)
      learning_rate = learning_rate * ops.cast(trust_ratio, variable.dtype)
    velocity = self.momentums[index]
    self.assign(velocity, self.momentum * velocity + learning_rate * gradient)
    self.assign_sub(variable, velocity)

  def get_config(self):
    config = super().get_config()
    config.update({
        'momentum': self.momentum, 'weight_decay': self.lars_weight_decay,
        'eeta': self.eeta,
        'exclude_from_weight_decay': _names(
            self.exclude_from_weight_decay_names),
        'exclude_from_layer_adaptation': _names(
            self.exclude_from_layer_adaptation_names)})
    return config


class ScaledLARS(LearningRateMultipliers, LARS):
  pass


class ScaledSGD(LearningRateMultipliers, keras.optimizers.SGD):
  pass


class ScaledAdam(LearningRateMultipliers, keras.optimizers.Adam):
  pass


def _names(exclusions):
  return [item if isinstance(item, str) else item.path for item in exclusions]


def scaled_learning_rate(config: OptimConfig, global_batch_size: int) -> float:
  """`linear`: lr * B / 256; `sqrt`: lr * sqrt(B) (paper, appendix B.1)."""
  if config.learning_rate_scaling == 'linear':
    return config.learning_rate * global_batch_size / 256
  if config.learning_rate_scaling == 'sqrt':
    return config.learning_rate * math.sqrt(global_batch_size)
  raise ValueError(f'Unknown learning_rate_scaling '
                   f'{config.learning_rate_scaling!r}.')


def learning_rate_schedule(config: OptimConfig, global_batch_size: int,
                           total_steps: int, warmup_steps: int):
  """Linear warmup from 0 over `warmup_steps`, then cosine decay to 0."""
  warmup_steps = min(warmup_steps, total_steps)
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0,
      decay_steps=max(1, total_steps - warmup_steps), alpha=0.0,
      warmup_target=scaled_learning_rate(config, global_batch_size),
      warmup_steps=warmup_steps)


def build_optimizer(config: OptimConfig, learning_rate, model,
                    scaled_variables=(), learning_rate_scale: float = 1.0):
  """Build it inside `strategy.scope()`, then `optimizer.build(variables)`.

  Under LARS the supervised head is trained with plain momentum and an L2
  loss (`weight_decay_loss`), as in the SimCLR code. `scaled_variables`
  (pretraining's supervised head) learn at `learning_rate_scale` times the
  learning rate.
  """
  scales = dict(scaled_variables=scaled_variables,
                learning_rate_scale=learning_rate_scale)
  if config.optimizer == 'lars':
    return ScaledLARS(learning_rate, momentum=config.momentum,
                      weight_decay=config.weight_decay, eeta=config.eeta,
                      exclude_from_weight_decay=model.supervised_variables,
                      **scales)
  if config.optimizer == 'momentum':
    return ScaledSGD(learning_rate, momentum=config.momentum, nesterov=True,
                     **scales)
  if config.optimizer == 'adam':
    return ScaledAdam(learning_rate, **scales)
  raise ValueError(f'Unknown optimizer {config.optimizer!r}.')


def weight_decay_loss(config: OptimConfig, model):
  """Weight decay that goes through the loss, as in the SimCLR code.

  LARS decays inside the optimizer, except for the supervised head, whose
  kernels get an L2 loss here. Momentum and Adam get an L2 loss on every
  trainable variable but batch-norm parameters.
  """
  if config.weight_decay == 0:
    return tf.constant(0.0)
  if config.optimizer == 'lars':
    decayed = [v for v in model.supervised_variables if not _is_vector(v)]
  else:
    batch_norm = {id(v) for v in model.batch_norm_variables}
    decayed = [v for v in model.trainable_variables
               if id(v) not in batch_norm]
  if not decayed:
    return tf.constant(0.0)
  return config.weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in decayed])
