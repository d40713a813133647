"""What each `--mode` of run.py does (docs/command_line.md); `execute` dispatches.

train, train_then_eval, eval and export work on the model of a model_dir
(or --checkpoint); import makes one from a checkpoint of the original SimCLR
code; preview and embed read images. Each mode sets up (devices, dataset,
configuration from settings/resolver.py, the run lock, flags.json), then
calls the functions below it that do the work on a `RunContext`.
"""

import contextlib
import dataclasses
import os
import re
import time

from absl import logging
import keras
import tensorflow as tf

from simclr_tf.config import RunConfig
from simclr_tf.devices import distribute
from simclr_tf.devices import precision
from simclr_tf.evaluation import evaluators
from simclr_tf.evaluation import report
from simclr_tf.inputs import catalog
from simclr_tf.inputs import sources
from simclr_tf.inputs import subsets
from simclr_tf.inputs.preview import preview_grid, write_png
from simclr_tf.network import original
from simclr_tf.network import original_variables
from simclr_tf.network.model import create_model
from simclr_tf.run_context import RunContext
from simclr_tf.serving import formats
from simclr_tf.serving.embed import EmbedError, EmbedOutputs, embed_folder
from simclr_tf.settings import checks
from simclr_tf.settings import resolver
from simclr_tf.settings.command import Command
from simclr_tf.storage import checkpoints
from simclr_tf.storage import lock
from simclr_tf.storage import records
from simclr_tf.training.teacher import TeacherSpec
from simclr_tf.training.train import EveryNthCheckpoint, train

# What the modes raise when the input cannot work: one line for the user
# (run.py exits with code 2).
USER_ERRORS = (checks.UsageError, sources.DatasetError,
               checkpoints.CheckpointError, lock.LockError,
               EmbedError, FloatingPointError)


class ExportFailed(Exception):
  """An export that failed its check (formats.ExportError), raised once
  everything else the mode does is done: a run that trained keeps its
  checkpoint and is still evaluated. run.py exits with its own code."""
  exit_code = 3


def execute(command: Command):
  """Runs `command.mode`; invalid settings fail first (checks.UsageError)."""
  command.check()
  resolver.check_given(command)
  {'train': model_mode, 'train_then_eval': model_mode, 'eval': model_mode,
   'export': model_mode, 'preview': preview, 'embed': embed,
   'import': import_original}[command.mode](command)


# --- Setting up ------------------------------------------------------------


def make_strategy(command: Command) -> tf.distribute.Strategy:
  if command.deterministic:
    tf.config.experimental.enable_op_determinism()
  if command.cpu_replicas > 1:
    distribute.split_cpu(command.cpu_replicas)
  return distribute.make_strategy(command.cpu_replicas, command.use_tpu,
                                  command.tpu_name)


def write_flags(config: RunConfig, command: Command):
  """flags.json: every flag of this run and the configuration it became."""
  records.write_json(
      os.path.join(config.train.model_dir, records.FLAGS_FILE),
      {'flags': dict(command.flag_values),
       'config': dataclasses.asdict(config)}, default=str)


# --- The modes -------------------------------------------------------------


def model_mode(command: Command):
  """train, train_then_eval, eval, export."""
  mode = command.mode
  strategy = make_strategy(command)
  resolved = resolver.resolve_command(
      command, open_source=catalog.make_source, strategy=strategy)
  config, source = resolved.config, resolved.source
  logging.info('Computing in %s%s on %d %s replica(s).',
               config.model.precision,
               ' with XLA' if config.train.jit_compile else '',
               strategy.num_replicas_in_sync, precision.device_type(strategy))
  if mode in ('eval', 'train_then_eval'):
    sources.require_labels(source, 'evaluation')
  trains = mode in resolver.TRAINING_MODES
  if trains and config.train.checkpoint:
    checkpoints.locate(config.train.checkpoint)  # Fails now if missing.
  context = RunContext(config, strategy, source)
  if context.chief:
    checks.check_writable(config.train.model_dir)
  if trains:
    checks.check_dataset_fits_a_batch(
        config, subsets.training_split(config, source).num_examples(source))
  # One training process per model_dir (the chief's); evaluators and
  # exports may run beside it.
  with (lock.exclusive(config.train.model_dir) if context.chief and trains
        else contextlib.nullcontext()):
    keras.utils.set_random_seed(config.data.seed)
    if context.chief and mode != 'export':
      write_flags(config, command)
    logging.info('Model directory: %s', config.train.model_dir)
    if trains:
      run_train(context, then_eval=mode == 'train_then_eval',
                teacher=resolved.teacher_spec)
    elif mode == 'eval':
      run_eval(context, command.eval_watch, command.eval_timeout)
    else:
      run_export(context, config.train.checkpoint)


