"""LARS, weight decay and the schedule against numpy and the formulas."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import OptimConfig
from simclr_tf.settings import registry
from simclr_tf.training import optim
from simclr_tf.training.task import make_plan
from tests import helpers


def lars_numpy(weights, grads_per_step, lr, momentum, weight_decay, eeta,
               decay, adapt):
  """Independent LARS: one array per variable, flags per variable."""
  weights = [w.astype(np.float64).copy() for w in weights]
  velocity = [np.zeros_like(w) for w in weights]
  for grads in grads_per_step:
    for i, (w, g) in enumerate(zip(weights, grads)):
      g = g + weight_decay * w if decay[i] else g
      trust = 1.0
      if adapt[i]:
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        trust = eeta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
      velocity[i] = momentum * velocity[i] + lr * trust * g
      weights[i] = w - velocity[i]
  return weights


class _ToyModel(keras.Model):
  """Dense -> batch norm -> a supervised head, with the variable groups
  that SimCLRModel exposes."""

  def __init__(self):
    super().__init__(name='toy')
    self.dense = keras.layers.Dense(4, name='dense')
    self.bn = keras.layers.BatchNormalization(name='bn')
    self.head = keras.layers.Dense(2, name='head_supervised')

  def call(self, x, training=None):
    return self.head(self.bn(self.dense(x), training=training))

  @property
  def supervised_variables(self):
    return self.head.trainable_variables

  @property
  def batch_norm_variables(self):
    return self.bn.trainable_variables


def _toy_model():
  model = _ToyModel()
  model(tf.zeros([1, 3]))
  return model


def _toy_loss(model, x, training=True):
  return tf.reduce_mean(tf.square(model(x, training=training) - 1.0))


@pytest.mark.parametrize('steps', [1, 4])
def test_lars_matches_numpy(steps, rng):
  model = _toy_model()
  x = tf.constant(rng.normal(size=(8, 3)), tf.float32)
  optimizer = optim.LARS(0.5, momentum=0.9, weight_decay=0.01, eeta=0.002,
                         exclude_from_weight_decay=model.supervised_variables)
  variables = model.trainable_variables
  optimizer.build(variables)
  initial = [v.numpy() for v in variables]
  grads_per_step = []
  for _ in range(steps):
    with tf.GradientTape() as tape:
      loss = _toy_loss(model, x)
    grads = tape.gradient(loss, variables)
    grads_per_step.append([g.numpy().astype(np.float64) for g in grads])
    optimizer.apply(grads, variables)
  # Which variables decay / adapt, decided here by hand from the model:
  # only the first dense kernel does; biases, BN and the head do not.
  names = [v.path.removeprefix('toy/') for v in variables]
  assert names == ['dense/kernel', 'dense/bias', 'bn/gamma', 'bn/beta',
                   'head_supervised/kernel', 'head_supervised/bias']
  flags = [True, False, False, False, False, False]
  expected = lars_numpy(initial, grads_per_step, 0.5, 0.9, 0.01, 0.002,
                        flags, flags)
  for variable, want in zip(variables, expected):
    np.testing.assert_allclose(variable.numpy(), want, rtol=2e-5, atol=1e-6)


def test_lars_trust_ratio_is_one_for_zero_norms():
  variable = keras.Variable(np.zeros((2, 2), np.float32), name='kernel')
  optimizer = optim.LARS(0.1, momentum=0.0, eeta=0.001)
  optimizer.build([variable])
  optimizer.apply([tf.ones((2, 2))], [variable])
  # |w| = 0: the full learning rate applies, not eeta * 0.
  np.testing.assert_allclose(variable.numpy(), -0.1 * np.ones((2, 2)))
  optimizer.apply([tf.zeros((2, 2))], [variable])  # |g| = 0: no NaN.
  assert np.isfinite(variable.numpy()).all()


def test_lars_step_is_identical_under_mirrored_strategy(rng):
  x = rng.normal(size=(8, 3)).astype(np.float32)
  keras.utils.set_random_seed(1)
  single = _toy_model()
  keras.utils.set_random_seed(1)
  strategy = helpers.cpu_strategy(2)
  with strategy.scope():
    mirrored = _toy_model()
    mirrored_opt = optim.LARS(1.0, weight_decay=1e-3)
    mirrored_opt.build(mirrored.trainable_variables)
  single_opt = optim.LARS(1.0, weight_decay=1e-3)
  single_opt.build(single.trainable_variables)

  with tf.GradientTape() as tape:
    # Inference-mode BN so the two set-ups see identical statistics.
    loss = _toy_loss(single, tf.constant(x), training=False)
  single_opt.apply(tape.gradient(loss, single.trainable_variables),
                   single.trainable_variables)

  halves = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant(x[ctx.replica_id_in_sync_group * 4:][:4]))

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      loss = _toy_loss(mirrored, batch, training=False) / 2
    grads = tape.gradient(loss, mirrored.trainable_variables)
    mirrored_opt.apply(grads, mirrored.trainable_variables)

  strategy.run(step, args=(halves,))
  for a, b in zip(single.trainable_variables, mirrored.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_weight_decay_loss_per_optimizer(rng):
  model = _toy_model()
  model(tf.zeros([1, 3]))
  for v in model.trainable_variables:
    v.assign(rng.normal(size=v.shape).astype(np.float32))
  values = {v.path.removeprefix('toy/'): v.numpy()
            for v in model.trainable_variables}

  def l2(*paths):
    return sum(0.5 * np.sum(values[p] ** 2) for p in paths)

  lars = optim.weight_decay_loss(OptimConfig(optimizer='lars',
                                             weight_decay=0.1), model)
  assert abs(float(lars) - 0.1 * l2('head_supervised/kernel')) < 1e-5
  momentum = optim.weight_decay_loss(
      OptimConfig(optimizer='momentum', weight_decay=0.1), model)
  assert abs(float(momentum) - 0.1 * l2(
      'dense/kernel', 'dense/bias', 'head_supervised/kernel',
      'head_supervised/bias')) < 1e-5


def test_build_optimizer_kinds():
  lr, model = 0.1, _toy_model()
  lars = optim.build_optimizer(OptimConfig(), lr, model)
  assert isinstance(lars, optim.LARS)
  # The supervised head is excluded from LARS's decay by object, not name.
  assert lars.exclude_from_weight_decay_names == model.supervised_variables
  sgd = optim.build_optimizer(OptimConfig(optimizer='momentum'), lr, model)
  assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov
  assert isinstance(optim.build_optimizer(OptimConfig(optimizer='adam'), lr,
                                          model), keras.optimizers.Adam)


def _numpy_step(name, weights, grads, state, lr, momentum, eeta, adapt):
  """One update of `name` ('lars', 'momentum': Keras' Nesterov SGD, 'adam':
  Keras' defaults) in numpy, one learning rate per variable in `lr`."""
  state['t'] = state.get('t', 0) + 1
  out = []
  for i, (w, g) in enumerate(zip(weights, grads)):
    if name == 'lars':
      v = state.get(('v', i), 0.0)
      trust = 1.0
      if adapt[i]:
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        trust = eeta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
      state[('v', i)] = momentum * v + lr[i] * trust * g
      out.append(w - state[('v', i)])
    elif name == 'momentum':
      v = state.get(('v', i), 0.0)
      state[('v', i)] = momentum * v - lr[i] * g
      out.append(w + momentum * state[('v', i)] - lr[i] * g)
    else:
      t, (b1, b2, eps) = state['t'], (0.9, 0.999, 1e-7)
      m = state[('m', i)] = b1 * state.get(('m', i), 0) + (1 - b1) * g
      v = state[('s', i)] = b2 * state.get(('s', i), 0) + (1 - b2) * g * g
      alpha = lr[i] * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
      out.append(w - alpha * m / (np.sqrt(v) + eps))
  return out


@pytest.mark.parametrize('name', ['lars', 'momentum', 'adam'])
def test_the_supervised_head_learns_at_its_scale_of_the_learning_rate(
    name, rng):
  """--lineareval_learning_rate_scale: the head's whole step (its weight
  decay included) at 0.1 x the learning rate, for every optimizer, over
  three steps, against numpy updates from the data loss's gradients plus
  the weight decay's, worked out here by hand."""
  config = OptimConfig(optimizer=name, weight_decay=0.01, eeta=0.002)
  model = _toy_model()
  x = tf.constant(rng.normal(size=(8, 3)), tf.float32)
  optimizer = optim.build_optimizer(config, 0.05, model,
                                    model.supervised_variables, 0.1)
  variables = model.trainable_variables
  optimizer.build(variables)
  names = [v.path.removeprefix('toy/') for v in variables]
  head = [n.startswith('head_supervised') for n in names]
  kernel = [n.endswith('kernel') for n in names]
  batch_norm = [n.startswith('bn/') for n in names]
  # The decay of the loss: LARS's on the head's kernel (LARS decays the
  # others itself); the others' on all but batch norm.
  loss_decay = ([h and k for h, k in zip(head, kernel)] if name == 'lars'
                else [not b for b in batch_norm])
  lr = [0.05 * (0.1 if h else 1.0) for h in head]
  expected, state = [v.numpy().astype(np.float64) for v in variables], {}
  for _ in range(3):
    with tf.GradientTape() as tape:
      data_loss = _toy_loss(model, x)
      loss = data_loss + optim.weight_decay_loss(config, model)
    with tf.GradientTape() as data_tape:
      data_loss = _toy_loss(model, x)
    data_grads = data_tape.gradient(data_loss, variables)
    optimizer.apply(tape.gradient(loss, variables), variables)
    grads = [g.numpy() + (0.01 * w if d else 0.0) for g, w, d in
             zip(data_grads, expected, loss_decay)]
    if name == 'lars':  # LARS's own decay, on the encoder's kernel.
      grads = [g + (0.01 * w if k and not h else 0.0)
               for g, w, k, h in zip(grads, expected, kernel, head)]
    expected = _numpy_step(name, expected, grads, state, lr, 0.9, 0.002,
                           [k and not h for k, h in zip(kernel, head)])
  for variable, want in zip(variables, expected):
    np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-6,
                               err_msg=variable.path)


