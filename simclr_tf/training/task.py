"""The training task: model, optimizer, metrics and the step, built once
under the strategy.

`TrainTask.train_step(batch)` is one replica's step (it returns its metric
values); `run_steps(iterator, n)` runs n of them in one `tf.function` call
with `strategy.run`, the unit that `loop.run` schedules.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from simclr_tf.network import model as model_lib
from simclr_tf.network.model import SimCLRModel
from simclr_tf.settings.config import RunConfig
from simclr_tf.training import gradient_cache
from simclr_tf.training import objective
from simclr_tf.training import optim

PRETRAIN_METRICS = ('total_loss', 'contrast_loss', 'contrast_acc',
                    'contrast_entropy', 'supervised_loss', 'supervised_acc',
                    'weight_decay')
FINETUNE_METRICS = ('total_loss', 'supervised_loss', 'supervised_acc',
                    'weight_decay')


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


def build_model(config: RunConfig) -> SimCLRModel:
  """The model with its variables created (call inside strategy.scope())."""
  return model_lib.create(config.model, config.augment.image_size)


def build_optimizer(config: RunConfig, plan: Plan, model: SimCLRModel):
  """LARS (or the configured optimizer) on the warmup + cosine schedule,
  built for the model's trainable variables; float16 adds dynamic loss
  scaling (bfloat16 has float32's range)."""
  schedule = optim.learning_rate_schedule(
      config.optim, config.train.train_batch_size, plan.total_steps,
      plan.warmup_steps)
  # Pretraining's side head sees stop_gradient(features): its learning rate
  # is its own (docs/command_line.md, --lineareval_learning_rate_scale).
  side_head = (model.supervised_variables
               if config.model.train_mode == 'pretrain' else ())
  optimizer = optim.build_optimizer(config.optim, schedule, model, side_head)
  if config.model.precision == 'float16':
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  # Built here, not lazily inside the replica function (docs/contract.md,
  # section 1).
  optimizer.build(model.trainable_variables)
  return optimizer


def supervised_loss_and_accuracy(labels, logits):
  loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels, tf.cast(logits, tf.float32)))
  return loss, tf.reduce_mean(objective.top_k_correct(labels, logits, 1))


