"""The 3x3 convolution whose weight gradient is a matmul, against
TensorFlow's own convolution gradient."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.devices import precision
from simclr_tf.network import resnet
from simclr_tf.network import weight_gradients


def _gradients(convolve, inputs, kernel, upstream):
  with tf.GradientTape() as tape:
    tape.watch([inputs, kernel])
    loss = tf.reduce_sum(tf.cast(convolve(inputs, kernel), tf.float32) *
                         upstream)
  return [g.numpy().astype(np.float64) for g in
          tape.gradient(loss, [inputs, kernel])]


@pytest.mark.parametrize('dtype,tolerance', [('float32', 1e-5),
                                             ('bfloat16', 2e-2)])
@pytest.mark.parametrize('size', [4, 3])
def test_gradients_equal_tensorflows_own(dtype, tolerance, size, rng):
  inputs = tf.cast(rng.normal(size=(5, size, size, 6)), dtype)
  kernel = tf.cast(rng.normal(size=(3, 3, 6, 7)) * 0.3, dtype)
  upstream = tf.constant(rng.normal(size=(5, size, size, 7)), tf.float32)
  outputs = weight_gradients.conv3x3(inputs, kernel)
  reference = tf.nn.conv2d(inputs, kernel, 1, 'SAME')
  np.testing.assert_array_equal(outputs.numpy(), reference.numpy())
  ours = _gradients(weight_gradients.conv3x3, inputs, kernel, upstream)
  theirs = _gradients(lambda x, k: tf.nn.conv2d(x, k, 1, 'SAME'), inputs,
                      kernel, upstream)
  for mine, expected in zip(ours, theirs):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(mine, expected, atol=tolerance * scale)


def test_kernel_gradient_matches_a_numpy_sum_over_taps(rng):
  """dL/dk[i, j, c, k] = sum over n, h, w of padded x[n, h + i, w + j, c] *
  dy[n, h, w, k], written out in numpy."""
  x = rng.normal(size=(2, 4, 4, 3))
  dy = rng.normal(size=(2, 4, 4, 5))
  padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
  expected = np.zeros((3, 3, 3, 5))
  for i in range(3):
    for j in range(3):
      expected[i, j] = np.einsum('nhwc,nhwk->ck',
                                 padded[:, i:i + 4, j:j + 4], dy)
  got = weight_gradients._kernel_gradient(tf.constant(x), tf.constant(dy))
  np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('shape,kernel_size,strides,dtype,expected', [
    ((8, 4, 4, 512), 3, 1, 'bfloat16', True),
    ((8, 2, 8, 64), 3, 1, 'bfloat16', True),
    ((8, 8, 8, 256), 3, 1, 'bfloat16', False),   # oneDNN is as fast there
    ((8, 4, 4, 512), 3, 1, 'float32', False),    # and in float32
    ((8, 6, 6, 512), 3, 2, 'bfloat16', False),   # strided: oneDNN's
    ((8, 4, 4, 512), 1, 1, 'bfloat16', False),
    ((None, None, None, 512), 3, 1, 'bfloat16', False)])
def test_applies_to_small_bfloat16_3x3_convolutions(shape, kernel_size,
                                                    strides, dtype, expected):
  assert weight_gradients.applies(shape, kernel_size, strides,
                                  dtype) is expected


def test_resnet_layer_takes_it_and_trains_its_keras_kernel(rng, monkeypatch):
  """A bfloat16 FixedPaddingConv2D at 4x4 computes through conv3x3; its
  variables, outputs and gradients are those of the Keras Conv2D it wraps."""
  with precision.dtype_policy('bfloat16'):  # As the model builds layers.
    layer = resnet.FixedPaddingConv2D(8, 3, 1)
  inputs = tf.cast(rng.normal(size=(4, 4, 4, 6)), tf.bfloat16)
  calls = []
  conv3x3 = weight_gradients.conv3x3
  monkeypatch.setattr(weight_gradients, 'conv3x3',
                      lambda *args: calls.append(args) or conv3x3(*args))
  layer(inputs)
  assert len(calls) == 1
  assert [v.path for v in layer.trainable_variables] == [
      layer.conv.kernel.path]
  upstream = tf.constant(rng.normal(size=(4, 4, 4, 8)), tf.float32)

  def gradient(call):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.cast(call(inputs), tf.float32) * upstream)
    return tape.gradient(loss, layer.conv.kernel).numpy()

  ours = gradient(layer)
  theirs = gradient(layer.conv)  # Keras' own convolution and gradient.
  np.testing.assert_array_equal(layer(inputs).numpy(),
                                layer.conv(inputs).numpy())
  np.testing.assert_allclose(ours, theirs, atol=2e-2 * np.abs(theirs).max())
  assert not np.array_equal(ours, np.zeros_like(ours))
