"""Time per oneDNN primitive (layer, pass, implementation) from its log.

  ONEDNN_VERBOSE=1 python -m benchmarks.throughput --child=resnet18_32px_b128 \\
      --mixed_precision=bfloat16 --inter_op_threads=1 > /tmp/onednn.log
  python -m benchmarks.onednn_layers /tmp/onednn.log --steps=17

With ONEDNN_VERBOSE=1, oneDNN prints a line per primitive it executes: its
kind (convolution, batch_normalization, matmul, reorder), the pass
(forward_training, backward_data, backward_weights), the implementation it
chose (e.g. brgconv_bwd_w:avx10_1_512_amx), the shapes and the time in ms.
This sums them per (kind, pass, implementation, shape), slowest first,
with the GFLOP/s each convolution and matmul reached (its multiply-adds
counted from the shape, two FLOPs each; compare with the CPU's ceiling,
benchmarks/cpu_ceiling.py); `--steps` (the training steps the log covers:
a throughput child runs warmup_calls + timed_steps + 1 in its loop and
warmup_calls + timed_steps on a cached batch) turns totals into ms per
step.
"""

import collections
import re

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


_CONVOLUTION = re.compile(
    r'^(?:g(?P<groups>\d+))?mb(?P<batch>\d+)_ic(?P<ic>\d+)oc(?P<oc>\d+)'
    r'(?:_id\d+od(?P<od>\d+)kd(?P<kd>\d+)\D.*?)?'
    r'_ih\d+oh(?P<oh>\d+)kh(?P<kh>\d+)\D.*?'
    r'_iw\d+ow(?P<ow>\d+)kw(?P<kw>\d+)\D')
_MATMUL = re.compile(r'^(?:(?P<batch>\d+)x)?(?P<m>\d+)x(?P<k>\d+):'
                     r'(?:\d+x)?\d+x(?P<n>\d+)$')


def flops(kind: str, shape: str) -> float | None:
  """FLOPs of one execution of a convolution (any pass: the same
  multiply-adds, output pixels x kernel x channels) or a matmul, from
  oneDNN's shape string; None for other primitives."""
  if kind == 'convolution':
    match = _CONVOLUTION.match(shape)
    if not match:
      return None
    size = {k: int(v) if v else 1 for k, v in match.groupdict().items()}
    return (2.0 * size['batch'] * size['od'] * size['oh'] * size['ow'] *
            size['kd'] * size['kh'] * size['kw'] * size['ic'] * size['oc'] /
            size['groups'])
  if kind == 'matmul':
    match = _MATMUL.match(shape)
    if not match:
      return None
    size = {k: int(v) if v else 1 for k, v in match.groupdict().items()}
    return 2.0 * size['batch'] * size['m'] * size['k'] * size['n']
  return None


def main(argv):
  with open(argv[1]) as f:
    totals = primitive_times(f)
  overall = sum(ms for _, ms in totals.values())
  print(f'oneDNN total: {overall / FLAGS.steps:.1f} ms per step')
  for (kind, direction, implementation, shape), (count, ms) in sorted(
      totals.items(), key=lambda item: -item[1][1])[:FLAGS.top]:
    work = flops(kind, shape)
    rate = f'{work * count / ms / 1e6:6.0f} GFLOP/s' if work else ' ' * 14
    print(f'{ms / FLAGS.steps:8.1f} ms  x{count / FLAGS.steps:<5g} {rate}  '
          f'{kind} {direction} {implementation} {shape}')


if __name__ == '__main__':
  app.run(main)
