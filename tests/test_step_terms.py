"""The training step's objective (simclr_tf/training/terms.py): the plain and
the gradient-cached step evaluate the same named terms, and both still
compute the numbers stored in tests/data/step_terms.npz.

`python -m tests.test_step_terms` records that file again (tests/data/
README.md says when that is right).
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.settings import registry
from simclr_tf.training import terms
from simclr_tf.training.task import Plan, TrainTask

PER_REPLICA = 8
SIZE = 8
_STORED = os.path.join(os.path.dirname(__file__), 'data', 'step_terms.npz')

# Every configuration of the step: plain and cached (chunks of 4 examples:
# batch norm over 2 examples at 1x1 pixels is so ill-conditioned that
# another CPU's rounding moved the update by 79%),
# the supervised head on the views or on the evaluation view, multi-crop,
# fine-tuning.
CASES = {
    'plain_views': dict(lineareval_view='pretrain'),
    'plain_eval_view': dict(lineareval_view='eval'),
    'plain_multi_crop_eval_view': dict(lineareval_view='eval',
                                       small_views=2),
    'cached_views': dict(lineareval_view='pretrain', chunk=4),
    'cached_multi_crop_eval_view': dict(lineareval_view='eval',
                                        small_views=2, chunk=4),
    'finetune': dict(train_mode='finetune'),
}


def _task(train_mode='pretrain', lineareval_view='eval', chunk=0):
  run_config = registry.build({
      'model_dir': 'unused', 'image_size': SIZE, 'resnet_depth': 18,
      'width_multiplier': 0.125, 'cifar_stem': True, 'num_classes': 3,
      'train_batch_size': PER_REPLICA, 'weight_decay': 1e-3,
      'contrastive_chunk_size': chunk, 'temperature': 0.2,
      'lineareval_learning_rate_scale': 0.3, 'optimizer': 'lars',
      'train_mode': train_mode, 'lineareval_view': lineareval_view})
  plan = Plan(num_examples=64, steps_per_epoch=8,
                            total_steps=8, warmup_steps=0, checkpoint_steps=8)
  task = TrainTask(run_config, tf.distribute.get_strategy(),
                                 plan)
  rng = np.random.default_rng(1)
  for variable in task.model.variables:
    variable.assign(rng.normal(0, 0.2, variable.shape).astype(np.float32)
                    if 'moving_variance' not in variable.name else
                    rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
  return task


def _batch(train_mode, small_views=0, view_size=SIZE):
  rng = np.random.default_rng(2)
  images = lambda size=SIZE: rng.random((PER_REPLICA, size, size, 3),
                                        np.float32)
  labels = rng.integers(0, 3, PER_REPLICA)
  if train_mode == 'finetune':
    return {'image': images(), 'label': labels}
  batch = {'view1': images(view_size), 'view2': images(view_size),
           'label': labels, 'eval_view': images()}
  if small_views:
    batch['small_views'] = rng.random(
        (PER_REPLICA, small_views, SIZE // 2, SIZE // 2, 3), np.float32)
  return batch


def _fingerprint(update):
  """Norm, sum and a fixed projection of a variable's update."""
  flat = update.ravel().astype(np.float64)
  direction = np.random.default_rng(flat.size).normal(size=flat.size)
  return np.array([np.linalg.norm(flat), flat.sum(), flat @ direction])


def step_numbers(task, batch):
  """Two traced steps: every metric value of each, and fingerprints of what
  they changed in every variable (weights, moving statistics, optimizer),
  as {name: value} and [variables, 3]."""
  state = task.model.variables + task.optimizer.variables
  before = [v.numpy() for v in state]
  step = tf.function(task.replica_step)
  metrics = {}
  for k in range(2):
    for name, value in step(batch).items():
      metrics[f'{k}/{name}'] = np.float64(value.numpy())
  updates = np.stack([_fingerprint(variable.numpy() - start)
                      for variable, start in zip(state, before)
                      if np.issubdtype(start.dtype, np.floating)])
  return metrics, updates


