"""What an evaluation leaves: result.json, TensorBoard scalars under eval/,
and the table printed, all built from the metrics the evaluators yield."""

import os

from simclr_tf.evaluation.evaluators import Metric
from simclr_tf.run_context import RunContext
from simclr_tf.storage import records

RESULT_FILE = 'result.json'
# Its columns: the model evaluated and the baselines, by what they yielded.
COLUMNS = (('learned', None), ('random', 'random_init'),
           ('pixels', 'raw_pixels'))
COLUMN_WIDTH = 15


def rows(metrics: list[Metric]) -> list[tuple[str, str, str | None]]:
  """The table's rows, (title, metric name, name of its spread or None):
  the supervised head, the probe on every label then on each label
  fraction, kNN and the k it used, and what evaluating took."""
  fractions = sorted((m.value, m.name.removesuffix('_label_fraction'))
                     for m in metrics if m.baseline is None and
                     m.name.endswith('_label_fraction'))
  few_label = [(f'linear probe top-1, {fraction * 100:g}% of labels',
                f'{prefix}_top_1_accuracy', f'{prefix}_top_1_accuracy_std')
               for fraction, prefix in fractions]
  return [('linear eval top-1 (supervised head)', 'label_top_1_accuracy',
           None),
          ('linear probe top-1 (frozen features)',
           'linear_probe_top_1_accuracy', None),
          *few_label,
          ('kNN top-1 (frozen features)', 'knn_top_1_accuracy', None),
          ('kNN k', 'knn_k', None),
          ('evaluation seconds', 'evaluation_seconds', None)]


def as_result(metrics: list[Metric]) -> dict:
  """{key: value}: what result.json holds."""
  return {metric.key: metric.value for metric in metrics}


def _cell(value, spread) -> str:
  if value is None:
    return ''
  if isinstance(value, int):
    return str(value)
  if spread is None:
    return f'{value:.4f}'
  return f'{value:.4f} ±{spread:.4f}'


def table(metrics: list[Metric]) -> str:
  """A short table; with baselines, learned next to random weights at
  standard initialisation and raw pixels, probed the same way. Few-label
  rows give the mean and standard deviation over their subsets."""
  values = {(m.baseline, m.name): m.value for m in metrics}
  result = as_result(metrics)
  columns = [(title, baseline) for title, baseline in COLUMNS
             if any(m.baseline == baseline for m in metrics)]
  lines = [f'Results at step {result["global_step"]} on '
           f'{result.get("num_eval_examples", "")} {result["eval_split"]} '
           'images:',
           f'{"":40s}' + ''.join(f' {title:>{COLUMN_WIDTH}s}'
                                 for title, _ in columns)]
  for title, name, spread_name in rows(metrics):
    if (None, name) not in values:
      continue
    cells = [_cell(values.get((baseline, name)),
                   values.get((baseline, spread_name)))
             for _, baseline in columns]
    lines.append(f'{title:40s}' + ''.join(f' {cell:>{COLUMN_WIDTH}s}'
                                          for cell in cells))
  return '\n'.join(lines)


def write_summary(context: RunContext, step: int, values: dict):
  """Eval scalars for TensorBoard (the chief writes them)."""
  records.MetricsWriter(os.path.join(context.model_dir, 'eval'),
                        context.chief).scalars(step, values)


def report(context: RunContext, metrics: list[Metric]) -> dict:
  """Writes result.json and the summaries (the chief), prints the table;
  returns result.json's content."""
  result = as_result(metrics)
  if context.chief:
    records.write_json(os.path.join(context.model_dir, RESULT_FILE), result)
    write_summary(context, result['global_step'], result)
  print(table(metrics), flush=True)
  return result
