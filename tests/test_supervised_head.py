"""The linear head trained while pretraining (--lineareval_while_pretraining)
learns at its own fraction of the learning rate, so its loss does not rise
while the encoder's features move under it; by default it reads standardised
features of each image's evaluation view."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.inputs import array_source
from simclr_tf.settings import resolver
from simclr_tf.training.task import TrainTask, make_plan

_BATCH = 64


# The SimCLR code's head: the two augmented views, features as they are.
SIMCLR_HEAD = {'lineareval_view': 'pretrain', 'lineareval_standardize': False}


def _task(scale, *, seed=0, learning_rate=0.21, **settings):
  """A pretraining task of the fashion_mnist preset on a fixed toy batch, at
  temperature 0.3. Its learning rate, 0.21 x sqrt(64) = 1.7, is the peak of
  base rate 0.075 at batch 512, where the SimCLR code's head diverged."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (_BATCH, 16, 16, 3), np.uint8)
  labels = rng.integers(0, 10, _BATCH)
  source = array_source.ArraySource(
      'toy', {'train': images, 'test': images[:4]},
      {'train': labels, 'test': labels[:4]}, num_classes=10)
  config = resolver.resolve(
      {'model_dir': 'unused', 'train_batch_size': _BATCH, 'warmup_epochs': 0,
       'train_steps': 100, 'resnet_depth': 18, 'width_multiplier': 0.25,
       'learning_rate': learning_rate, 'temperature': 0.3,
       'lineareval_learning_rate_scale': scale, **settings},
      preset='fashion_mnist', source=source, mixed_precision='float32')
  tf.keras.utils.set_random_seed(seed)
  task = TrainTask(config, tf.distribute.get_strategy(),
                   make_plan(config, _BATCH))
  views = tf.cast(images, tf.float32) / 255.0
  batch = {'view1': views, 'view2': tf.image.flip_left_right(views),
           'label': tf.constant(labels), 'eval_view': views}
  return task, iter(tf.data.Dataset.from_tensors(batch).repeat())


def _head_losses(task, iterator, steps):
  losses = []
  for _ in range(steps):
    task.run_steps(iterator, 1)
    losses.append(task.read_metrics()['supervised_loss'])
    task.reset_metrics()
  return losses


def test_the_optimizer_scales_the_supervised_heads_learning_rate_only():
  task, _ = _task(0.1)
  head = task.model.supervised_variables
  assert head and task.optimizer.learning_rate_scale == 0.1
  assert [id(v) for v in task.optimizer.scaled_variables] == [
      id(v) for v in head]
  # Fine-tuning trains the head at the learning rate of the rest.
  finetune, _ = _task(0.1, train_mode='finetune')
  assert not finetune.optimizer.scaled_variables


@pytest.mark.parametrize('scale,settings,rises', [
    (1.0, SIMCLR_HEAD, True), (0.1, SIMCLR_HEAD, False), (0.1, {}, False)])
def test_the_supervised_heads_loss_does_not_rise_on_a_fixed_batch(
    scale, settings, rises):
  # At the full learning rate (as the SimCLR code trains it) the loss on
  # the very batch it trains on climbs from the first steps.
  losses = _head_losses(*_task(scale, **settings), steps=10)
  assert (max(losses[1:]) > 1.05 * losses[0]) == rises, losses


def test_the_default_head_reads_standardised_features_of_the_eval_view():
  task, iterator = _task(0.1)
  batch = next(iterator)
  model = task.model
  head = model.supervised_head
  assert (task.objective.supervised_head_on_eval_view and
          head.standardize is not None)
  statistics = [v.numpy() for v in model.encoder.variables
                if 'moving' in v.path]
  labels = batch['label'].numpy()

  def by_hand():
    """The encoder in inference mode, the batch's own mean and variance,
    then the dense layer; cross-entropy against the labels."""
    features = np.asarray(
        model(batch['eval_view'], training=False)['final_avg_pool'],
        np.float64)
    standardised = (features - features.mean(0)) / np.sqrt(
        features.var(0) + head.standardize.epsilon)
    kernel, bias = (np.asarray(v, np.float64) for v in
                    (head.linear.dense.kernel, head.linear.dense.bias))
    logits = standardised @ kernel + bias
    logits -= logits.max(1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -log_softmax[np.arange(len(labels)), labels].mean(), features

  expected, features = by_hand()
  loss = task.objective.model_terms(batch)['supervised_loss']
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  # That pass left the encoder's statistics alone and moved the head's.
  assert all(np.array_equal(before, v.numpy()) for before, v in zip(
      statistics, [v for v in model.encoder.variables if 'moving' in v.path]))
  np.testing.assert_allclose(
      head.standardize.moving_mean.numpy(),
      0.1 * features.mean(0), rtol=1e-3, atol=1e-6)
  # The step's supervised loss is that head's on the evaluation view, after
  # the step's training pass over the two views moved the encoder's
  # statistics.
  loss = float(task.objective.values(batch)['supervised_loss'])
  np.testing.assert_allclose(loss, by_hand()[0], rtol=1e-4)


@pytest.mark.parametrize('optimizer', ['lars', 'momentum', 'adam'])
def test_the_scale_is_the_heads_learning_rate(optimizer):
  # One step from the same start: the head moves by `scale` times the
  # full-rate step, its weight decay included, under every optimizer (Adam
  # would undo a loss weight); the encoder moves the same either way.
  moved = {}
  for scale in (1.0, 0.25):
    task, iterator = _task(scale, optimizer=optimizer)
    before = [v.numpy() for v in task.model.trainable_variables]
    task.run_steps(iterator, 1)
    moved[scale] = [v.numpy() - b for v, b in
                    zip(task.model.trainable_variables, before)]
  head = {id(v) for v in task.model.supervised_variables}
  for variable, full, scaled in zip(task.model.trainable_variables,
                                    moved[1.0], moved[0.25]):
    if id(variable) in head:
      np.testing.assert_allclose(scaled, 0.25 * full, rtol=1e-4, atol=1e-7)
    else:
      np.testing.assert_allclose(scaled, full, rtol=1e-4, atol=1e-7)
