"""What this CPU computes at best: oneDNN's matmul and 3x3 convolution
GFLOP/s in bfloat16 and float32, the ceiling docs/benchmarks.md compares
each layer of a training step with.

  python -m benchmarks.cpu_ceiling --output=benchmarks/results/cpu_ceiling.json

For each precision, square matmuls and stride-1 3x3 convolutions (batch
256, NHWC) of a few sizes, each timed alone after warm-up calls; the
fastest of each kind is the ceiling. Run it alone: on 2 cores anything
beside it lowers every figure.
"""

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks import throughput
from benchmarks import timing

flags.DEFINE_list('precisions', ['bfloat16', 'float32'], 'Precisions.')
flags.DEFINE_integer('repeats', 10, 'Timed calls per shape (the fastest '
                     'counts).')
FLAGS = flags.FLAGS

MATMUL_SIZES = (1024, 2048, 4096)
# (output size, channels) of 3x3 convolutions, ResNet-18's at 32 px.
CONVOLUTIONS = ((32, 64), (16, 128), (8, 256), (4, 512))
CONVOLUTION_BATCH = 256


def fastest_seconds(function, *args) -> float:
  return min(timing.call_seconds(function, *args, repeats=FLAGS.repeats))


def measure(precision: str) -> dict:
  dtype = tf.as_dtype(precision)
  rng = np.random.default_rng(0)
  rows = []
  matmul = tf.function(tf.matmul)
  for size in MATMUL_SIZES:
    a = tf.constant(rng.standard_normal([size, size]), dtype)
    seconds = fastest_seconds(matmul, a, a)
    rows.append({'kind': 'matmul', 'shape': f'{size}x{size}x{size}',
                 'gflop_per_second': 2 * size ** 3 / seconds / 1e9})
  convolve = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, 'SAME'))
  for size, channels in CONVOLUTIONS:
    x = tf.constant(rng.standard_normal(
        [CONVOLUTION_BATCH, size, size, channels]), dtype)
    kernel = tf.constant(rng.standard_normal([3, 3, channels, channels]),
                         dtype)
    seconds = fastest_seconds(convolve, x, kernel)
    work = 2 * CONVOLUTION_BATCH * size * size * 9 * channels * channels
    rows.append({'kind': 'convolution',
                 'shape': f'{size}x{size}, {channels} -> {channels}, 3x3',
                 'gflop_per_second': work / seconds / 1e9})
  ceiling = {kind: max(r['gflop_per_second'] for r in rows
                       if r['kind'] == kind)
             for kind in ('matmul', 'convolution')}
  return {'precision': precision, 'ceiling_gflop_per_second': ceiling,
          'shapes': rows}


def main(_):
  results = []
  for precision in FLAGS.precisions:
    results.append(measure(precision))
    print(f'{precision}: matmul '
          f'{results[-1]["ceiling_gflop_per_second"]["matmul"]:.0f}, '
          f'3x3 convolution '
          f'{results[-1]["ceiling_gflop_per_second"]["convolution"]:.0f} '
          f'GFLOP/s at best', flush=True)
  throughput.write_record(FLAGS.output, results)


if __name__ == '__main__':
  app.run(main)
