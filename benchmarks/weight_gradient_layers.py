"""Each 3x3 convolution's weight gradient two ways, timed alone: oneDNN's
(TensorFlow's Conv2DBackpropFilter) and the nine matmuls of
simclr_tf/network/speedups/weight_gradients.py, with the layers where
`weight_gradients.applies` takes the matmuls.

  python -m benchmarks.weight_gradient_layers \\
      --output=benchmarks/results/weight_gradient_layers.json

The layers are those of ResNet-18 with the CIFAR stem at 32 px, batch 128
(two views: 256 images), and of the quickstart's ResNet-18 x0.25 at 28 px,
batch 512 (1,024 images): per block group, its stride-1 3x3 convolution and
the strided one into it. The largest difference between the two ways,
relative to the largest value, is recorded beside the times. Whether the
matmuls pay off depends on the CPU's kernels (oneDNN's AMX, AVX512_BF16 and
AVX-512 code paths differ); docs/benchmarks.md has the figures per CPU
kind.
"""

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks import throughput
from benchmarks import timing
from simclr_tf.network.speedups import weight_gradients

flags.DEFINE_enum('precision', 'bfloat16', ['bfloat16', 'float32'],
                  'Compute precision.')
flags.DEFINE_integer('repeats', 15, 'Timed calls per way and layer.')
FLAGS = flags.FLAGS

MODELS = {  # name: (image size, width multiplier, images per step)
    'resnet18_32px_b128': (32, 1.0, 256),
    'resnet18x0.25_28px_b512': (28, 0.25, 1024),
}


def layers(image_size: int, width: float, images: int) -> list[dict]:
  """The distinct 3x3 convolutions of a CIFAR-stem ResNet-18: per block
  group, the strided one into it (groups 2-4) and its stride-1 one."""
  found, size, previous = [], image_size, None
  for group in range(4):
    channels = max(1, int(round(64 * 2 ** group * width)))
    if group:
      # Fixed padding, then a 'VALID' stride-2 convolution.
      found.append({'images': images, 'input_size': size + 2,
                    'in_channels': previous, 'out_channels': channels,
                    'strides': 2})
      size = weight_gradients.output_size(size + 2, 2)
    found.append({'images': images, 'input_size': size,
                  'in_channels': channels, 'out_channels': channels,
                  'strides': 1})
    previous = channels
  return found


def _median_seconds(function, *args) -> float:
  return float(np.median(timing.call_seconds(function, *args,
                                             repeats=FLAGS.repeats)))


def measure(layer: dict, dtype) -> dict:
  rng = np.random.default_rng(0)
  strides, size = layer['strides'], layer['input_size']
  padding = 'SAME' if strides == 1 else 'VALID'
  out = weight_gradients.output_size(size, strides)
  x = tf.constant(rng.standard_normal(
      [layer['images'], size, size, layer['in_channels']]), dtype)
  dy = tf.constant(rng.standard_normal(
      [layer['images'], out, out, layer['out_channels']]), dtype)
  onednn = tf.function(lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(
      input=x, filter_sizes=[3, 3, layer['in_channels'],
                             layer['out_channels']],
      out_backprop=dy, strides=[1, strides, strides, 1], padding=padding))
  matmuls = tf.function(
      lambda x, dy: weight_gradients.kernel_gradient(x, dy, strides))
  reference = onednn(x, dy).numpy().astype(np.float64)
  difference = np.abs(matmuls(x, dy).numpy().astype(np.float64) - reference)
  work = (2.0 * layer['images'] * out * out * 9 * layer['in_channels'] *
          layer['out_channels'])
  seconds = {'onednn': _median_seconds(onednn, x, dy),
             'matmuls': _median_seconds(matmuls, x, dy)}
  return {**layer, 'output_size': out,
          'matmuls_apply': weight_gradients.applies(x.shape, 3, strides,
                                                    dtype),
          'largest_difference_over_largest_value':
              float(difference.max() / np.abs(reference).max()),
          **{f'{way}_ms': s * 1e3 for way, s in seconds.items()},
          **{f'{way}_gflop_per_second': work / s / 1e9
             for way, s in seconds.items()},
          'matmuls_speedup': seconds['onednn'] / seconds['matmuls']}


def main(_):
  dtype = tf.as_dtype(FLAGS.precision)
  results = []
  for model, (size, width, images) in MODELS.items():
    for layer in layers(size, width, images):
      row = {'model': model, 'precision': FLAGS.precision,
             **measure(layer, dtype)}
      results.append(row)
      print(f'{model} {row["output_size"]}x{row["output_size"]}, '
            f'{row["in_channels"]} -> {row["out_channels"]} / '
            f'{row["strides"]}: oneDNN {row["onednn_ms"]:.1f} ms, matmuls '
            f'{row["matmuls_ms"]:.1f} ms ({row["matmuls_speedup"]:.2f}x)'
            f'{"  <- taken" if row["matmuls_apply"] else ""}', flush=True)
  throughput.write_record(FLAGS.output, results)


if __name__ == '__main__':
  app.run(main)
