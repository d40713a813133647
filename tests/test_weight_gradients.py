"""3x3 convolutions whose weight gradient is nine matmuls, against
TensorFlow's own convolution gradient and a numpy sum."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.devices import precision
from simclr_tf.network import resnet
from simclr_tf.network.speedups import weight_gradients


def _gradients(convolve, inputs, kernel, upstream):
  with tf.GradientTape() as tape:
    tape.watch([inputs, kernel])
    loss = tf.reduce_sum(tf.cast(convolve(inputs, kernel), tf.float32) *
                         upstream)
  return [g.numpy().astype(np.float64) for g in
          tape.gradient(loss, [inputs, kernel])]


@pytest.mark.parametrize('dtype,tolerance', [('float32', 1e-5),
                                             ('bfloat16', 2e-2)])
@pytest.mark.parametrize('strides,size', [(1, 4), (1, 3), (2, 10), (2, 9)])
def test_gradients_equal_tensorflows_own(dtype, tolerance, strides, size,
                                         rng, cpu_kernels):
  padding = 'SAME' if strides == 1 else 'VALID'
  out = weight_gradients.output_size(size, strides)
  inputs = tf.cast(rng.normal(size=(5, size, size, 6)), dtype)
  kernel = tf.cast(rng.normal(size=(3, 3, 6, 7)) * 0.3, dtype)
  upstream = tf.constant(rng.normal(size=(5, out, out, 7)), tf.float32)
  convolve = weight_gradients.conv3x3(strides)
  reference = tf.nn.conv2d(inputs, kernel, strides, padding)
  assert reference.shape[1] == out
  np.testing.assert_array_equal(convolve(inputs, kernel).numpy(),
                                reference.numpy())
  ours = _gradients(convolve, inputs, kernel, upstream)
  theirs = _gradients(lambda x, k: tf.nn.conv2d(x, k, strides, padding),
                      inputs, kernel, upstream)
  for mine, expected in zip(ours, theirs):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(mine, expected, atol=tolerance * scale)


@pytest.mark.parametrize('strides,size', [(1, 4), (2, 9), (2, 8)])
def test_kernel_gradient_matches_a_numpy_sum_over_taps(strides, size, rng,
                                                       cpu_kernels):
  """dL/dk[i, j, c, k] = sum over n, h, w of x[n, s h + i, s w + j, c] *
  dy[n, h, w, k] (x zero-padded by one at stride 1), written out in numpy."""
  out = weight_gradients.output_size(size, strides)
  x = rng.normal(size=(2, size, size, 3))
  dy = rng.normal(size=(2, out, out, 5))
  padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)]) if strides == 1 else x
  expected = np.zeros((3, 3, 3, 5))
  for i in range(3):
    for j in range(3):
      taps = padded[:, i:i + strides * out:strides,
                    j:j + strides * out:strides]
      expected[i, j] = np.einsum('nhwc,nhwk->ck', taps, dy)
  got = weight_gradients.kernel_gradient(tf.constant(x), tf.constant(dy),
                                         strides)
  np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('shape,kernel_size,strides,dtype,expected', [
    ((8, 4, 4, 512), 3, 1, 'bfloat16', True),
    ((8, 4, 4, 32), 3, 1, 'bfloat16', True),     # 32 channels, 16 pixels
    ((8, 4, 4, 31), 3, 1, 'bfloat16', False),
    ((8, 8, 8, 256), 3, 1, 'bfloat16', True),
    ((8, 16, 16, 128), 3, 1, 'bfloat16', False),  # oneDNN is faster there
    ((8, 4, 4, 512), 3, 1, 'float32', False),    # and in float32
    ((8, 10, 10, 256), 3, 2, 'bfloat16', True),  # 4x4 outputs
    ((8, 34, 34, 64), 3, 2, 'bfloat16', False),  # 16x16 outputs
    ((8, 4, 4, 512), 1, 1, 'bfloat16', False),
    ((8, 8, 8, 512), 1, 2, 'bfloat16', False),
    ((None, None, None, 512), 3, 1, 'bfloat16', False)])
def test_applies_where_it_was_measured_faster(shape, kernel_size, strides,
                                              dtype, expected, cpu_kernels):
  assert weight_gradients.applies(shape, kernel_size, strides,
                                  dtype) is expected


@pytest.mark.parametrize('strides,size', [(1, 4), (2, 8)])
def test_resnet_layer_takes_it_and_trains_its_keras_kernel(
    strides, size, rng, monkeypatch, cpu_kernels):
  """A bfloat16 FixedPaddingConv2D with a small output computes through
  conv3x3; its variables, outputs and gradients are those of the Keras
  Conv2D it wraps."""
  with precision.dtype_policy('bfloat16'):  # As the model builds layers.
    layer = resnet.FixedPaddingConv2D(8, 3, strides)
  inputs = tf.cast(rng.normal(size=(4, size, size, 64)), tf.bfloat16)
  calls = []
  conv3x3 = weight_gradients.conv3x3
  monkeypatch.setattr(weight_gradients, 'conv3x3',
                      lambda s: calls.append(s) or conv3x3(s))
  outputs = layer(inputs)
  assert calls == [strides]
  assert [v.path for v in layer.trainable_variables] == [
      layer.conv.kernel.path]
  padded = layer.pad(inputs) if layer.pad is not None else inputs
  np.testing.assert_array_equal(outputs.numpy(), layer.conv(padded).numpy())
  upstream = tf.constant(rng.normal(size=outputs.shape), tf.float32)

  def gradient(call):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.cast(call(inputs), tf.float32) * upstream)
    return tape.gradient(loss, layer.conv.kernel).numpy()

  ours = gradient(layer)
  theirs = gradient(lambda x: layer.conv(  # Keras' own convolution.
      layer.pad(x) if layer.pad is not None else x))
  np.testing.assert_allclose(ours, theirs, atol=2e-2 * np.abs(theirs).max())
  assert np.abs(ours).max() > 0


def test_gpus_and_tpus_keep_their_own_kernels(monkeypatch, cpu_kernels):
  assert weight_gradients.applies((8, 4, 4, 512), 3, 1, 'bfloat16')
  monkeypatch.setattr(precision, 'sees_accelerator', lambda: True)
  assert not weight_gradients.applies((8, 4, 4, 512), 3, 1, 'bfloat16')
