"""--recompute=blocks against keeping every activation: the same gradients,
the same batch-norm moving averages (moved once per step), and blocks that
do run again in the backward pass."""

import keras
import numpy as np
import tensorflow as tf

from simclr_tf.network import resnet
from simclr_tf.network.speedups import batch_norm
from simclr_tf.settings import registry
from simclr_tf.training.task import Plan, TrainTask
from tests import helpers

GLOBAL_BATCH = 8
SIZE = 12


def _gradients(recompute, precision):
  """Every trainable variable's gradient of one step's loss on one replica,
  and every variable (moving averages included) before and after the
  step's passes, from the same initial weights."""
  config = registry.build({
      'model_dir': 'unused', 'image_size': SIZE, 'resnet_depth': 18,
      'width_multiplier': 0.125, 'cifar_stem': True, 'num_classes': 3,
      'proj_out_dim': 16, 'num_proj_layers': 2,
      'train_batch_size': GLOBAL_BATCH, 'precision': precision,
      'recompute': recompute})
  keras.utils.set_random_seed(0)
  task = TrainTask(config, tf.distribute.get_strategy(),
                   Plan(64, 8, 100, 0, 10))
  for variable in task.model.batch_norm_variables:
    if variable.name == 'gamma':  # Zero-gamma blocks would hide the rest.
      variable.assign(tf.ones_like(variable) * 0.7)
  rng = np.random.default_rng(0)
  batch = {name: tf.constant(rng.uniform(0, 1, (GLOBAL_BATCH, SIZE, SIZE, 3)),
                             tf.float32)
           for name in ('view1', 'view2', 'eval_view')}
  batch['label'] = tf.constant(rng.integers(0, 3, GLOBAL_BATCH))
  before = [v.numpy() for v in task.model.variables]
  gradients = tf.function(lambda b: task.gradients(b)[0])(batch)
  return ([g.numpy() for g in gradients], before,
          [v.numpy() for v in task.model.variables])


def test_recomputed_blocks_give_the_same_step(monkeypatch, cpu_kernels):
  """One replica in bfloat16: the fused batch norm, and the matmul weight
  gradients (network/speedups/weight_gradients.py) inside the recomputed
  blocks. (Statistics over several replicas, Keras' path: below.)"""
  calls = []
  residual = resnet.BasicBlock.residual

  def counted(self, inputs, training):
    calls.append(self.name)
    return residual(self, inputs, training)

  monkeypatch.setattr(resnet.BasicBlock, 'residual', counted)
  kept, initial, kept_variables = _gradients('none', 'bfloat16')
  kept_calls, calls[:] = len(calls), []
  again, _, again_variables = _gradients('blocks', 'bfloat16')
  # Each of the 8 blocks ran once more, for the backward pass of the two
  # views' pass (the evaluation view's pass has none).
  assert len(calls) - kept_calls == 8
  # The same ops on the same inputs: the same gradients, to the bit here.
  for want, got in zip(kept, again):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)
  # The moving averages moved, and moved once: as far as without
  # recomputation (updated again in the backward pass, they were off by
  # up to 0.14 here).
  moved = [not np.array_equal(a, b) for a, b in zip(initial, kept_variables)]
  assert sum(moved) >= 40
  for want, got in zip(kept_variables, again_variables):
    np.testing.assert_array_equal(got, want)


def test_frozen_batch_norm_over_replicas_normalises_alike_and_moves_nothing():
  """Statistics over two replicas (Keras' synchronized path): under
  moving_averages_frozen the same outputs as Keras' own training call,
  with the moving averages where they were."""
  strategy = helpers.cpu_strategy(2)
  with strategy.scope():
    layer = batch_norm.FusedBatchNormalization(synchronized=True,
                                               momentum=0.9)
    layer.build((None, 3, 3, 4))
  rng = np.random.default_rng(0)
  images = rng.normal(2.0, 3.0, (2, 5, 3, 3, 4)).astype(np.float32)
  inputs = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant(images[ctx.replica_id_in_sync_group]))

  def call(x, frozen):
    if frozen:
      with batch_norm.moving_averages_frozen():
        return layer(x, training=True)
    return layer(x, training=True)

  def moving():
    return [v.numpy() for v in (layer.moving_mean, layer.moving_variance)]

  initial = moving()
  frozen = tf.function(lambda x: strategy.run(call, args=(x, True)))(inputs)
  assert all(np.array_equal(a, b) for a, b in zip(moving(), initial))
  plain = tf.function(lambda x: strategy.run(call, args=(x, False)))(inputs)
  for got, want in zip(strategy.experimental_local_results(frozen),
                       strategy.experimental_local_results(plain)):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6,
                               atol=1e-6)
  # The reference: numpy's statistics over both replicas' images.
  mean = images.reshape(-1, 4).mean(0)
  np.testing.assert_allclose(moving()[0], 0.1 * mean, rtol=1e-5)