def case_numbers(name):
  settings = dict(CASES[name])
  small_views = settings.pop('small_views', 0)
  task = _task(**settings)
  return task, step_numbers(task, _batch(task.config.model.train_mode,
                                         small_views))


@pytest.mark.parametrize('name', sorted(CASES))
def test_steps_compute_the_stored_numbers(name):
  stored = np.load(_STORED)
  _, (metrics, updates) = case_numbers(name)
  assert sorted(metrics) == list(stored[f'{name}/metric_names'])
  # The loss is the sum of the loss terms present.
  for step in range(2):
    terms_present = [metrics[f'{step}/{term}'] for term in terms.LOSS_TERMS
                     if f'{step}/{term}' in metrics]
    assert len(terms_present) >= 2
    assert metrics[f'{step}/total_loss'] == pytest.approx(sum(terms_present),
                                                          rel=1e-6)
  # float32 kernels sum in another order on another CPU, and the first
  # update (large random weights, LARS) amplifies that in the second step:
  # between an AMD EPYC (AVX512_BF16) and a Xeon (AMX), or oneDNN's kernels
  # and TensorFlow's own (what CPUs without AVX-512 run), the first step's
  # metrics agree to 1e-5, the second's to 6e-5 and the updates to 3.5e-3
  # of their norm; a changed term moves the first step's own metrics (the
  # terms) and a changed gradient path the updates by tenths.
  names = sorted(metrics)
  expected_metrics = dict(zip(names, stored[f'{name}/metrics']))
  for key in names:
    assert metrics[key] == pytest.approx(
        expected_metrics[key], rel=1e-5 if key.startswith('0/') else 5e-4,
        abs=1e-7), key
  expected = stored[f'{name}/updates']
  scale = expected[:, :1] + 1e-12  # Each variable's update norm.
  np.testing.assert_allclose(updates / scale, expected / scale, atol=1e-2)


# Between them, these meet every term: NT-Xent and the multi-crop loss, the
# supervised head on the views and on the evaluation view (also with views
# smaller than it, --view_size), weight decay.
@pytest.mark.parametrize('lineareval_view, small_views, view_size',
                         [('pretrain', 2, SIZE), ('eval', 0, SIZE),
                          ('eval', 0, SIZE - 2)])
def test_plain_and_cached_steps_evaluate_the_same_terms(lineareval_view,
                                                        small_views,
                                                        view_size):
  # A cached step of one chunk sees the batches a plain step sees: every
  # term and every gradient must agree, though computed the other way
  # (projections first, then the images again against their gradient).
  batch = _batch('pretrain', small_views, view_size)
  results = []
  for chunk in (0, PER_REPLICA):
    task = _task(lineareval_view=lineareval_view)
    task.chunk_size = chunk  # The run's rule never chunks a whole batch.
    gradients, values = tf.function(task.gradients)(batch)
    results.append(({k: float(v) for k, v in values.items()},
                    [g.numpy() for g in gradients]))
  (plain_values, plain_gradients), (cached_values, cached_gradients) = results
  assert set(plain_values) == set(cached_values)
  assert {'contrast_loss', 'supervised_loss', 'weight_decay'} <= set(
      plain_values)
  for name, value in plain_values.items():
    assert cached_values[name] == pytest.approx(value, rel=1e-5), name
  for ours, reference in zip(cached_gradients, plain_gradients):
    scale = max(np.abs(reference).max(), 1e-6)
    np.testing.assert_allclose(ours / scale, reference / scale, atol=2e-5)


def record(path=_STORED):
  arrays = {}
  for name in CASES:
    _, (metrics, updates) = case_numbers(name)
    arrays[f'{name}/metric_names'] = np.array(sorted(metrics))
    arrays[f'{name}/metrics'] = np.array([metrics[k] for k in sorted(metrics)])
    arrays[f'{name}/updates'] = updates
  np.savez_compressed(path, **arrays)
  print(f'{len(CASES)} cases to {path}')


if __name__ == '__main__':
  sys.exit(record(*sys.argv[1:]))
