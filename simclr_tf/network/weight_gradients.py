"""A 3x3 convolution whose weight gradient is one matrix multiplication.

On CPUs, oneDNN's bfloat16 weight-gradient kernel (`brgconv_bwd_w`) is slow
when the output is small: for ResNet-18's last block group (4x4 outputs,
512 channels, 256 images) it reaches ~200 GFLOP/s where the forward
convolution reaches ~860 and a matrix multiplication of the same FLOPs
~1,500. There the weight gradient is computed as what it is, the input's
shifted copies transposed times the output gradient, which oneDNN's matmul
runs at its full speed. The forward pass and the input gradient stay
TensorFlow's own convolutions. Measured per layer in docs/benchmarks.md
("Where the bfloat16 time goes"); in float32 and at 8x8 and larger outputs
oneDNN's kernel is as fast or faster, so they keep it.
"""

import tensorflow as tf

# Largest output area (height x width) whose weight gradient is a matmul.
MAX_OUTPUT_AREA = 16


def applies(input_shape, kernel_size: int, strides: int, dtype) -> bool:
  """Whether a convolution takes the matmul weight gradient: 3x3, stride 1,
  'SAME', bfloat16, an output of at most MAX_OUTPUT_AREA pixels, on a
  machine whose TensorFlow sees no GPU or TPU (their own kernels are fast
  there)."""
  if kernel_size != 3 or strides != 1 or tf.as_dtype(dtype) != tf.bfloat16:
    return False
  height, width = input_shape[1], input_shape[2]
  if height is None or width is None or height * width > MAX_OUTPUT_AREA:
    return False
  return not (tf.config.list_logical_devices('GPU') or
              tf.config.list_logical_devices('TPU'))


def _kernel_gradient(inputs, output_gradient):
  """[3, 3, C, K]: for each kernel tap (i, j), the input shifted by (i, j)
  (zero-padded) transposed times the output gradient, over every pixel of
  every image. Nine [C, N H W] x [N H W, K] products: faster than one product
  of the concatenated patches, and without their 9x copy of the input."""
  height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
  # Shifted only once the gradient has arrived: otherwise the executor may
  # shift every layer's input during the forward pass and keep the copies.
  with tf.control_dependencies([output_gradient]):
    padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
  flat_gradient = tf.reshape(output_gradient, [-1, output_gradient.shape[-1]])
  taps = [tf.matmul(tf.reshape(padded[:, i:i + height, j:j + width, :],
                               [-1, channels]),
                    flat_gradient, transpose_a=True)
          for i in range(3) for j in range(3)]
  return tf.reshape(tf.stack(taps), [3, 3, channels, -1])


@tf.custom_gradient
def conv3x3(inputs, kernel):
  """tf.nn.conv2d(inputs, kernel, 1, 'SAME') for a [3, 3, C, K] kernel;
  its kernel gradient is _kernel_gradient's."""
  outputs = tf.nn.conv2d(inputs, kernel, 1, 'SAME')

  def gradient(output_gradient):
    input_gradient = tf.raw_ops.Conv2DBackpropInput(
        input_sizes=tf.shape(inputs), filter=kernel,
        out_backprop=output_gradient, strides=[1, 1, 1, 1], padding='SAME')
    return input_gradient, _kernel_gradient(inputs, output_gradient)

  return outputs, gradient
