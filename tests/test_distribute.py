"""Proofs that training computes the same thing at any scale."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.devices import distribute
from simclr_tf.network.speedups import weight_gradients
from simclr_tf.settings import registry
from simclr_tf.training.task import Plan, TrainTask, build_model
from tests import helpers
from tests.helpers import run

GLOBAL_BATCH = 12
SIZE = 12


def _config(global_bn, precision='float32', optimizer='lars'):
  return registry.build({
      'model_dir': 'unused', 'image_size': SIZE, 'resnet_depth': 18,
      'width_multiplier': 0.125, 'cifar_stem': True, 'global_bn': global_bn,
      'proj_out_dim': 16, 'num_proj_layers': 2, 'num_classes': 3,
      'optimizer': optimizer, 'weight_decay': 1e-4,
      'train_batch_size': GLOBAL_BATCH, 'temperature': 0.5,
      'precision': precision})


def _batch():
  rng = np.random.default_rng(0)
  views = rng.uniform(0, 1, (3, GLOBAL_BATCH, SIZE, SIZE, 3))
  return {'view1': views[0].astype(np.float32),
          'view2': views[1].astype(np.float32),
          'label': rng.integers(0, 3, GLOBAL_BATCH),
          # The supervised head's (standardised over the global batch too).
          'eval_view': views[2].astype(np.float32)}


def _initial_weights(config):
  keras.utils.set_random_seed(0)
  model = build_model(config)
  for v in model.weights:  # Zero-gamma blocks would hide the encoder.
    if v.name == 'gamma':
      v.assign(tf.ones_like(v) * 0.7)
  return [w.numpy() for w in model.weights]


def one_step(replicas, global_bn, precision='float32', optimizer='lars',
             traced=True):
  """One training step on the same global batch split over `replicas`; in
  a tf.function as training runs it, or (`traced=False`) eagerly. The
  metrics are the step's (its forward pass, before the update) with
  'contrast_loss_after': the same batch's loss once the update is applied."""
  config = _config(global_bn, precision, optimizer)
  weights = _initial_weights(config)
  batch = _batch()
  local = GLOBAL_BATCH // replicas
  strategy = helpers.cpu_strategy(replicas)
  task = TrainTask(config, strategy, Plan(64, 8, 100, 0, 10))
  task.model.set_weights(weights)
  values = strategy.experimental_distribute_values_from_function(
      lambda ctx: {k: tf.constant(v[ctx.replica_id_in_sync_group * local:]
                                  [:local]) for k, v in batch.items()})
  step = lambda b: strategy.run(task.replica_step, args=(b,))
  (tf.function(step) if traced else step)(values)
  metrics = task.read_metrics()
  losses = strategy.run(lambda b: task.objective.values(b)['contrast_loss'],
                        args=(values,))
  metrics['contrast_loss_after'] = float(strategy.reduce(
      tf.distribute.ReduceOp.MEAN, losses, axis=None))
  # Every variable (moving statistics included) has a copy on each
  # replica, and the copies are equal (a Keras variable holds the
  # distributed one as its value).
  if replicas > 1:
    copies = [[c.numpy() for c in v.value.values]
              for v in task.model.variables]
    metrics['replicas_in_sync'] = all(
        len(c) == replicas and all(np.array_equal(x, c[0]) for x in c)
        for c in copies)
  return metrics, weights, [w.numpy() for w in task.model.weights]


@pytest.fixture(scope='module')
def single():
  return one_step(1, global_bn=True)


@pytest.mark.parametrize('replicas', [2, 3])
def test_one_step_is_the_same_on_1_2_and_3_replicas(single, replicas):
  reference, initial, expected = single
  results, _, weights = one_step(replicas, global_bn=True)
  assert results['replicas_in_sync']
  for name in ('total_loss', 'contrast_loss', 'contrast_acc',
               'contrast_entropy', 'supervised_loss', 'supervised_acc'):
    assert results[name] == pytest.approx(reference[name], rel=1e-4), name
  moved = 0
  for before, want, got in zip(initial, expected, weights):
    # Relative 1e-4 per variable (elementwise, a weight that the update
    # moved to near zero would compare float32 rounding noise).
    assert np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want) + 1e-9
    update, want_update = got - before, want - before
    if np.abs(want_update).max() > 0:
      moved += 1
      assert (np.linalg.norm(update - want_update) <=
              1e-3 * np.linalg.norm(want_update) + 1e-9)
  assert moved > len(initial) // 2