@pytest.mark.parametrize('scaling,expected', [('linear', 0.3 * 512 / 256),
                                              ('sqrt', 0.3 * math.sqrt(512))])
def test_learning_rate_scaling(scaling, expected):
  config = OptimConfig(learning_rate=0.3, learning_rate_scaling=scaling)
  assert abs(optim.scaled_learning_rate(config, 512) - expected) < 1e-12


def test_schedule_is_linear_warmup_then_cosine():
  config = OptimConfig(learning_rate=1.0, learning_rate_scaling='linear')
  schedule = optim.learning_rate_schedule(config, 256, total_steps=100,
                                          warmup_steps=10)

  def formula(step):
    if step < 10:
      return step / 10
    return 0.5 * (1 + math.cos(math.pi * (step - 10) / 90))

  for step in [0, 1, 5, 9, 10, 11, 40, 55, 99, 100, 150]:
    assert abs(float(schedule(step)) - formula(min(step, 100))) < 1e-6


def test_schedule_without_warmup_starts_at_the_peak():
  schedule = optim.learning_rate_schedule(OptimConfig(learning_rate=0.5), 256,
                                          total_steps=10, warmup_steps=0)
  assert abs(float(schedule(0)) - 0.5) < 1e-7
  assert abs(float(schedule(10))) < 1e-7


@pytest.mark.parametrize('epochs,summary_steps,expected_total,expected_every', [
    (3, 0, 352, 7),  # Three epochs at batch 512: 50 points, not 4.
    (18, 0, 2110, 42),
    (100, 0, 11719, 100),  # A long run: every 100 steps.
    (0.1, 0, 12, 1),
    (3, 25, 352, 25),  # Given: kept.
])
def test_a_plan_summarises_often_enough_to_draw_its_curves(
    epochs, summary_steps, expected_total, expected_every):
  config = registry.build({'model_dir': 'unused', 'image_size': 28,
                           'train_batch_size': 512,
                           'train_epochs': epochs,
                           'summary_steps': summary_steps})
  plan = make_plan(config, 60_000)
  assert plan.total_steps == expected_total
  assert plan.summary_steps == expected_every
