"""Training: the task, its input and the loop's hooks, put together.

`train` builds a `task.TrainTask`, restores it (or its encoder) if there is
something to resume from, feeds it the input pipeline from the checkpointed
position, and runs `loop.train_until` with the standard hooks plus any given.
"""

from collections.abc import Callable, Sequence
import dataclasses
import gc
import hashlib
import os
import shutil
import tempfile

from absl import logging
import numpy as np
import tensorflow as tf

from simclr_tf.config import RunConfig
from simclr_tf.devices import distribute
from simclr_tf.inputs import pipeline
from simclr_tf.inputs import subsets
from simclr_tf.network.model import SimCLRModel
from simclr_tf.run_context import RunContext
from simclr_tf.storage import checkpoints
from simclr_tf.storage import records
from simclr_tf.training import loop
from simclr_tf.training.hooks import (CheckpointHook, EveryNthCheckpointHook,
                                      NanGuardHook, PreemptionHook,
                                      ProgressHook, SummaryHook, TimeBudgetHook)
from simclr_tf.training.loop import Hook
from simclr_tf.training.teacher import TeacherSpec
from simclr_tf.training.task import TrainTask, make_plan


@dataclasses.dataclass
class TrainResult:
  model: SimCLRModel
  global_step: int


def _restore(task: TrainTask, config: RunConfig):
  latest = checkpoints.latest_in(config.train.model_dir)
  if latest:
    status = task.checkpoint.restore(latest)
    try:
      status.assert_existing_objects_matched()
    except AssertionError as e:
      if checkpoints.has_optimizer_state(latest):
        raise checkpoints.CheckpointError(
            f'{latest} does not match this run\'s optimizer ('
            f'{str(e).splitlines()[0][:200]}); resume with the same '
            '--optimizer and --train_mode.') from None
      raise checkpoints.CheckpointError(
          f'{latest} holds weights but no optimizer state to resume from (an '
          'imported model); start a new run from it with --checkpoint='
          f'{config.train.model_dir} and another --model_dir.') from None
    logging.info('Resuming from %s.', latest)
  elif config.train.checkpoint:
    checkpoints.restore_encoder(task.model, config.train.checkpoint)


@dataclasses.dataclass(frozen=True)
class EveryNthCheckpoint:
  """`call(task, step)` at every n-th checkpoint before the last (the kNN
  monitor)."""

  n: int
  call: Callable[[TrainTask, int], None]


def standard_hooks(config: RunConfig, task: TrainTask, manager, writer,
                   at_checkpoints: EveryNthCheckpoint | None = None):
  """Stop requests first (so that the checkpoint hook after them saves the
  step they stop at), then progress, summaries, checkpoints, monitors."""
  loop_settings = config.train
  latest = lambda: manager.latest_checkpoint
  workers, own = distribute.worker_names(task.strategy)
  preemption = PreemptionHook(latest, workers, own, loop_settings.model_dir)
  hooks = [NanGuardHook(task.plan.summary_steps,
                        task.plan.checkpoint_steps, latest),
           preemption]
  if loop_settings.max_train_seconds > 0:
    hooks.append(TimeBudgetHook(loop_settings.max_train_seconds))
  checkpoint_hook = CheckpointHook(manager,
                                   task.plan.checkpoint_steps)
  hooks += [ProgressHook(loop_settings.log_every_seconds),
            SummaryHook(writer, task.plan.summary_steps),
            checkpoint_hook]
  if at_checkpoints is not None:
    hooks.append(EveryNthCheckpointHook(checkpoint_hook, at_checkpoints.n,
                                        at_checkpoints.call))
  return hooks


def train_dataset(config: RunConfig, source, split, task: TrainTask,
                  start_step: int, input_context=None):
  return pipeline.train_dataset(
      source, split, augment_config=config.augment, data=config.data,
      global_batch_size=config.train.train_batch_size, views=task.views,
      input_context=input_context, start_step=start_step,
      eval_view=task.objective.supervised_head_on_eval_view)


def _write_view_summary(config, source, split, task, writer, max_images=4):
  """A few augmented pairs, view 1 above view 2, at the start of a run."""
  if not task.pretrain:
    return
  batch = next(iter(pipeline.train_dataset(
      source, split, augment_config=config.augment, data=config.data,
      global_batch_size=min(8, config.train.train_batch_size), views=2)))
  pairs = tf.concat([batch['view1'][:max_images],
                     batch['view2'][:max_images]], axis=1)
  writer.images(0, 'augmented_views', pairs, max_images)


