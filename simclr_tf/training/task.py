"""The training task: model, optimizer, metrics and the step, built once
under the strategy.

`TrainTask.train_step(batch)` is one replica's step (it returns its metric
values); `run_steps(iterator, n)` runs n of them in one `tf.function` call
with `strategy.run`, the unit that `loop.train_until` schedules.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from simclr_tf.config import RunConfig
from simclr_tf.network.model import SimCLRModel, create_model
from simclr_tf.training import gradient_cache
from simclr_tf.training import optim
from simclr_tf.training import teacher
from simclr_tf.training import terms

PRETRAIN_METRICS = ('total_loss', 'contrast_loss', 'contrast_acc',
                    'contrast_entropy', 'supervised_loss', 'supervised_acc',
                    'weight_decay')
FINETUNE_METRICS = ('total_loss', 'supervised_loss', 'supervised_acc',
                    'weight_decay')


# Without --summary_steps, summaries come every SUMMARY_STEPS_MAX steps, or
# often enough that a short run's curves still have SUMMARY_POINTS points.
SUMMARY_STEPS_MAX = 100
SUMMARY_POINTS = 50


@dataclasses.dataclass(frozen=True)
class Plan:
  """How long training runs, in steps."""

  num_examples: int
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  checkpoint_steps: int
  summary_steps: int = SUMMARY_STEPS_MAX


def make_plan(config: RunConfig, num_examples: int) -> Plan:
  train = config.train
  batch = train.train_batch_size
  steps_per_epoch = max(1, num_examples // batch)
  total = train.train_steps or max(
      1, math.ceil(num_examples * train.train_epochs / batch))
  checkpoint_steps = train.checkpoint_steps or max(
      1, int(round(train.checkpoint_epochs * num_examples / batch)))
  warmup = int(round(config.optim.warmup_epochs * num_examples / batch))
  summary_steps = train.summary_steps or min(
      SUMMARY_STEPS_MAX, max(1, total // SUMMARY_POINTS))
  return Plan(num_examples, steps_per_epoch, total, min(warmup, total),
              min(checkpoint_steps, total), summary_steps)


def build_model(config: RunConfig) -> SimCLRModel:
  """The model with its variables created (call inside strategy.scope())."""
  return create_model(config.model, config.augment.image_size)


def build_optimizer(config: RunConfig, plan: Plan, model: SimCLRModel):
  """LARS (or the configured optimizer) on the warmup + cosine schedule,
  built for the model's trainable variables; float16 adds dynamic loss
  scaling (bfloat16 has float32's range)."""
  schedule = optim.learning_rate_schedule(
      config.optim, config.train.train_batch_size, plan.total_steps,
      plan.warmup_steps)
  # Pretraining's supervised head sees stop_gradient(features): its
  # learning rate is its own (docs/command_line.md,
  # --lineareval_learning_rate_scale).
  pretraining_head = (model.supervised_variables
                      if config.model.train_mode == 'pretrain' else ())
  optimizer = optim.build_optimizer(
      config.optim, schedule, model, pretraining_head,
      config.model.supervised_head.lineareval_learning_rate_scale)
  if config.model.precision == 'float16':
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  # Built here, not lazily inside the replica function (docs/contract.md,
  # section 1).
  optimizer.build(model.trainable_variables)
  return optimizer


class TrainTask:
  """What one training run optimises, under `strategy`."""

  def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy,
               plan: Plan, teacher_spec: teacher.TeacherSpec | None = None):
    """`teacher_spec`: what a distillation run distils."""
    self.config = config
    self.strategy = strategy
    self.plan = plan
    self.pretrain = config.model.train_mode == 'pretrain'
    per_replica = (config.train.train_batch_size //
                   strategy.num_replicas_in_sync)
    chunk_size = config.train.contrastive_chunk_size
    # Examples per chunk of a gradient-cached step; 0: plain steps.
    self.chunk_size = (chunk_size if self.pretrain and
                       0 < chunk_size < per_replica else 0)
    # MirroredStrategy cannot synchronise batch norm inside a graph loop.
    self.unroll_chunks = (strategy.num_replicas_in_sync > 1 and
                          config.model.encoder.global_bn)
    with strategy.scope():
      self.model = build_model(config)
      self.optimizer = build_optimizer(config, plan, self.model)
      self.teacher = None
      if config.model.train_mode == 'distill':
        if teacher_spec is None:
          raise ValueError('Distillation needs the teacher\'s description '
                           '(settings.resolver.resolve_teacher).')
        self.teacher = teacher.build(teacher_spec, config.model.precision)
      self.objective = terms.Objective(config, self.model, self.teacher)
      if self.teacher is not None:  # The terms its objective yields.
        names = ('total_loss', *self.objective.per_image_names,
                 'weight_decay')
      else:
        names = PRETRAIN_METRICS if self.pretrain else FINETUNE_METRICS
      if self.model.supervised_head is None:
        names = [n for n in names if not n.startswith('supervised')]
      self.metrics = {name: keras.metrics.Mean(name=name) for name in names}
    self.checkpoint = tf.train.Checkpoint(model=self.model,
                                          optimizer=self.optimizer)
    # Dynamic loss scaling skips the steps whose gradients overflow.
    self.may_skip_steps = isinstance(self.optimizer,
                                     keras.optimizers.LossScaleOptimizer)
    self.replica_step = (tf.function(self.train_step, jit_compile=True)
                         if config.train.jit_compile else self.train_step)
    self._run_steps = tf.function(self._steps)

  @property
  def views(self) -> int:
    """Augmented views per example that a batch carries."""
    return 2 if self.pretrain else 1

  @property
  def step(self) -> int:
    """The global step (a host read)."""
    return int(self.optimizer.iterations.numpy())

  @property
  def learning_rate(self) -> float:
    return float(self.optimizer.learning_rate)

  def scaled(self, loss):
    """A replica's share of the global loss (gradients are summed over
    replicas), loss-scaled under float16."""
    loss = loss / self.strategy.num_replicas_in_sync
    if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
      loss = self.optimizer.scale_loss(loss)
    return loss

  def gradients(self, batch) -> tuple:
    """The gradients of one replica's objective and its values: in one pass
    over the batch, or chunk by chunk (contrastive_chunk_size)."""
    variables = self.model.trainable_variables
    if self.chunk_size:
      return gradient_cache.objective_gradients(
          self.objective, batch, self.chunk_size, variables, self.scaled,
          unroll=self.unroll_chunks)
    with tf.GradientTape() as tape:
      values = self.objective.values(batch)
      scaled_loss = self.scaled(values['total_loss'])
    return tape.gradient(scaled_loss, variables), values

  def train_step(self, batch) -> dict:
    """One replica's step: gradients of its loss, applied; metric values."""
    gradients, values = self.gradients(batch)
    self.optimizer.apply(gradients, self.model.trainable_variables)
    for name, value in values.items():
      self.metrics[name].update_state(value)
    return values

  def _steps(self, iterator, num_steps):
    for _ in tf.range(num_steps):
      self.strategy.run(self.replica_step, args=(next(iterator),))

  def run_steps(self, iterator, num_steps: int):
    """`num_steps` steps in one call; returns when they are done."""
    self._run_steps(iterator, tf.constant(num_steps))

  def release_steps(self):
    """Drops the traced step function (after the input pipeline is gone:
    in the other order, tear-down stalled for up to a minute)."""
    self._run_steps = None

  def read_metrics(self) -> dict:
    """Means since the last reset (a host read)."""
    return {name: float(m.result()) for name, m in self.metrics.items()}

  def reset_metrics(self):
    for metric in self.metrics.values():
      metric.reset_state()
