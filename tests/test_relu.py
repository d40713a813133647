"""ReLU on bfloat16 as an integer maximum, against tf.nn.relu."""

import numpy as np
import tensorflow as tf

from simclr_tf.devices import precision
from simclr_tf.network import relu
from simclr_tf.network import resnet
from simclr_tf.settings.config import EncoderConfig


def test_integer_maximum_is_max_with_zero_on_every_bfloat16(rng):
  """Every bfloat16 bit pattern but NaNs, and random values: numpy's
  maximum with 0 exactly; tf.nn.relu too, except that TensorFlow's kernel
  flushes subnormal positive numbers (below 1.2e-38) to zero."""
  bits = np.arange(-2**15, 2**15, dtype=np.int32).astype(np.int16)
  every = tf.bitcast(tf.constant(bits), tf.bfloat16)
  every = tf.boolean_mask(every, ~tf.math.is_nan(tf.cast(every, tf.float32)))
  values = tf.concat([every, tf.cast(rng.normal(size=1000), tf.bfloat16)], 0)
  ours = relu.relu(values)
  assert ours.dtype == tf.bfloat16
  ours = tf.cast(ours, tf.float32).numpy()
  exact = tf.cast(values, tf.float32).numpy()
  np.testing.assert_array_equal(ours, np.maximum(exact, 0))
  assert not np.signbit(ours).any()  # -0.0 comes out as +0.0.
  theirs = tf.cast(tf.nn.relu(values), tf.float32).numpy()
  normal = np.abs(exact) >= np.finfo(np.float32).tiny
  np.testing.assert_array_equal(ours[normal], theirs[normal])


def test_gradient_is_tensorflows_relu_gradient(rng):
  inputs = tf.cast(rng.normal(size=(4, 5, 6, 7)), tf.bfloat16)
  upstream = tf.cast(rng.normal(size=(4, 5, 6, 7)), tf.bfloat16)
  gradients = []
  for function in (relu.relu, tf.nn.relu):
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      outputs = function(inputs)
    gradients.append(tape.gradient(outputs, inputs,
                                   output_gradients=upstream).numpy())
  np.testing.assert_array_equal(gradients[0], gradients[1])
  expected = np.where(tf.cast(inputs, tf.float32).numpy() > 0,
                      tf.cast(upstream, tf.float32).numpy(), 0)
  np.testing.assert_array_equal(gradients[0].astype(np.float32), expected)


def test_other_dtypes_and_accelerators_use_tf_relu(monkeypatch, rng):
  calls = []
  integer_relu = relu._integer_relu
  monkeypatch.setattr(relu, '_integer_relu',
                      lambda x: calls.append(x) or integer_relu(x))
  values = rng.normal(size=10)
  relu.relu(tf.constant(values, tf.float32))
  assert not calls
  relu.relu(tf.constant(values, tf.bfloat16))
  assert len(calls) == 1
  monkeypatch.setattr(precision, 'sees_accelerator', lambda: True)
  relu.relu(tf.constant(values, tf.bfloat16))
  assert len(calls) == 1


def test_residual_blocks_end_with_it(monkeypatch, rng):
  calls = []
  monkeypatch.setattr(relu, 'relu',
                      lambda x: calls.append(x.shape) or tf.nn.relu(x))
  with precision.dtype_policy('bfloat16'):
    model = resnet.ResNet(EncoderConfig(resnet_depth=18,
                                        width_multiplier=0.125,
                                        cifar_stem=True))
  images = tf.constant(rng.uniform(size=(2, 8, 8, 3)), tf.float32)
  model(images, training=False)  # Builds the layers.
  calls.clear()
  model(images, training=False)
  assert len(calls) == 8  # One per basic block.
