"""Batch norm through TensorFlow's fused kernel, with Keras' semantics."""

import contextlib
import threading

import keras
import tensorflow as tf

from simclr_tf.devices import distribute

_state = threading.local()


@contextlib.contextmanager
def moving_averages_frozen():
  """Batch norm called (traced) inside normalises with the batch statistics
  in training but leaves its moving averages alone: for a forward pass
  computed again (network/recompute.py), whose first pass updated them."""
  previous = getattr(_state, 'frozen', False)
  _state.frozen = True
  try:
    yield
  finally:
    _state.frozen = previous


def _moving_averages_are_frozen() -> bool:
  return getattr(_state, 'frozen', False)


class FusedBatchNormalization(keras.layers.BatchNormalization):
  """Keras batch norm through TensorFlow's fused kernel (oneDNN on CPU,
  cuDNN on GPU): in training when the statistics are local (one replica,
  or `synchronized=False`), and in inference.

  Keras 3 computes batch norm with separate reduce/multiply/add ops (in
  float32, with casts around them for bfloat16 inputs) and differentiates
  through each of them; the fused kernel does each pass in one op, and
  TensorFlow's graph optimizer fuses a ReLU that follows it directly (so the
  output is not reshaped unless the input was). Profiling a ResNet-18 step
  on CPU put the unfused training ops at 14% of the step; in bfloat16 the
  unfused inference ops doubled the time of the supervised head's
  evaluation view (docs/benchmarks.md, "Where the bfloat16 time goes").
  Cross-replica statistics keep Keras' synchronized path.
  """

  def call(self, inputs, training=None, mask=None):
    if not (mask is None and self.scale
            and self.axis in (-1, len(inputs.shape) - 1)):
      return super().call(inputs, training=training, mask=mask)
    if training and self.trainable:
      if self._statistics_are_synchronized():
        if _moving_averages_are_frozen():
          return self._synchronized_without_update(inputs)
        return super().call(inputs, training=training, mask=mask)
      return self._fused(inputs, training=True)
    return self._fused(inputs, training=False)

  def _synchronized_without_update(self, inputs):
    """What Keras' training call computes, without the moving averages'
    update: float32 statistics over every replica, float32 normalisation."""
    x = tf.cast(inputs, tf.float32)
    mean, variance = self._moments(x, None)
    outputs = keras.ops.batch_normalization(
        x, mean, variance, axis=self.axis,
        offset=tf.cast(self.beta, tf.float32) if self.center else None,
        scale=tf.cast(self.gamma, tf.float32), epsilon=self.epsilon)
    return tf.cast(outputs, self.compute_dtype)

  def _fused(self, inputs, training):
    channels = inputs.shape[-1]
    as_4d = tf.reshape(inputs, [-1, 1, 1, channels]) if (
        len(inputs.shape) != 4) else inputs
    scale = tf.cast(self.gamma, tf.float32)
    offset = (tf.cast(self.beta, tf.float32) if self.center
              else tf.zeros([channels], tf.float32))
    if not training:
      outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
          as_4d, scale, offset,
          mean=tf.cast(self.moving_mean, tf.float32),
          variance=tf.cast(self.moving_variance, tf.float32),
          epsilon=self.epsilon, is_training=False)
    else:
      outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
          as_4d, scale, offset, epsilon=self.epsilon, is_training=True)
      # The kernel returns the unbiased variance; Keras' moving average (and
      # its synchronized path) uses the biased one.
      count = tf.cast(tf.size(as_4d) // channels, tf.float32)
      variance = variance * (count - 1.0) / tf.maximum(count, 2.0)
    if training and not _moving_averages_are_frozen():
      self.moving_mean.assign(self.moving_mean * self.momentum +
                              mean * (1.0 - self.momentum))
      self.moving_variance.assign(self.moving_variance * self.momentum +
                                  variance * (1.0 - self.momentum))
    if outputs.shape != inputs.shape:
      outputs = tf.reshape(outputs, tf.shape(inputs))
    return tf.cast(outputs, self.compute_dtype)

  def _moments(self, inputs, mask):
    if mask is not None:
      return super()._moments(inputs, mask)
    if self._statistics_are_synchronized():
      return _synchronized_moments(inputs, self._reduction_axes)
    # One replica: the local moments. (Keras' synchronized path would
    # all-reduce over the default replica context, whose custom gradient a
    # SavedModel cannot keep: loading one then warns that gradients "will
    # likely fail".)
    return keras.ops.moments(inputs, self._reduction_axes)

  def _statistics_are_synchronized(self):
    if not self.synchronized:
      return False
    context = tf.distribute.get_replica_context()
    return context is not None and context.num_replicas_in_sync > 1


def _synchronized_moments(inputs, axes):
  """Mean and biased variance over every replica's batch: what Keras'
  synchronized moments compute (the sums of x and x^2 and the count over
  all replicas), in one all-reduce instead of three."""
  sums = tf.reduce_sum(inputs, axis=axes, keepdims=True)
  count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)),
                  inputs.dtype)
  local = [sums, tf.reduce_sum(tf.square(inputs), axis=axes, keepdims=True),
           tf.fill(tf.shape(sums), count)]
  total = distribute.cross_replica_sum(tf.concat(local, axis=-1))
  sums, squared_sums, counts = tf.split(total, 3, axis=-1)
  mean = tf.math.divide_no_nan(sums, counts)
  variance = tf.maximum(
      tf.math.divide_no_nan(squared_sums, counts) - tf.square(mean), 0.0)
  return tf.squeeze(mean, axes), tf.squeeze(variance, axes)