def train(context: RunContext, *, hooks: Sequence[Hook] = (),
          at_checkpoints: EveryNthCheckpoint | None = None,
          teacher: TeacherSpec | None = None) -> TrainResult:
  """Trains the run of `context` (its configuration, source, strategy)
  until the plan's last step or a hook stops it, resuming from its
  model_dir if that holds checkpoints; `hooks` run after the standard
  ones. A distillation run distils `teacher` (resolver.resolve_teacher)."""
  config, strategy, source = context.config, context.strategy, context.source
  chief = context.chief
  loop_settings = config.train
  split = subsets.training_split(config, source)
  if split.indices is not None:
    logging.info('Fine-tuning on %d labeled examples (%.1f%% of %s).',
                 len(split.indices), 100 * config.data.label_fraction,
                 split.name)
  if split.labeled is not None:
    logging.info('Distilling on every image of %s; %d of them keep their '
                 'labels (%.1f%%).', split.name, len(split.labeled),
                 100 * config.data.label_fraction)
  plan = make_plan(config, split.num_examples(source))
  logging.info('Training %s for %d steps (%d examples, %d steps/epoch, '
               'warmup %d, checkpoint every %d).', config.model.train_mode,
               plan.total_steps, plan.num_examples, plan.steps_per_epoch,
               plan.warmup_steps, plan.checkpoint_steps)
  task = TrainTask(config, strategy, plan, teacher)
  _restore(task, config)
  # Every worker saves (saving is collective under multi-worker strategies),
  # but only the chief into model_dir; the others into a temporary place
  # that is removed at the end (the TensorFlow multi-worker guide's recipe).
  save_dir = (loop_settings.model_dir if chief
              else tempfile.mkdtemp(prefix='worker-'))
  manager = checkpoints.manager(task.checkpoint, save_dir,
                                loop_settings.keep_checkpoint_max)
  start_step = task.step
  # The input continues where the checkpointed step left it.
  dataset = strategy.distribute_datasets_from_function(
      lambda ctx: train_dataset(config, source, split, task, start_step, ctx))
  iterator = iter(dataset)
  # The chief's TensorBoard writer; a no-op elsewhere.
  writer = records.MetricsWriter(
      os.path.join(loop_settings.model_dir, 'train'), chief)
  if start_step == 0 and chief:
    _write_view_summary(config, source, split, task, writer)
  all_hooks = standard_hooks(config, task, manager, writer,
                             at_checkpoints) + list(hooks)
  try:
    state = loop.train_until(task, iterator, total_steps=plan.total_steps,
                             steps_per_loop=loop_settings.steps_per_loop,
                             hooks=all_hooks,
                             batch_size=loop_settings.train_batch_size,
                             agree=distribute.summed_over_workers(strategy))
  except tf.errors.OpError as e:
    lost = distribute.lost_workers(e, strategy)
    if lost is None:
      raise
    # The console gets one line; TensorFlow's error, with --verbosity=1.
    logging.debug('What TensorFlow reported:', exc_info=True)
    resume = checkpoints.latest_in(loop_settings.model_dir)
    raise distribute.WorkerLost(
        f'Lost {lost} during training ({type(e).__name__}); this worker '
        'stops too. Launch all workers again with the same command: they '
        f'resume from {resume or "the start (no checkpoint yet)"}.') from None
  finally:
    if not chief:
      shutil.rmtree(save_dir, ignore_errors=True)
  logging.info('Trained to step %d; weights fingerprint %s.', state.step,
               weights_fingerprint(task.model))
  # Tear the input pipeline down first, then the loop: in the other order
  # (as the garbage collector left it) this stalled for up to a minute.
  del iterator, dataset
  gc.collect()
  task.release_steps()
  gc.collect()
  return TrainResult(task.model, state.step)


def weights_fingerprint(model) -> str:
  """A digest that changes when any weight changes by any amount (to compare
  replicas, workers and resumed runs); hashing bytes costs no extra memory
  even for the largest models."""
  digest = hashlib.sha256()
  for variable in model.weights:
    digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
  return digest.hexdigest()[:16]
