"""Gradient caching (--contrastive_chunk_size) against a direct computation.

The reference differentiates, in one pass with every activation kept, the
same loss with batch norm over the same chunks (the contract stated in
simclr_tf/training/gradient_cache.py): each chunk through the model in
training mode, the projections assembled into the batch, contrastive and
supervised losses on the whole batch.
"""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.settings import registry
from simclr_tf.training import gradient_cache
from simclr_tf.training import objective
from simclr_tf.training import optim
from simclr_tf.training.task import Plan, TrainTask
from tests import helpers

PER_REPLICA = 8
CHUNK = 2
SIZE = 8


def test_chunks_are_plain_batches_and_unchunk_inverts_them():
  view1 = np.arange(6)[:, None] * np.ones([1, 3])
  view2 = -view1
  chunks = gradient_cache.chunk([view1, view2], 2).numpy()
  assert chunks.shape == (3, 4, 3)
  for k in range(3):  # Examples 2k, 2k+1 of view 1, then of view 2.
    np.testing.assert_array_equal(
        chunks[k], np.concatenate([view1[2 * k:2 * k + 2],
                                   view2[2 * k:2 * k + 2]]))
  np.testing.assert_array_equal(gradient_cache.unchunk(chunks),
                                np.concatenate([view1, view2]))
  # Any number of views: view-major again after the round trip.
  views = [view1, view2, 10 + view1, 20 + view1]
  chunks = gradient_cache.chunk(views, 3).numpy()
  assert chunks.shape == (2, 12, 3)
  np.testing.assert_array_equal(chunks[1, 3:6], view2[3:6])
  np.testing.assert_array_equal(gradient_cache.unchunk(chunks, 4),
                                np.concatenate(views))


def _task(strategy, chunk=CHUNK, **settings):
  replicas = strategy.num_replicas_in_sync
  config = registry.build({
      'model_dir': 'unused', 'image_size': SIZE, 'resnet_depth': 18,
      'width_multiplier': 0.125, 'cifar_stem': True, 'num_classes': 3,
      'train_batch_size': PER_REPLICA * replicas, 'weight_decay': 1e-3,
      'contrastive_chunk_size': chunk, 'temperature': 0.2,
      'lineareval_learning_rate_scale': 0.3, **settings})
  plan = Plan(num_examples=64, steps_per_epoch=8, total_steps=8,
              warmup_steps=0, checkpoint_steps=8)
  task = TrainTask(config, strategy, plan)
  # Batch-norm scales away from zero, so that every branch has gradients.
  rng = np.random.default_rng(1)
  for variable in task.model.batch_norm_variables:
    variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
  return task