def preview(command: Command):
  """A PNG of augmented views."""
  resolved = resolver.resolve_command(command,
                                      open_source=catalog.make_source)
  config, source = resolved.config, resolved.source
  grid = preview_grid(
      source, config.data.train_split, config.augment,
      command.preview_images, command.preview_pairs, config.data.seed)
  path = command.preview_path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  write_png(grid, path)
  print(f'Wrote {path}: {command.preview_images} images of {source.name} at '
        f'{config.augment.image_size} px, each followed by '
        f'{command.preview_pairs} pairs of SimCLR views.')


def embed(command: Command):
  """Embeddings of an image folder with an exported SavedModel."""
  resolved = resolver.resolve_command(command)
  saved_model = command.saved_model
  checks.check(saved_model, '--mode=embed needs --saved_model=DIR '
               '(a model_dir\'s saved_model/<step>).')
  checks.check(os.path.exists(os.path.join(saved_model, 'saved_model.pb')),
               f'--saved_model={saved_model} holds no saved_model.pb.')
  checks.check(resolved.data.dataset.startswith(catalog.FOLDER_PREFIX),
               '--mode=embed takes --dataset=folder:PATH.')
  outputs = EmbedOutputs(
      output=command.output, neighbors=command.neighbors,
      projector_dir=command.projector_dir, retrievals=command.retrievals,
      retrieval_queries=command.retrieval_queries,
      retrieval_neighbors=command.retrieval_neighbors)
  arrays = embed_folder(saved_model, resolved.data,
                        resolved.eval.eval_batch_size, outputs)
  print(f'Wrote {command.output}: {arrays["embeddings"].shape[0]} embeddings '
        f'of size {arrays["embeddings"].shape[1]}.')
  if command.projector_dir:
    print(f'Wrote a TensorBoard Projector to {command.projector_dir}: '
          f'tensorboard --logdir={command.projector_dir}')
  if command.retrievals:
    print(f'Wrote {command.retrievals}: {command.retrieval_queries} queries, '
          f'{command.retrieval_neighbors} nearest training images each.')


def import_original(command: Command):
  """A checkpoint of the original SimCLR code -> a run of ours in
  --model_dir (checkpoint, flags.json, SavedModel)."""
  given = command.given
  checks.check(given.get('checkpoint'), '--mode=import needs '
               '--checkpoint=PATH: a checkpoint (prefix or directory) or '
               'SavedModel directory written by the original SimCLR TF2 code.')
  checks.check('model_dir' in given, '--mode=import needs --model_dir=DIR, '
               'the new run directory to write.')
  model_dir = given['model_dir']
  checks.check_writable(model_dir)
  checks.check(not checkpoints.candidates(model_dir), f'--model_dir='
               f'{model_dir} already holds checkpoints; import into a new '
               'directory.')
  weights = original.read(given['checkpoint'])
  inferred = original.infer_settings(weights, given.get('ft_proj_selector'))
  config = resolver.resolve_command(
      command, imported=(weights.path, inferred)).config
  with lock.exclusive(model_dir):
    write_flags(config, command)
    done = run_import(
        RunContext(config, tf.distribute.get_strategy(), None), weights)
  print(f'Imported {weights.path} (global step {done["global_step"]}): '
        f'{original.describe(inferred)}, at {config.augment.image_size} px.\n'
        f'Wrote {", ".join([done["checkpoint"], *done["exports"].values()])}'
        f' in {done["seconds"]:.1f} s.', flush=True)


# --- The work on a run -----------------------------------------------------


def export_model(context: RunContext, model,
                 global_step: int) -> dict[str, str]:
  """The run's exports of `model` in --export_formats (the chief writes
  them); {format: path}."""
  if not context.chief:
    return {}
  return formats.export_all(model, context.config, global_step)


def _rounded(results: dict) -> str:
  return ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                   for k, v in results.items())


