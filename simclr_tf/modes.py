"""The modes of run.py: train, eval, train_then_eval, export, import."""

import os
import time

from absl import logging
import tensorflow as tf

from simclr_tf.storage import checkpoints
from simclr_tf.evaluation import evaluators
from simclr_tf.serving import export
from simclr_tf.network import original
from simclr_tf.storage import records
from simclr_tf.training import task as task_lib
from simclr_tf.training import train as train_lib
from simclr_tf.run_context import Run

RESULT_FILE = 'result.json'


def write_result(run: Run, result: dict):
  if not run.chief:
    return
  records.write_json(os.path.join(run.model_dir, RESULT_FILE), result)
  write_summary(run, result['global_step'], result)


def export_model(run: Run, model, global_step: int) -> str | None:
  """The run's SavedModel of `model` (the chief writes it); its path."""
  if not run.chief:
    return None
  config = run.config
  return export.export(model, config.augment, run.model_dir, global_step,
                       config.train.keep_hub_module_max,
                       config.data.max_image_pixels,
                       config.train.export_precision)


def run_train(run: Run, then_eval: bool) -> dict | None:
  config = run.config
  monitor = None
  every = config.eval.knn_every_n_checkpoints
  if every and config.eval.knn and run.source.has_labels:

    def knn_monitor(task, step):
      results = evaluators.feature_metrics(run, task.model, knn=True)
      logging.info('kNN monitor at step %d: %s', step, _rounded(results))
      write_summary(run, step, results)

    monitor = (every, knn_monitor)
  result = train_lib.train(config, run.strategy, run.source, run.chief,
                           every_nth_checkpoint=monitor)
  export_model(run, result.model, result.global_step)
  if then_eval:
    evaluation = evaluators.evaluate_model(run, result.model,
                                           result.global_step)
    write_result(run, evaluation)
    evaluators.print_result(evaluation)
    return evaluation
  if config.eval.knn and run.source.has_labels:
    results = evaluators.feature_metrics(run, result.model, knn=True)
    write_summary(run, result.global_step, results)
    logging.info('kNN monitor at the end of training: %s', _rounded(results))
  return None


def _rounded(results: dict) -> str:
  return ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                   for k, v in results.items())


def write_summary(run: Run, step: int, values: dict):
  records.MetricsWriter(os.path.join(run.model_dir, 'eval'),
                        run.chief).scalars(step, values)


def restored_model(run: Run, path: str):
  with run.strategy.scope():
    model = task_lib.build_model(run.config)
  status = tf.train.Checkpoint(model=model).read(path)
  status.expect_partial().assert_existing_objects_matched()  # No optimizer.
  return model, checkpoints.step_of(path)


def _evaluate_checkpoint(run: Run, path: str) -> dict:
  model, step = restored_model(run, path)
  result = evaluators.evaluate_model(run, model, step)
  write_result(run, result)
  evaluators.print_result(result)
  return result


def run_eval(run: Run, watch: bool = False, timeout: float = 0) -> dict:
  """Evaluates the latest checkpoint, or each new one while watching."""
  if watch:
    result = None
    for path in tf.train.checkpoints_iterator(run.model_dir,
                                              timeout=timeout or None):
      result = _evaluate_checkpoint(run, path)
    return result
  path = checkpoints.latest_in(run.model_dir)
  if path is None:
    raise checkpoints.CheckpointError(
        f'--model_dir={run.model_dir} holds no checkpoint to evaluate; train '
        'first (--mode=train) or point --model_dir at a training run.')
  return _evaluate_checkpoint(run, path)


def run_export(run: Run, checkpoint: str | None) -> str:
  path = (checkpoints.resolve(checkpoint) if checkpoint
          else checkpoints.latest_in(run.model_dir))
  if path is None:
    raise checkpoints.CheckpointError(
        f'--model_dir={run.model_dir} holds no checkpoint to export; give '
        '--checkpoint=PATH or train first.')
  model, step = restored_model(run, path)
  exported = export_model(run, model, step)
  print(f'Exported {path} to {exported}', flush=True)
  return exported


def run_import(run: Run, weights: original.OriginalWeights) -> dict:
  """Writes `weights` (of the original SimCLR code) into `run.model_dir` as
  a checkpoint of ours at the original's global step, and exports it."""
  start = time.perf_counter()
  with run.strategy.scope():
    model = task_lib.build_model(run.config)
  original.load(model, weights)
  step = weights.global_step
  # The step is where checkpoints of ours keep it (the optimizer's counter);
  # the original's optimizer state is not carried over.
  checkpoint = tf.train.Checkpoint(model=model, optimizer=tf.train.Checkpoint(
      _iterations=tf.Variable(step, dtype=tf.int64)))
  manager = checkpoints.manager(checkpoint, run.model_dir,
                                run.config.train.keep_checkpoint_max)
  path = manager.save(checkpoint_number=step)
  exported = export_model(run, model, step)
  return {'checkpoint': path, 'saved_model': exported, 'global_step': step,
          'seconds': time.perf_counter() - start}