def _batch(seed, small_views=0):
  rng = np.random.default_rng(seed)
  batch = {'view1': rng.random((PER_REPLICA, SIZE, SIZE, 3), np.float32),
           'view2': rng.random((PER_REPLICA, SIZE, SIZE, 3), np.float32),
           'label': rng.integers(0, 3, PER_REPLICA),
           'eval_view': rng.random((PER_REPLICA, SIZE, SIZE, 3), np.float32)}
  if small_views:  # Multi-crop: views of half the side.
    batch['small_views'] = rng.random(
        (PER_REPLICA, small_views, SIZE // 2, SIZE // 2, 3), np.float32)
  return batch


def _direct_gradients(task, batch):
  """The reference: one tape over every chunk's forward pass."""
  model = task.model
  replicas = task.strategy.num_replicas_in_sync
  images = gradient_cache.chunk([batch['view1'], batch['view2']],
                                task.chunk_size)
  labels = gradient_cache.chunk([batch['label'], batch['label']],
                                task.chunk_size)
  small = (tf.unstack(batch['small_views'], axis=1)
           if 'small_views' in batch else [])
  # Each chunk's small views go through the model apart (their own batch
  # norm), right after the chunk's two views.
  small_images = gradient_cache.chunk(small, task.chunk_size) if small else None
  on_eval_view = task.objective.supervised_head_on_eval_view
  with tf.GradientTape() as tape:
    outputs, small_outputs = [], []
    for k in range(images.shape[0]):
      outputs.append(model(images[k], training=True,
                           supervised=not on_eval_view))
      if small:
        small_outputs.append(model(small_images[k], training=True,
                                   supervised=False))
    projections = gradient_cache.unchunk(
        tf.stack([o['proj_head_output'] for o in outputs]))
    if on_eval_view:  # The supervised head after the chunks, on the eval view.
      logits = model.supervised_head_logits(batch['eval_view'])
      labels = batch['label']
    else:
      logits = gradient_cache.unchunk(tf.stack([o['logits_sup']
                                                for o in outputs]))
      labels = gradient_cache.unchunk(labels)
    if small:  # Crop-major over the batch, as the multi-crop loss takes them.
      small_projections = gradient_cache.unchunk(
          tf.stack([o['proj_head_output'] for o in small_outputs]), len(small))
      contrast, _, _ = objective.multi_crop_loss(projections,
                                                 small_projections, 0.2)
    else:
      contrast, _, _ = objective.contrastive_loss(projections, 0.2)
    supervised = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    decay = optim.weight_decay_loss(task.config.optim, model)
    # The supervised head's learning-rate scale is the optimizer's, not the
    # loss's.
    total = contrast + supervised + decay
    replica_share = total / replicas
  variables = model.trainable_variables
  gradients = tape.gradient(replica_share, variables)
  accuracy = tf.reduce_mean(objective.top_k_correct(labels, logits, 1))
  return gradients, {'total_loss': total, 'contrast_loss': contrast,
                     'supervised_loss': supervised, 'supervised_acc': accuracy}


# Chunks in a graph loop, and unrolled in Python (as with batch norm
# synchronised across MirroredStrategy replicas); on two replicas the
# negatives come from both. (Two replicas with synchronised batch norm pass
# too, but tracing them takes minutes here.)
# With small views (multi-crop), their chunks go through the model apart.
# The supervised head learns from the two views' chunks ('pretrain') or, after
# them, from the evaluation view ('eval'). Three cases meet each choice and
# the pairs that interact (the replicas' negatives with multi-crop, the head
# on the evaluation view with the loop and with unrolled chunks).
@pytest.mark.parametrize('replicas, unroll, small_views, head_view',
                         [(1, False, 0, 'pretrain'), (1, True, 0, 'eval'),
                          (2, False, 2, 'eval')])
def test_cached_gradients_equal_the_direct_one_pass_gradients(
    replicas, unroll, small_views, head_view):
  strategy = (helpers.cpu_strategy(2) if replicas == 2
              else tf.distribute.get_strategy())
  settings = {'lineareval_view': head_view}
  task = (_task(strategy, global_bn=False, **settings) if replicas > 1
          else _task(strategy, **settings))
  task.unroll_chunks = unroll
  model = task.model
  batches = [_batch(seed, small_views) for seed in range(replicas)]
  start = [v.numpy() for v in model.variables]
  start_statistics = [v.numpy() for v in model.batch_norm_statistics]

  def run(fn, traced):
    for variable, value in zip(model.variables, start):
      variable.assign(value)
    values = strategy.experimental_distribute_values_from_function(
        lambda context: batches[context.replica_id_in_sync_group])
    replicated = lambda v: strategy.run(fn, args=(v,))
    results = (tf.function(replicated) if traced else replicated)(values)
    outputs = [tf.nest.map_structure(
        lambda x, r=r: x.values[r] if hasattr(x, 'values') else x, results)
               for r in range(replicas)]
    statistics = [v.numpy() for v in model.batch_norm_statistics]
    return outputs, statistics

  # On two replicas the reference runs eagerly (tracing it for each replica
  # took most of the test's time). On one it is traced like the step: the
  # supervised head standardises features of nearly equal examples, which
  # magnifies the rounding of graph-fused against eager kernels to ~1e-4.
  cached, cached_statistics = run(task.gradients, traced=True)
  direct, direct_statistics = run(lambda b: _direct_gradients(task, b),
                                  traced=replicas == 1)
  for replica in range(replicas):
    (cached_grads, cached_values), (direct_grads, direct_values) = (
        cached[replica], direct[replica])
    assert len(cached_grads) == len(direct_grads)
    for ours, reference in zip(cached_grads, direct_grads):
      scale = max(np.abs(reference.numpy()).max(), 1e-6)
      np.testing.assert_allclose(ours.numpy() / scale,
                                 reference.numpy() / scale, atol=2e-5)
    for name, value in direct_values.items():
      np.testing.assert_allclose(cached_values[name], value, rtol=1e-5)
  # Moving statistics: updated once per chunk (the second pass only), as
  # the direct pass updates them.
  for ours, reference in zip(cached_statistics, direct_statistics):
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
  assert all(not np.array_equal(before, after) for before, after in zip(
      start_statistics, cached_statistics))


def test_a_cached_step_makes_the_direct_steps_update():
  task = _task(tf.distribute.get_strategy(), optimizer='lars')
  model = task.model
  state = model.variables + task.optimizer.variables
  start = [v.numpy() for v in state]
  batch = _batch(3)

  def step(gradient_fn):
    for variable, value in zip(state, start):
      variable.assign(value)
    for _ in range(2):  # Momentum makes the second step depend on the first.
      gradients, _ = gradient_fn(batch)
      task.optimizer.apply(gradients, model.trainable_variables)
    return [v.numpy() for v in model.variables]

  cached = step(tf.function(task.gradients))
  direct = step(tf.function(lambda b: _direct_gradients(task, b)))
  for ours, reference in zip(cached, direct):
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)


def test_chunking_applies_only_to_pretraining_with_smaller_chunks():
  strategy = tf.distribute.get_strategy()
  assert _task(strategy).chunk_size == CHUNK
  assert _task(strategy, contrastive_chunk_size=0).chunk_size == 0
  assert _task(strategy, contrastive_chunk_size=PER_REPLICA).chunk_size == 0
  assert _task(strategy, train_mode='finetune').chunk_size == 0


def test_a_plain_multi_crop_step_takes_the_small_views_loss():
  # Without chunks: the two views in one pass, the small views in another,
  # the multi-crop loss of their projections; the supervised head on the two.
  task = _task(tf.distribute.get_strategy(), contrastive_chunk_size=0,
               lineareval_view='pretrain')
  batch = _batch(5, small_views=2)
  model = task.model
  large = model(tf.concat([batch['view1'], batch['view2']], 0),
                training=True)
  small = model(tf.concat(tf.unstack(batch['small_views'], axis=1), 0),
                training=True)
  expected, _, _ = objective.multi_crop_loss(
      large['proj_head_output'], small['proj_head_output'], 0.2)
  values = task.objective.values(batch)
  np.testing.assert_allclose(values['contrast_loss'], expected, rtol=1e-6)
  two_views = task.objective.values({k: v for k, v in batch.items()
                                     if k != 'small_views'})
  assert float(two_views['contrast_loss']) != float(values['contrast_loss'])
  np.testing.assert_allclose(two_views['supervised_loss'],
                             values['supervised_loss'], rtol=1e-6)
  # The small views leave the supervised head's statistics alone.
  head_statistics = model.supervised_head.standardize.moving_mean
  before = head_statistics.numpy()
  task.objective.small_view_pass(
      tf.concat(tf.unstack(batch['small_views'], axis=1), 0))
  np.testing.assert_array_equal(head_statistics.numpy(), before)


def test_a_cached_step_under_xla_and_float16_loss_scaling():
  # The same first step in float32 without XLA is the reference.
  settings = dict(jit_compile=True, precision='float16')
  batch = _batch(4)
  losses, updates, weights = [], [], None
  for options in ({}, settings):
    task = _task(tf.distribute.get_strategy(), **options)
    if weights is None:
      weights = task.model.get_weights()
    task.model.set_weights(weights)
    # The reference eagerly, the step under test as training traces it.
    step = tf.function(task.replica_step) if options else task.replica_step
    values = step(batch)
    losses.append({k: float(v) for k, v in values.items()})
    assert all(np.isfinite(v) for v in losses[-1].values())
    updates.append(np.concatenate([
        (after - before).ravel() for after, before in
        zip(task.model.get_weights(), weights)]))
  tolerance = 3e-2  # float16 compute.
  for name, value in losses[0].items():
    # An accuracy counts predictions: float16 may flip one of the batch's
    # near-tied ones (the heads start near zero), which moves it by 1/8.
    absolute = 1 / PER_REPLICA if name.endswith('_acc') else tolerance
    assert losses[1][name] == pytest.approx(value, rel=tolerance,
                                            abs=absolute), name
  # The loss-scaled gradients, unscaled, make the float32 update.
  assert np.linalg.norm(updates[1] - updates[0]) < 0.1 * np.linalg.norm(
      updates[0])
