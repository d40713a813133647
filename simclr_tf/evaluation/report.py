"""What an evaluation leaves: result.json, TensorBoard scalars under eval/,
and the table printed, all built from the metrics the evaluators yield."""

import os

from simclr_tf.evaluation.evaluators import Metric
from simclr_tf.run_context import RunContext
from simclr_tf.storage import records

RESULT_FILE = 'result.json'
# The table's rows: metric names, titled.
ROWS = (('linear eval top-1 (supervised head)', 'label_top_1_accuracy'),
        ('linear probe top-1 (frozen features)', 'linear_probe_top_1_accuracy'),
        ('kNN top-1 (frozen features)', 'knn_top_1_accuracy'))
# Its columns: the model evaluated and the baselines, by what they yielded.
COLUMNS = (('learned', None), ('random', 'random_init'),
           ('pixels', 'raw_pixels'))


def as_result(metrics: list[Metric]) -> dict:
  """{key: value}: what result.json holds."""
  return {metric.key: metric.value for metric in metrics}


def table(metrics: list[Metric]) -> str:
  """A short table; with baselines, learned next to random weights at
  standard initialisation and raw pixels, probed the same way."""
  values = {(m.baseline, m.name): m.value for m in metrics}
  result = as_result(metrics)
  columns = [(title, baseline) for title, baseline in COLUMNS
             if any(m.baseline == baseline for m in metrics)]
  lines = [f'Results at step {result["global_step"]} on '
           f'{result.get("num_eval_examples", "")} {result["eval_split"]} '
           'images:',
           f'{"":40s}' + ''.join(f' {title:>8s}' for title, _ in columns)]
  for title, name in ROWS:
    if (None, name) not in values:
      continue
    row = [values.get((baseline, name)) for _, baseline in columns]
    lines.append(f'{title:40s}' + ''.join(
        f' {value:8.4f}' if value is not None else f' {"":8s}'
        for value in row))
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
