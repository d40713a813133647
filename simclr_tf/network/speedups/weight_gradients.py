"""3x3 convolutions whose weight gradient is nine matrix multiplications.

On CPUs, oneDNN's bfloat16 weight-gradient kernel (`brgconv_bwd_w`) is slow
when the output is small and the channels many: for ResNet-18's last block
group at 32 px (4x4 outputs, 512 channels, 256 images) it reaches ~200
GFLOP/s, where the forward convolution reaches ~900 and oneDNN's matmul of
the same FLOPs ~1,500; its strided 3x3 convolution into that group ~170.
There the weight gradient is computed as what it is: for each of the nine
kernel taps, the input shifted by the tap (for stride 2, read from the
input's space-to-depth rearrangement, since strided slices of bfloat16
tensors are slow) transposed times the output gradient. The forward pass
and the input gradient stay TensorFlow's own convolutions. Measured per
layer in docs/benchmarks.md ("Where the bfloat16 time goes"): 1.5-6x faster
weight gradients where the input has at least twice as many channels as the
output has pixels, slower elsewhere and in float32, which keep oneDNN's.
"""

import functools

import tensorflow as tf

from simclr_tf.devices import precision

# The matmul weight gradient where channels >= this x output pixels.
CHANNELS_PER_OUTPUT_PIXEL = 2


def output_size(size: int, strides: int) -> int:
  """Output height (width) of a 3x3 convolution: 'SAME' at stride 1, or
  'VALID' on an explicitly padded input at stride 2 (FixedPaddingConv2D)."""
  return size if strides == 1 else (size - 3) // 2 + 1


def applies(input_shape, kernel_size: int, strides: int, dtype) -> bool:
  """Whether a convolution takes the matmul weight gradient: 3x3, stride 1
  ('SAME') or 2 ('VALID' after explicit padding), bfloat16, input channels
  >= CHANNELS_PER_OUTPUT_PIXEL x output pixels, on a machine whose
  TensorFlow sees no GPU or TPU (their own kernels are fast there)."""
  if (kernel_size != 3 or strides not in (1, 2) or
      tf.as_dtype(dtype) != tf.bfloat16):
    return False
  height, width, channels = input_shape[1], input_shape[2], input_shape[3]
  if None in (height, width, channels):
    return False
  pixels = output_size(height, strides) * output_size(width, strides)
  if channels < CHANNELS_PER_OUTPUT_PIXEL * pixels:
    return False
  return not precision.sees_accelerator()


def _shifted_inputs(inputs, strides, out_height, out_width):
  """The nine [N, out_height, out_width, C] inputs that kernel tap (i, j)
  multiplies, in (i, j) order."""
  if strides == 1:
    padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return [padded[:, i:i + out_height, j:j + out_width, :]
            for i in range(3) for j in range(3)]
  # Tap (i, j) reads input pixel (2 h + i, 2 w + j): in the space-to-depth
  # rearrangement, pixel (h + i // 2, w + j // 2) of block (i % 2, j % 2).
  height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
  even = tf.pad(inputs, [[0, 0], [0, height % 2], [0, width % 2], [0, 0]])
  blocks = tf.nn.space_to_depth(even, 2)
  shifted = []
  for i in range(3):
    for j in range(3):
      first = (2 * (i % 2) + j % 2) * channels
      shifted.append(blocks[:, i // 2:i // 2 + out_height,
                            j // 2:j // 2 + out_width,
                            first:first + channels])
  return shifted


def kernel_gradient(inputs, output_gradient, strides):
  """[3, 3, C, K]: per kernel tap, the shifted input [N H W, C] transposed
  times the output gradient [N H W, K]; nine products rather than one of the
  concatenated patches, which is slower and copies the input nine times."""
  channels = inputs.shape[3]
  out_height, out_width = output_gradient.shape[1], output_gradient.shape[2]
  # Shifted only once the gradient has arrived: otherwise the executor may
  # shift every layer's input during the forward pass and keep the copies.
  with tf.control_dependencies([output_gradient]):
    shifted = _shifted_inputs(inputs, strides, out_height, out_width)
  flat_gradient = tf.reshape(output_gradient, [-1, output_gradient.shape[-1]])
  taps = [tf.matmul(tf.reshape(x, [-1, channels]), flat_gradient,
                    transpose_a=True) for x in shifted]
  return tf.reshape(tf.stack(taps), [3, 3, channels, -1])


@functools.cache
def conv3x3(strides: int):
  """A function (inputs, kernel) -> tf.nn.conv2d(inputs, kernel, strides,
  'SAME' at stride 1 or 'VALID' at stride 2) for a [3, 3, C, K] kernel,
  whose kernel gradient is kernel_gradient's."""
  padding = 'SAME' if strides == 1 else 'VALID'
  stride_list = [1, strides, strides, 1]

  @tf.custom_gradient
  def convolve(inputs, kernel):
    outputs = tf.nn.conv2d(inputs, kernel, strides, padding)

    def gradient(output_gradient):
      input_gradient = tf.raw_ops.Conv2DBackpropInput(
          input_sizes=tf.shape(inputs), filter=kernel,
          out_backprop=output_gradient, strides=stride_list,
          padding=padding)
      return input_gradient, kernel_gradient(inputs, output_gradient,
                                             strides)

    return outputs, gradient

  return convolve