class TrainTask:
  """What one training run optimises, under `strategy`."""

  def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy,
               plan: Plan):
    self.config = config
    self.strategy = strategy
    self.plan = plan
    self.pretrain = config.model.train_mode == 'pretrain'
    # The side head learns from each image's evaluation view, in a pass of
    # its own, rather than from the augmented views (docs/evaluation.md).
    self.side_head_on_eval_view = (
        self.pretrain and config.model.has_supervised_head and
        config.train.lineareval_view == 'eval')
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

  def losses(self, batch) -> dict:
    """The loss terms and metrics of one replica's batch."""
    config = self.config
    if self.pretrain:
      images = tf.concat([batch['view1'], batch['view2']], 0)
      labels = tf.concat([batch['label'], batch['label']], 0)
    else:
      images, labels = batch['image'], batch['label']
    outputs = self.model(images, training=True,
                         supervised=not self.side_head_on_eval_view)
    if self.side_head_on_eval_view:
      outputs['logits_sup'] = self.model.side_head_logits(batch['eval_view'])
      labels = batch['label']
    values = {}
    loss = 0.0
    if self.pretrain:
      contrast_loss, logits_ab, contrast_labels = self.contrastive_loss(
          outputs['proj_head_output'],
          self.small_view_projections(batch.get('small_views')))
      values['contrast_loss'] = contrast_loss
      values.update(objective.contrastive_metrics(logits_ab, contrast_labels))
      loss += contrast_loss
    if 'logits_sup' in outputs:
      values['supervised_loss'], values['supervised_acc'] = (
          supervised_loss_and_accuracy(labels, outputs['logits_sup']))
      loss += values['supervised_loss']
    values['weight_decay'] = optim.weight_decay_loss(config.optim, self.model)
    values['total_loss'] = loss + values['weight_decay']
    return values

  def small_view_projections(self, small_views):
    """Projections [S B, D] of a batch's small views [B, S, s, s, 3], small
    view k of every example at rows k B .. (k + 1) B - 1 (None: none)."""
    if small_views is None:
      return None
    crops = tf.unstack(small_views, axis=1)
    # The supervised head learns from the two views (or the eval view) only.
    return self.model(tf.concat(crops, 0), training=True,
                      supervised=False)['proj_head_output']

  def contrastive_loss(self, projections, small_projections=None):
    """NT-Xent of the two views' projections, with the small views' terms
    when there are small views (multi-crop)."""
    train = self.config.train
    if small_projections is None:
      return objective.contrastive_loss(projections, train.temperature,
                                        train.hidden_norm)
    return objective.multi_crop_loss(projections, small_projections,
                                     train.temperature, train.hidden_norm)

  def train_step(self, batch) -> dict:
    """One replica's step: gradients of its loss, applied; metric values."""
    if self.chunk_size:
      return self.cached_train_step(batch)
    optimizer = self.optimizer
    with tf.GradientTape() as tape:
      values = self.losses(batch)
      # Gradients are summed over replicas: scale for the global batch.
      scaled_loss = values['total_loss'] / self.strategy.num_replicas_in_sync
      if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        scaled_loss = optimizer.scale_loss(scaled_loss)
    variables = self.model.trainable_variables
    optimizer.apply(tape.gradient(scaled_loss, variables), variables)
    for name, value in values.items():
      self.metrics[name].update_state(value)
    return values

  def _scaled(self, loss):
    """A replica's share of the global loss (gradients are summed over
    replicas), loss-scaled under float16."""
    loss = loss / self.strategy.num_replicas_in_sync
    if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
      loss = self.optimizer.scale_loss(loss)
    return loss

  def cached_gradients(self, batch):
    """The gradients of `losses(batch)`'s total with batch norm over chunks
    of `chunk_size` examples, computed chunk by chunk (gradient_cache.py);
    and its metric values."""
    config = self.config
    model = self.model
    # The side head on the evaluation view trains outside the chunks.
    on_eval_view = self.side_head_on_eval_view
    has_head = model.supervised_head is not None and not on_eval_view
    images = gradient_cache.chunk([batch['view1'], batch['view2']],
                                  self.chunk_size)
    labels = gradient_cache.chunk([batch['label'], batch['label']],
                                  self.chunk_size)
    batch_images = 2 * batch['view1'].shape[0]
    small_views = batch.get('small_views')
    num_small = 0 if small_views is None else small_views.shape[1]
    # The small views of a chunk's examples, view-major like the two views.
    small_chunks = (gradient_cache.chunk(tf.unstack(small_views, axis=1),
                                         self.chunk_size)
                    if num_small else tf.zeros([images.shape[0], 0]))

    def forward(chunk):
      chunk_images, chunk_small, chunk_labels = chunk
      outputs = model(chunk_images, training=True, supervised=has_head)
      projections = outputs['proj_head_output']
      if num_small:
        projections = tf.concat([projections, tf.cast(
            model(chunk_small, training=True,
                  supervised=False)['proj_head_output'],
            projections.dtype)], 0)
      if not has_head:
        return projections, 0.0, tf.zeros([2])
      losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
          chunk_labels, tf.cast(outputs['logits_sup'], tf.float32))
      correct = objective.top_k_correct(chunk_labels, outputs['logits_sup'], 1)
      sums = tf.stack([tf.reduce_sum(losses), tf.reduce_sum(correct)])
      # The supervised loss is a mean over the whole batch's images.
      return (projections,
              self._scaled(sums[0] / batch_images),
              sums)

    def batch_objective(projections):
      two_views = projections[:batch_images]
      loss, logits_ab, contrast_labels = self.contrastive_loss(
          two_views, projections[batch_images:] if num_small else None)
      values = {'contrast_loss': loss,
                **objective.contrastive_metrics(logits_ab, contrast_labels)}
      return self._scaled(loss), values

    variables = model.trainable_variables
    gradients, values, sums = gradient_cache.cached_gradients(
        forward, variables, (images, small_chunks, labels), batch_objective,
        model.batch_norm_statistics, num_sums=2, unroll=self.unroll_chunks,
        num_views=2 + num_small)
    with tf.GradientTape() as tape:
      values['weight_decay'] = optim.weight_decay_loss(config.optim, model)
      extra = values['weight_decay']
      if on_eval_view:
        values['supervised_loss'], values['supervised_acc'] = (
            supervised_loss_and_accuracy(
                batch['label'], model.side_head_logits(batch['eval_view'])))
        extra += values['supervised_loss']
      scaled_extra = self._scaled(extra)
    gradients = [g if d is None else g + d for g, d in
                 zip(gradients, tape.gradient(scaled_extra, variables))]
    loss = values['contrast_loss'] + values['weight_decay']
    if has_head:
      values['supervised_loss'] = sums[0] / batch_images
      values['supervised_acc'] = sums[1] / batch_images
    if 'supervised_loss' in values:
      loss += values['supervised_loss']
    values['total_loss'] = loss
    return gradients, values

  def cached_train_step(self, batch) -> dict:
    """`train_step` with gradient caching (contrastive_chunk_size)."""
    gradients, values = self.cached_gradients(batch)
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
