"""simclr_tf against PyTorch + lightly, and against another simclr_tf
checkout, in alternating processes on one machine.

  bash benchmarks/run.sh side_by_side --baseline_tree=/tmp/simclr_tf_before

Each round runs every system once, one process at a time (so each peak
memory is its own and nothing else competes for the cores), in the same
order; two rounds by default, so a slow minute of a shared machine shows as
a spread between rounds rather than as a difference between systems.

* simclr_tf: `benchmarks/throughput.py` for one configuration (the training
  loop run.py runs, `train`, and the step alone on a cached batch, `model`);
  ResNet-18 at 32 px batch 128 with the supervised head on its evaluation view
  (the default) and on the two views (`--lineareval_view=pretrain`: the
  work the PyTorch reference does), and the quickstart's ResNet-18 x0.25 at
  28 px batch 512.
* `--baseline_tree`: the same, from another checkout (e.g. a previous
  commit), with its own code and this environment.
* PyTorch + lightly (`benchmarks/torch_simclr.py`, in the environment of
  `--torch_python`): eager (bfloat16 only), and `torch.compile` with its
  default layout and with channels-last tensors; the ratio is to the faster.

Writes every run and, per system, the mean images/s and peak memory over
the rounds with the ratios to torch.compile and to the baseline tree.
"""

import json
import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags

from benchmarks import throughput

flags.DEFINE_integer('rounds', 2, 'Rounds over every system.')
flags.DEFINE_string('torch_python', '.venv-torch/bin/python',
                    'Python of an environment with '
                    'benchmarks/requirements-torch.txt; empty: no PyTorch.')
flags.DEFINE_string('baseline_tree', None, 'Another simclr_tf checkout to '
                    'measure beside this one (its benchmarks/throughput.py).')
flags.DEFINE_list('precisions', ['bfloat16', 'float32'], 'Compute '
                  'precisions to measure.')
FLAGS = flags.FLAGS  # --output: benchmarks/throughput.py's.

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_R18 = 'resnet18_32px_b128'
_QUICKSTART = 'resnet18x0.25_28px_b512'


def systems(precision: str) -> list[tuple[str, str, list[str], str]]:
  """(label, working directory, command, what its images/s are) per run."""
  runs = []
  trees = [('simclr_tf', _HERE)]
  if FLAGS.baseline_tree:
    trees.append(('simclr_tf baseline', FLAGS.baseline_tree))
  for name, tree in trees:
    tf_child = [sys.executable, '-m', 'benchmarks.throughput',
                f'--mixed_precision={precision}']
    runs.append((f'{name} {_R18}', tree, tf_child + [f'--child={_R18}'],
                 'simclr_tf'))
    if tree == _HERE:  # A baseline may predate --lineareval_view here.
      runs.append((f'{name} {_R18} supervised head on the views', tree,
                   tf_child + [f'--child={_R18}',
                               '--lineareval_view=pretrain'], 'simclr_tf'))
    runs.append((f'{name} {_QUICKSTART}', tree,
                 tf_child + [f'--child={_QUICKSTART}'], 'simclr_tf'))
  if FLAGS.torch_python:
    torch_child = [FLAGS.torch_python,
                   os.path.join(_HERE, 'benchmarks', 'torch_simclr.py'),
                   f'--precision={precision}']
    if precision == 'bfloat16':
      runs.append(('lightly + PyTorch, eager', _HERE, torch_child, 'torch'))
    runs.append(('lightly + PyTorch, torch.compile, channels-last', _HERE,
                 torch_child + ['--compile'], 'torch'))
    runs.append(('lightly + PyTorch, torch.compile', _HERE,
                 torch_child + ['--compile', '--memory_format=contiguous'],
                 'torch'))
  return runs


def run_one(directory: str, command: list[str]) -> dict:
  out = subprocess.run(command, cwd=directory, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.split('RESULT ', 1)[1])


def images_per_second(result: dict, kind: str) -> dict:
  if kind == 'torch':
    return {'model': result['images_per_second']}
  return {'train': result['train_images_per_second'],
          'model': result['model_images_per_second']}


def summarize(runs: list[dict]) -> list[dict]:
  """Per (precision, label): mean images/s and peak memory over rounds;
  for ResNet-18 at 32 px, the model step's ratio to the fastest
  torch.compile variant; for this tree's runs, the ratios of both to the
  baseline tree's same configuration."""
  groups = {}
  for run in runs:
    groups.setdefault((run['precision'], run['label']), []).append(run)
  rows = []
  for (precision, label), group in groups.items():
    row = {'precision': precision, 'label': label, 'rounds': len(group),
           'peak_memory_gb': statistics.mean(r['result']['peak_memory_gb']
                                             for r in group)}
    for key in group[0]['images_per_second']:
      values = [r['images_per_second'][key] for r in group]
      row[f'{key}_images_per_second'] = statistics.mean(values)
      row[f'{key}_images_per_second_range'] = [min(values), max(values)]
    rows.append(row)
  by_label = {(r['precision'], r['label']): r for r in rows}
  for row in rows:
    # PyTorch's fastest torch.compile variant of the same precision.
    compiled = [r for r in rows if r['precision'] == row['precision'] and
                'torch.compile' in r['label']]
    if compiled and (_R18 in row['label'] or 'PyTorch' in row['label']):
      fastest = max(r['model_images_per_second'] for r in compiled)
      row['model_vs_fastest_torch_compile'] = (
          row['model_images_per_second'] / fastest)
    if row['label'].startswith('simclr_tf '):
      baseline = by_label.get((row['precision'], row['label'].replace(
          'simclr_tf ', 'simclr_tf baseline ', 1)))
      if baseline:
        for key in ('train', 'model'):
          row[f'{key}_vs_baseline'] = (
              row[f'{key}_images_per_second'] /
              baseline[f'{key}_images_per_second'])
  return rows


def main(_):
  runs = []
  for round_index in range(FLAGS.rounds):
    for precision in FLAGS.precisions:
      for label, directory, command, kind in systems(precision):
        result = run_one(directory, command)
        runs.append({'round': round_index, 'precision': precision,
                     'label': label, 'command': ' '.join(command[1:]),
                     'images_per_second': images_per_second(result, kind),
                     'result': result})
        print(json.dumps({k: runs[-1][k] for k in
                          ('round', 'precision', 'label',
                           'images_per_second')}), flush=True)
  summary = summarize(runs)
  for row in summary:
    print(json.dumps(row), flush=True)
  throughput.write_record(FLAGS.output, {'summary': summary, 'runs': runs})


if __name__ == '__main__':
  app.run(main)