def test_bfloat16_cpu_kernels_train_the_same_under_mirrored_strategy(
    monkeypatch, cpu_kernels):
  """The bfloat16 CPU kernels (matmul weight gradients) in a step on 2
  replicas, against the same step with TensorFlow's own kernels.
  (One replica against two differs in bfloat16 by itself: the batch norm
  statistics are synchronised in another order.)"""
  calls = []
  applies = weight_gradients.applies
  monkeypatch.setattr(weight_gradients, 'applies',
                      lambda *a: calls.append(a) or applies(*a))
  # Momentum: LARS would hide a gradient's scale.
  ours, initial, expected = one_step(2, True, 'bfloat16', 'momentum')
  assert sum(applies(*a) for a in calls) >= 4  # Block groups 3 and 4.
  monkeypatch.setattr(weight_gradients, 'applies', lambda *a: False)
  # The reference eagerly: tracing it for each replica cost as much as the
  # step under test.
  theirs, _, weights = one_step(2, True, 'bfloat16', 'momentum',
                                traced=False)
  # The losses of the step's own forward pass, and (what the weight
  # gradients decide) the loss once its update is applied: the updates
  # agree to bfloat16's precision (within 0.4% on a Xeon with AMX, whose
  # own kernels accumulate in another order; within 1.0% with TensorFlow's
  # own bfloat16 kernels, what CPUs without AVX-512 run), the loss after
  # them to 0.3%.
  for name in ('contrast_loss', 'supervised_loss'):
    assert ours[name] == pytest.approx(theirs[name], rel=1e-3), name
  assert ours['contrast_loss_after'] == pytest.approx(
      theirs['contrast_loss_after'], rel=1e-2)
  assert abs(ours['contrast_loss_after'] - ours['contrast_loss']) > 1e-2
  for before, want, got in zip(initial, weights, expected):
    update, want_update = got - before, want - before
    assert (np.linalg.norm(update - want_update) <=
            2e-2 * np.linalg.norm(want_update) + 1e-9)


def test_without_global_bn_replicas_see_different_statistics(single):
  reference, _, _ = single
  results, _, _ = one_step(2, global_bn=False)
  assert abs(results['contrast_loss'] - reference['contrast_loss']) > 1e-3


def test_batch_not_divisible_by_replicas_fails_before_work(tmp_path, rng):
  root = helpers.make_class_folder(str(tmp_path / 'd'), rng, per_class=4)
  result = run('--mode=train', f'--dataset=folder:{root}',
               '--cpu_replicas=3', '--train_batch_size=8',
               f'--model_dir={tmp_path}/m')
  assert result.returncode == 2
  assert ('run.py: error: --train_batch_size=8 is not divisible by the 3 '
          'replicas; use a multiple of 3.') in result.stderr
  assert not os.path.exists(tmp_path / 'm')


def test_run_py_trains_on_two_cpu_replicas(tmp_path, rng):
  root = helpers.make_class_folder(str(tmp_path / 'd'), rng,
                                   classes=('a', 'b'), per_class=8,
                                   size=(16, 16))
  result = run('--mode=train_then_eval', f'--dataset=folder:{root}',
               '--cpu_replicas=2', '--image_size=16', '--resnet_depth=18',
               '--width_multiplier=0.125', '--train_batch_size=8',
               '--eval_batch_size=4', '--train_steps=3', '--knn_k=3',
               '--export_formats=none', f'--model_dir={tmp_path}/m')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'MirroredStrategy over 2 logical CPU devices' in result.stderr
  outcome = json.load(open(tmp_path / 'm' / 'result.json'))
  assert outcome['global_step'] == 3 and outcome['num_eval_examples'] == 2


@pytest.mark.parametrize('reduce', ['ours', 'tensorflow'])
def test_cross_replica_sum_and_its_gradient(reduce):
  """distribute.cross_replica_sum against numpy (and TensorFlow's own
  all-reduce, which it replaces for speed of tracing): every replica gets
  the sum; replica r's input gets the sum over replicas of the gradients
  flowing into the output."""
  replicas = 3
  strategy = helpers.cpu_strategy(replicas)
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(replicas, 2, 3)).astype(np.float32)
  upstream = rng.normal(size=(replicas, 2, 3)).astype(np.float32)
  summed = (distribute.cross_replica_sum if reduce == 'ours' else
            lambda x: tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, x))

  def step(x, w):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = summed(x * 2.0)
      loss = tf.reduce_sum(y * w)
    return y, tape.gradient(loss, x)

  per_replica = lambda array: strategy.experimental_distribute_values_from_function(  # pylint: disable=g-long-lambda
      lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group]))
  ys, grads = tf.function(lambda x, w: strategy.run(step, args=(x, w)))(
      per_replica(inputs), per_replica(upstream))
  for r, (y, grad) in enumerate(zip(strategy.experimental_local_results(ys),
                                    strategy.experimental_local_results(
                                        grads))):
    np.testing.assert_allclose(y.numpy(), 2.0 * inputs.sum(0), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), 2.0 * upstream.sum(0),
                               rtol=1e-6, err_msg=f'replica {r}')