def run_train(context: RunContext, then_eval: bool,
              teacher: TeacherSpec | None = None) -> dict | None:
  """Trains (resuming; distilling `teacher`), exports, then evaluates or
  runs the kNN monitor; returns result.json's content when it evaluates."""
  config = context.config
  monitor = None
  every = config.eval.knn_every_n_checkpoints
  if every and config.eval.knn and context.source.has_labels:

    def knn_monitor(task, step):
      results = evaluators.feature_metrics(context, task.model, knn=True)
      logging.info('kNN monitor at step %d: %s', step, _rounded(results))
      report.write_summary(context, step, results)

    monitor = EveryNthCheckpoint(every, knn_monitor)
  result = train(context, at_checkpoints=monitor, teacher=teacher)
  try:
    export_model(context, result.model, result.global_step)
    export_failure = None
  except formats.ExportError as e:
    export_failure = e
  evaluated = None
  if then_eval:
    evaluated = report.report(context, evaluators.evaluate(
        context, result.model, result.global_step))
  elif config.eval.knn and context.source.has_labels:
    results = evaluators.feature_metrics(context, result.model, knn=True)
    report.write_summary(context, result.global_step, results)
    logging.info('kNN monitor at the end of training: %s', _rounded(results))
  if export_failure is not None:
    raise ExportFailed(
        f'{export_failure} The checkpoint of step {result.global_step} is '
        f'kept{" and was evaluated" if then_eval else ""}; --mode=export writes '
        'the other formats from it.')
  return evaluated


def restored_model(context: RunContext, path: str):
  """(The model of checkpoint `path`, its global step)."""
  with context.strategy.scope():
    model = create_model(context.config.model,
                         context.config.augment.image_size)
  try:
    status = tf.train.Checkpoint(model=model).read(path)
    status.expect_partial().assert_existing_objects_matched()  # No optimizer.
  except (AssertionError, ValueError) as e:
    missing = re.findall(r'path=([^,\s]+)', str(e))
    why = (f'{len(missing)} of the model\'s variables are not in it, e.g. '
           f'{", ".join(missing[:2])}' if missing
           else str(e).splitlines()[0][:200])
    raise checkpoints.CheckpointError(
        f'{path} does not hold the model these settings build ({why}); give '
        'the architecture flags of the run that wrote it (its '
        f'{records.FLAGS_FILE} records them), including '
        '--lineareval_while_pretraining.') from None
  return model, checkpoints.step_of(path)


def _evaluate_checkpoint(context: RunContext, path: str) -> dict:
  model, step = restored_model(context, path)
  return report.report(context, evaluators.evaluate(context, model, step))


def run_eval(context: RunContext, watch: bool = False,
             timeout: float = 0) -> dict:
  """Evaluates the latest checkpoint, or each new one while watching."""
  if watch:
    result = None
    for path in tf.train.checkpoints_iterator(context.model_dir,
                                              timeout=timeout or None):
      result = _evaluate_checkpoint(context, path)
    return result
  return _evaluate_checkpoint(context,
                              checkpoints.latest_to_work_on(context.model_dir, 'eval'))


def run_export(context: RunContext, checkpoint: str | None) -> dict[str, str]:
  path = (checkpoints.locate(checkpoint) if checkpoint
          else checkpoints.latest_to_work_on(context.model_dir, 'export'))
  model, step = restored_model(context, path)
  try:
    exported = export_model(context, model, step)
  except formats.ExportError as e:
    raise ExportFailed(str(e)) from None
  for directory in exported.values():
    print(f'Exported {path} to {directory}', flush=True)
  return exported


def run_import(context: RunContext, weights: original.OriginalWeights) -> dict:
  """Writes `weights` (of the original SimCLR code) into `context.model_dir` as
  a checkpoint of ours at the original's global step, and exports it."""
  start = time.perf_counter()
  with context.strategy.scope():
    model = create_model(context.config.model,
                         context.config.augment.image_size)
  original_variables.load(model, weights)
  step = weights.global_step
  # The step is where checkpoints of ours keep it (the optimizer's counter);
  # the original's optimizer state is not carried over.
  checkpoint = tf.train.Checkpoint(model=model, optimizer=tf.train.Checkpoint(
      _iterations=tf.Variable(step, dtype=tf.int64)))
  manager = checkpoints.manager(checkpoint, context.model_dir,
                                context.config.train.keep_checkpoint_max)
  path = manager.save(checkpoint_number=step)
  exported = export_model(context, model, step)
  return {'checkpoint': path, 'exports': exported, 'global_step': step,
          'seconds': time.perf_counter() - start}
