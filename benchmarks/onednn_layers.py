"""Time per oneDNN primitive (layer, pass, implementation) from its log.

  ONEDNN_VERBOSE=1 python -m benchmarks.throughput --child=resnet18_32px_b128 \\
      --mixed_precision=bfloat16 --inter_op_threads=1 > /tmp/onednn.log
  python -m benchmarks.onednn_layers /tmp/onednn.log --steps=17

With ONEDNN_VERBOSE=1, oneDNN prints a line per primitive it executes: its
kind (convolution, batch_normalization, matmul, reorder), the pass
(forward_training, backward_data, backward_weights), the implementation it
chose (e.g. brgconv_bwd_w:avx10_1_512_amx), the shapes and the time in ms.
This sums them per (kind, pass, implementation, shape), slowest first;
`--steps` (the training steps the log covers: a throughput child runs
warmup_calls + timed_steps + 1 in its loop and warmup_calls + timed_steps
on a cached batch) turns totals into ms per step.
"""

import collections

from absl import app
from absl import flags

flags.DEFINE_integer('steps', 1, 'Training steps the log covers.')
flags.DEFINE_integer('top', 40, 'Rows to print.')
FLAGS = flags.FLAGS


def primitive_times(lines) -> dict:
  """{(kind, pass, implementation, shape): [executions, total ms]}."""
  totals = collections.defaultdict(lambda: [0, 0.0])
  for line in lines:
    fields = line.strip().split(',')
    if not line.startswith('onednn_verbose') or 'exec' not in fields[:4]:
      continue
    # onednn_verbose,v1,primitive,exec,cpu,KIND,IMPL,PASS,...,SHAPE,TIME
    kind, implementation, direction = fields[5], fields[6], fields[7]
    key = (kind, direction, implementation, fields[-2])
    totals[key][0] += 1
    totals[key][1] += float(fields[-1])
  return dict(totals)


def main(argv):
  with open(argv[1]) as f:
    totals = primitive_times(f)
  overall = sum(ms for _, ms in totals.values())
  print(f'oneDNN total: {overall / FLAGS.steps:.1f} ms per step')
  for (kind, direction, implementation, shape), (count, ms) in sorted(
      totals.items(), key=lambda item: -item[1][1])[:FLAGS.top]:
    print(f'{ms / FLAGS.steps:8.1f} ms  x{count / FLAGS.steps:<5g} {kind} '
          f'{direction} {implementation} {shape}')


if __name__ == '__main__':
  app.run(main)
