"""What a training step minimises: one objective, as named terms.

The plain step (`task.TrainTask.train_step`) and the gradient-cached step
(`gradient_cache.py`, --contrastive_chunk_size) both evaluate this
objective; they differ only in how many images one pass of the model sees.
The terms come in three kinds, by what they need:

* per-image terms: one value per image of a pass over the views, averaged
  over the batch (the supervised head's cross-entropy on the views, and its
  accuracy; distillation's terms, distillation.py). A plain step takes the
  mean; a cached step sums each chunk's.
* batch terms: the projections of the whole batch (NT-Xent; with small
  views, the multi-crop loss), with their metrics.
* model terms: the model's variables or inputs beside the views, once per
  step (weight decay; the supervised head on the evaluation view).

The step's loss is the sum of the LOSS_TERMS present (`loss`); every other
value is a metric. A new objective adds its term to one of these kinds and
its name to LOSS_TERMS.
"""

import tensorflow as tf

from simclr_tf.config import RunConfig
from simclr_tf.network.model import SimCLRModel
from simclr_tf.training import distillation
from simclr_tf.training import objective
from simclr_tf.training import optim

# The terms that add up to the loss, in the order they are summed.
LOSS_TERMS = ('contrast_loss', 'supervised_loss', 'distill_loss',
              'distill_label_loss', 'weight_decay')
# What `supervised_head_terms` yields per image.
SUPERVISED_HEAD_TERMS = ('supervised_loss', 'supervised_acc')


class Objective:
  """The named terms of one run's training step."""

  def __init__(self, config: RunConfig, model: SimCLRModel, teacher=None):
    """`teacher` (distillation): images -> the teacher's logits."""
    self.model = model
    self.optim = config.optim
    self.temperature = config.train.temperature
    self.hidden_norm = config.train.hidden_norm
    self.pretrain = config.model.train_mode == 'pretrain'
    self.teacher = teacher
    self.distill = config.model.distill
    has_head = model.supervised_head is not None
    # In pretraining the supervised head may learn from each image's
    # evaluation view, in a pass of its own (docs/evaluation.md).
    self.supervised_head_on_eval_view = (
        self.pretrain and has_head and
        config.model.supervised_head.lineareval_view == 'eval')
    self.supervised_head_on_views = (
        has_head and not self.supervised_head_on_eval_view)

  @property
  def per_image_names(self) -> tuple:
    """The per-image terms' names, in the order `image_pass` yields them."""
    if self.teacher is not None:
      return tuple(name for name in distillation.DISTILLATION_TERMS
                   if name != 'distill_label_loss' or
                   self.distill.distill_label_weight)
    return SUPERVISED_HEAD_TERMS if self.supervised_head_on_views else ()

  def views(self, batch) -> tuple:
    """A batch's views through the model together, and their labels: view
    1 then view 2 in pretraining, the image in fine-tuning."""
    if self.pretrain:
      return [batch['view1'], batch['view2']], [batch['label'], batch['label']]
    return [batch['image']], [batch['label']]

  def image_pass(self, images, labels) -> tuple:
    """One training-mode pass over `images` [V N, ...] with `labels` [V N]:
    their projections (None in fine-tuning) and per-image terms [V N]."""
    outputs = self.model(images, training=True,
                         supervised=self.supervised_head_on_views)
    if self.teacher is not None:
      per_image = distillation.distillation_terms(
          self.teacher(images), outputs['logits_sup'], labels,
          self.distill.distill_temperature,
          self.distill.distill_label_weight)
    elif self.supervised_head_on_views:
      per_image = supervised_head_terms(labels, outputs['logits_sup'])
    else:
      per_image = {}
    return (outputs['proj_head_output'] if self.pretrain else None), per_image

  def small_view_pass(self, small_images):
    """The projections of small views [S N, s, s, 3] (multi-crop), in a
    pass of their own; the supervised head leaves them alone."""
    return self.model(small_images, training=True,
                      supervised=False)['proj_head_output']

  def batch_terms(self, projections, small_projections=None) -> dict:
    """The contrastive loss of the whole batch's projections [2B, D] (and
    its small views' [S B, D]), with its metrics."""
    if small_projections is None:
      loss, logits_ab, labels = objective.contrastive_loss(
          projections, self.temperature, self.hidden_norm)
    else:
      loss, logits_ab, labels = objective.multi_crop_loss(
          projections, small_projections, self.temperature, self.hidden_norm)
    return {'contrast_loss': loss,
            **objective.contrastive_metrics(logits_ab, labels)}

  def model_terms(self, batch) -> dict:
    """Weight decay; the supervised head on the evaluation view."""
    values = {'weight_decay': optim.weight_decay_loss(self.optim, self.model)}
    if self.supervised_head_on_eval_view:
      logits = self.model.supervised_head_logits(batch['eval_view'])
      values.update({name: tf.reduce_mean(value) for name, value in
                     supervised_head_terms(batch['label'], logits).items()})
    return values

  def values(self, batch) -> dict:
    """Every term of a batch in one pass over its views (and one over its
    small views), and their sum, `total_loss`: the plain step's values."""
    views, labels = self.views(batch)
    projections, per_image = self.image_pass(tf.concat(views, 0),
                                             tf.concat(labels, 0))
    # Before the small views' pass: the evaluation view reads the moving
    # statistics that the views' pass left.
    model_values = self.model_terms(batch)
    values = {}
    if self.pretrain:
      small_views = batch.get('small_views')
      small_projections = (
          None if small_views is None else
          self.small_view_pass(tf.concat(tf.unstack(small_views, axis=1), 0)))
      values.update(self.batch_terms(projections, small_projections))
    values.update({name: tf.reduce_mean(value)
                   for name, value in per_image.items()})
    values.update(model_values)
    values['total_loss'] = loss(values)
    return values


def supervised_head_terms(labels, logits) -> dict:
  """The supervised head's per-image terms: cross-entropy (in float32)
  and top-1 hits."""
  loss_name, accuracy_name = SUPERVISED_HEAD_TERMS
  return {loss_name: tf.nn.sparse_softmax_cross_entropy_with_logits(
              labels, tf.cast(logits, tf.float32)),
          accuracy_name: objective.top_k_correct(labels, logits, 1)}


def loss(values: dict):
  """The sum of the LOSS_TERMS among `values`, in LOSS_TERMS's order."""
  total = None
  for name in LOSS_TERMS:
    if name in values:
      total = values[name] if total is None else total + values[name]
  return total
