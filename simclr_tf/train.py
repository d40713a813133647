"""The custom training loop under tf.distribute.

One `tf.function` runs `steps_per_loop` steps of `strategy.run` per call on
a dataset from `distribute_datasets_from_function`; between calls Python
writes summaries, checkpoints and a progress line.
"""

import dataclasses
import gc
import hashlib
import math
import os
import shutil
import signal
import tempfile
import threading
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from simclr_tf import checkpoints
from simclr_tf import datasets
from simclr_tf import objective
from simclr_tf import optim
from simclr_tf import pipeline
from simclr_tf import precision
from simclr_tf.config import RunConfig
from simclr_tf.model import SimCLRModel

PRETRAIN_METRICS = ('total_loss', 'contrast_loss', 'contrast_acc',
                    'contrast_entropy', 'supervised_loss', 'supervised_acc',
                    'weight_decay')
FINETUNE_METRICS = ('total_loss', 'supervised_loss', 'supervised_acc',
                    'weight_decay')
# Metrics shown in the progress line.
_SHOWN = ('total_loss', 'contrast_acc', 'supervised_acc')


@dataclasses.dataclass(frozen=True)
class Plan:
  """How long training runs, in steps."""

  num_examples: int
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  checkpoint_steps: int


def make_plan(config: RunConfig, num_examples: int) -> Plan:
  train = config.train
  batch = train.train_batch_size
  steps_per_epoch = max(1, num_examples // batch)
  total = train.train_steps or max(
      1, math.ceil(num_examples * train.train_epochs / batch))
  checkpoint_steps = train.checkpoint_steps or max(
      1, int(round(train.checkpoint_epochs * num_examples / batch)))
  warmup = int(round(config.optim.warmup_epochs * num_examples / batch))
  return Plan(num_examples, steps_per_epoch, total, min(warmup, total),
              min(checkpoint_steps, total))


def training_split(config: RunConfig, source: datasets.Source):
  """The training split; for fine-tuning, the label-fraction subset."""
  data = config.data
  if config.train.train_mode == 'finetune' and data.label_fraction < 1:
    indices = datasets.label_fraction_indices(
        source.labels(data.train_split), data.label_fraction, data.seed)
    logging.info('Fine-tuning on %d labeled examples (%.1f%% of %s).',
                 len(indices), 100 * data.label_fraction, data.train_split)
    return pipeline.Split(data.train_split, indices)
  return pipeline.Split(data.train_split)


def build_model(config: RunConfig) -> SimCLRModel:
  """The model with its variables created (call inside strategy.scope())."""
  with precision.dtype_policy(config.model.precision):
    model = SimCLRModel(config.model)
  size = config.augment.image_size
  model(tf.zeros([1, size, size, 3]), training=False)
  return model


def build_optimizer(config: RunConfig, plan: Plan):
  """LARS (or the configured optimizer) on the warmup + cosine schedule;
  float16 adds dynamic loss scaling (bfloat16 has float32's range)."""
  schedule = optim.learning_rate_schedule(
      config.optim, config.train.train_batch_size, plan.total_steps,
      plan.warmup_steps)
  optimizer = optim.build_optimizer(config.optim, schedule)
  if config.model.precision == 'float16':
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def _supervised(labels, logits):
  loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels, tf.cast(logits, tf.float32)))
  correct = tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)
  return loss, tf.reduce_mean(tf.cast(correct, tf.float32))


def make_step_fn(config: RunConfig, model, optimizer, metrics,
                 num_replicas: int):
  """One training step on one replica's batch."""
  pretrain = config.train.train_mode == 'pretrain'

  def step_fn(batch):
    values = {}
    with tf.GradientTape() as tape:
      if pretrain:
        images = tf.concat([batch['view1'], batch['view2']], 0)
        labels = tf.concat([batch['label'], batch['label']], 0)
      else:
        images, labels = batch['image'], batch['label']
      outputs = model(images, training=True)
      loss = 0.0
      if pretrain:
        contrast_loss, logits_ab, contrast_labels = (
            objective.contrastive_loss(outputs['proj_head_output'],
                                       config.train.temperature,
                                       config.train.hidden_norm))
        values['contrast_loss'] = contrast_loss
        values.update(objective.contrastive_metrics(logits_ab,
                                                    contrast_labels))
        loss += contrast_loss
      if 'logits_sup' in outputs:
        supervised_loss, supervised_acc = _supervised(labels,
                                                      outputs['logits_sup'])
        values['supervised_loss'] = supervised_loss
        values['supervised_acc'] = supervised_acc
        loss += supervised_loss
      weight_decay = optim.weight_decay_loss(config.optim, model)
      values['weight_decay'] = weight_decay
      loss += weight_decay
      values['total_loss'] = loss
      # Gradients are summed over replicas: scale for the global batch.
      scaled_loss = loss / num_replicas
      if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        scaled_loss = optimizer.scale_loss(scaled_loss)
    variables = model.trainable_variables
    optimizer.apply(tape.gradient(scaled_loss, variables), variables)
    for name, value in values.items():
      metrics[name].update_state(value)

  if config.train.jit_compile:
    return tf.function(step_fn, jit_compile=True)
  return step_fn


class _Summaries:
  """TensorBoard writer of the chief; a no-op elsewhere."""

  def __init__(self, directory, enabled):
    self.writer = (tf.summary.create_file_writer(directory) if enabled
                   else tf.summary.create_noop_writer())

  def scalars(self, step, values):
    with self.writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)
    self.writer.flush()

  def views(self, step, batch, max_images=4):
    """A few augmented pairs, view 1 above view 2."""
    if 'view1' not in batch:
      return
    pairs = tf.concat([batch['view1'][:max_images],
                       batch['view2'][:max_images]], axis=1)
    with self.writer.as_default(step=step):
      tf.summary.image('augmented_views', pairs, max_outputs=max_images)


class Preempted(Exception):
  """Training stopped early on request (SIGTERM, Ctrl-C), after a
  checkpoint."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.exit_code = 128 + signum  # The shell's code for that signal.


# Signals that stop training with a checkpoint at the current step: what
# schedulers send before killing (SIGTERM), and Ctrl-C (SIGINT).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StopRequest:
  """Turns SIGTERM and Ctrl-C into a request that the loop honours after the
  current steps, with a checkpoint. A second Ctrl-C aborts at once."""

  def __init__(self):
    self.signum = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for signum in _STOP_SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.signum).name

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      self.restore()
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning('%s received: saving a checkpoint and stopping (Ctrl-C '
                    'again aborts without one).', self.signal_name)

  def restore(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


class ProgressLog:
  """One log line every few seconds: step / total, metrics, images/s, ETA.

  (keras.utils.Progbar assumes counting from zero, which misestimates the
  ETA of a resumed run, and writes terminal control codes into log files.)
  """

  def __init__(self, total_steps, start_step, every_seconds):
    self.total_steps = total_steps
    self.start_step = start_step
    self.every_seconds = every_seconds
    self.started = self.last = time.monotonic()

  def update(self, step, images_per_second, metrics, force=False):
    now = time.monotonic()
    if now - self.last < self.every_seconds and not force:
      return
    self.last = now
    done = step - self.start_step
    eta = (now - self.started) / max(done, 1) * (self.total_steps - step)
    shown = ''.join(f'  {name} {metrics[name]:.4f}' for name in _SHOWN
                    if name in metrics)
    logging.info('step %d/%d%s  images/s %.1f  ETA %s', step,
                 self.total_steps, shown, images_per_second,
                 time.strftime('%H:%M:%S', time.gmtime(eta)))


@dataclasses.dataclass
class TrainResult:
  model: SimCLRModel
  global_step: int


def train(config: RunConfig, strategy: tf.distribute.Strategy,
          source: datasets.Source, chief: bool = True,
          on_checkpoint=None) -> TrainResult:
  """Trains until `plan.total_steps`, resuming from `model_dir` if it holds
  checkpoints. `on_checkpoint(model, step, index, final)` runs after each
  save."""
  tc = config.train
  pretrain = tc.train_mode == 'pretrain'
  split = training_split(config, source)
  plan = make_plan(config, split.num_examples(source))
  logging.info('Training %s for %d steps (%d examples, %d steps/epoch, '
               'warmup %d, checkpoint every %d).', tc.train_mode,
               plan.total_steps, plan.num_examples, plan.steps_per_epoch,
               plan.warmup_steps, plan.checkpoint_steps)

  with strategy.scope():
    model = build_model(config)
    optimizer = build_optimizer(config, plan)
    optimizer.build(model.trainable_variables)
    metric_names = PRETRAIN_METRICS if pretrain else FINETUNE_METRICS
    if model.supervised_head is None:
      metric_names = [name for name in metric_names
                      if not name.startswith('supervised')]
    metrics = {name: keras.metrics.Mean(name=name) for name in metric_names}

  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
  latest = checkpoints.latest_in(tc.model_dir)
  if latest:
    checkpoint.restore(latest).assert_existing_objects_matched()
    logging.info('Resuming from %s.', latest)
  elif tc.checkpoint:
    checkpoints.restore_encoder(model, tc.checkpoint)
  # Every worker saves (saving is collective under multi-worker strategies),
  # but only the chief into model_dir; the others into a temporary place
  # that is removed at the end (the TensorFlow multi-worker guide's recipe).
  save_dir = tc.model_dir if chief else tempfile.mkdtemp(prefix='worker-')
  manager = checkpoints.manager(checkpoint, save_dir, tc.keep_checkpoint_max)

  views = 2 if pretrain else 1
  step = int(optimizer.iterations.numpy())
  # The input continues where the checkpointed step left it.
  dataset = strategy.distribute_datasets_from_function(
      lambda ctx: pipeline.train_dataset(
          source, split, global_batch_size=tc.train_batch_size,
          augment_config=config.augment, views=views, seed=config.data.seed,
          cache=config.data.cache_dataset,
          shuffle_buffer=config.data.shuffle_buffer, input_context=ctx,
          start_step=step))
  iterator = iter(dataset)
  step_fn = make_step_fn(config, model, optimizer, metrics,
                         strategy.num_replicas_in_sync)

  @tf.function
  def train_loop(iterator, num_steps):
    for _ in tf.range(num_steps):
      strategy.run(step_fn, args=(next(iterator),))

  summaries = _Summaries(os.path.join(tc.model_dir, 'train'), chief)
  start_step = step
  if step == 0:
    summaries.views(0, next(iter(pipeline.train_dataset(
        source, split, global_batch_size=min(8, tc.train_batch_size),
        augment_config=config.augment, views=views, seed=config.data.seed))))
  progress = ProgressLog(plan.total_steps, start_step, tc.log_every_seconds)
  checkpoint_index = 0
  stop = _StopRequest()
  try:
    while step < plan.total_steps:
      num_steps = min(tc.steps_per_loop, plan.total_steps - step,
                      tc.summary_steps - step % tc.summary_steps,
                      plan.checkpoint_steps - step % plan.checkpoint_steps)
      started = time.perf_counter()
      train_loop(iterator, tf.constant(num_steps))
      step = int(optimizer.iterations.numpy())  # Waits for the loop to end.
      images_per_second = (num_steps * tc.train_batch_size /
                           (time.perf_counter() - started))
      results = {name: float(m.result()) for name, m in metrics.items()}
      if not np.isfinite(results['total_loss']):
        raise FloatingPointError(
            f'The loss became {results["total_loss"]} at step {step}; the '
            f'last good checkpoint is {checkpoints.latest_in(tc.model_dir)}.')
      at_end = step >= plan.total_steps
      progress.update(step, images_per_second, results, force=at_end)
      if step % tc.summary_steps == 0 or at_end:
        summaries.scalars(step, {
            **results, 'learning_rate': float(optimizer.learning_rate),
            'images_per_second': images_per_second})
        for metric in metrics.values():
          metric.reset_state()
      if step % plan.checkpoint_steps == 0 or at_end or stop.requested:
        manager.save(checkpoint_number=step)
        checkpoint_index += 1
        if stop.requested:
          raise Preempted(f'Stopped by {stop.signal_name} at step {step} with '
                          f'checkpoint {manager.latest_checkpoint}; run the '
                          'same command again to resume.', stop.signum)
        if on_checkpoint is not None:
          on_checkpoint(model, step, checkpoint_index, at_end)
  finally:
    stop.restore()
  if not chief:
    shutil.rmtree(save_dir, ignore_errors=True)
  logging.info('Trained to step %d; weights fingerprint %s.', step,
               weights_fingerprint(model))
  # Tear the input pipeline down first, then the loop: in the other order
  # (as the garbage collector left it) this stalled for up to a minute.
  del iterator, dataset
  gc.collect()
  del train_loop
  gc.collect()
  return TrainResult(model, step)


def weights_fingerprint(model) -> str:
  """A digest that changes when any weight changes by any amount (to compare
  replicas, workers and resumed runs); hashing bytes costs no extra memory
  even for the largest models."""
  digest = hashlib.sha256()
  for variable in model.weights:
    digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
  return digest.hexdigest()[:16]
