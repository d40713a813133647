"""Fused batch norm, mixed precision, loss scaling and XLA."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.devices import precision
from simclr_tf.network.layers import BATCH_NORM_EPSILON
from simclr_tf.network.speedups import weight_gradients
from simclr_tf.network.speedups.batch_norm import FusedBatchNormalization
from simclr_tf.serving import export
from simclr_tf.settings import registry
from simclr_tf.storage import checkpoints
from simclr_tf.training import objective
from simclr_tf.training.task import Plan, TrainTask, build_model
from tests import helpers
from tests.helpers import run


def _run_config(model_dir='/tmp/unused', **settings):
  return registry.build({
      'model_dir': model_dir, 'image_size': 16, 'resnet_depth': 18,
      'width_multiplier': 0.125, 'cifar_stem': True, 'num_classes': 3,
      'warmup_epochs': 0, 'train_batch_size': 8, 'temperature': 0.5,
      **settings})


def _numpy_batch_norm(x, gamma, beta, eps):
  axes = tuple(range(x.ndim - 1))
  mean, var = x.mean(axes), x.var(axes)
  return gamma * (x - mean) / np.sqrt(var + eps) + beta, mean, var


@pytest.mark.parametrize('shape,center', [((6, 5, 4, 3), True),
                                          ((10, 7), True), ((10, 7), False)])
def test_fused_batch_norm_matches_numpy_and_keras(shape, center, rng):
  x = rng.normal(2.0, 3.0, shape).astype(np.float32)
  channels = shape[-1]
  layers = []
  for cls in (FusedBatchNormalization, keras.layers.BatchNormalization):
    layer = cls(momentum=0.9, epsilon=BATCH_NORM_EPSILON, center=center)
    layer.build(shape)
    layer.gamma.assign(rng.normal(1, 0.2, channels).astype(np.float32))
    if center:
      layer.beta.assign(rng.normal(0, 0.2, channels).astype(np.float32))
    layers.append(layer)
  layers[1].set_weights(layers[0].get_weights())
  gamma = layers[0].gamma.numpy()
  beta = layers[0].beta.numpy() if center else 0.0
  expected, mean, var = _numpy_batch_norm(x.astype(np.float64), gamma, beta,
                                          BATCH_NORM_EPSILON)
  upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
  gradients = []
  for layer in layers:
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      y = layer(inputs, training=True)
      loss = tf.reduce_sum(y * upstream)
    gradients.append(tape.gradient(loss, [inputs, *layer.trainable_weights]))
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4)
    # Moving statistics use the biased batch variance, as Keras does.
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean,
                               rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               0.9 + 0.1 * var, rtol=1e-5)
  for fused, reference in zip(*gradients):
    np.testing.assert_allclose(fused.numpy(), reference.numpy(), rtol=1e-3,
                               atol=1e-4)
  # Inference uses the moving statistics (Keras' own path).
  np.testing.assert_allclose(layers[0](x, training=False).numpy(),
                             layers[1](x, training=False).numpy(), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize('shape,center,dtype', [
    ((6, 5, 4, 3), True, 'float32'), ((10, 7), False, 'float32'),
    ((6, 5, 4, 3), True, 'bfloat16')])
def test_fused_batch_norm_inference_uses_the_moving_statistics(
    shape, center, dtype, rng):
  """Inference (and a frozen layer in training) runs the fused kernel on the
  moving statistics: numpy's (x - mean) / sqrt(var + eps) * gamma + beta."""
  channels = shape[-1]
  layer = FusedBatchNormalization(
      momentum=0.9, epsilon=BATCH_NORM_EPSILON, center=center,
      dtype='mixed_bfloat16' if dtype == 'bfloat16' else 'float32')
  layer.build(shape)
  gamma = rng.normal(1, 0.2, channels).astype(np.float32)
  beta = rng.normal(0, 0.2, channels).astype(np.float32) if center else 0.0
  mean = rng.normal(0, 2, channels).astype(np.float32)
  var = rng.uniform(0.5, 3, channels).astype(np.float32)
  layer.gamma.assign(gamma)
  if center:
    layer.beta.assign(beta)
  layer.moving_mean.assign(mean)
  layer.moving_variance.assign(var)
  x = rng.normal(1.0, 2.0, shape).astype(np.float32)
  inputs = tf.cast(x, dtype)
  expected = ((inputs.numpy().astype(np.float64) - mean) /
              np.sqrt(var + BATCH_NORM_EPSILON) * gamma + beta)
  tolerance = 1e-5 if dtype == 'float32' else 2e-2
  outputs = layer(inputs, training=False)
  assert outputs.dtype == dtype
  np.testing.assert_allclose(tf.cast(outputs, tf.float32).numpy(), expected,
                             rtol=tolerance, atol=tolerance)
  layer.trainable = False
  frozen = layer(inputs, training=True)
  np.testing.assert_array_equal(frozen.numpy(), outputs.numpy())
  np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)


@pytest.mark.parametrize('device,capability,cpu_bfloat16,expected', [
    ('CPU', None, False, 'float32'), ('CPU', None, True, 'bfloat16'),
    ('TPU', None, False, 'bfloat16'),
    ('GPU', (9, 0), False, 'bfloat16'), ('GPU', (8, 0), False, 'bfloat16'),
    ('GPU', (7, 0), False, 'float16'), ('GPU', (6, 1), True, 'float32')])
def test_default_precision_per_device(device, capability, cpu_bfloat16,
                                      expected):
  assert precision.default_precision(device, capability,
                                     cpu_bfloat16) == expected


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni{extra} fma
bogomips\t: 4800.00

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni{extra} fma
"""


@pytest.mark.parametrize('extra,expected', [
    ('', False), (' avx512_bf16', True), (' amx_bf16 amx_tile', True),
    (' avx512_bf16x', False)])
def test_cpu_bfloat16_is_read_from_the_cpu_flags(extra, expected):
  assert precision.cpu_has_bfloat16(_CPUINFO.format(extra=extra)) == expected


def test_auto_follows_this_cpus_bfloat16_units():
  strategy = tf.distribute.get_strategy()
  assert precision.device_type(strategy) == 'CPU'
  with open('/proc/cpuinfo') as f:
    native = bool({'avx512_bf16', 'amx_bf16'} & set(f.read().split()))
  assert precision.choose_precision('auto', strategy) == (
      'bfloat16' if native else 'float32')
  assert precision.choose_precision('float16', strategy) == 'float16'
  assert not precision.default_jit_compile('CPU', 1)
  assert precision.default_jit_compile('GPU', 1)
  assert not precision.default_jit_compile('GPU', 2)


@pytest.mark.parametrize('name', ['bfloat16', 'float16'])
def test_mixed_model_keeps_float32_variables_and_global_policy(name):
  model = build_model(_run_config(precision=name))
  assert keras.config.dtype_policy().name == 'float32'  # Restored.
  outputs = model(tf.zeros([2, 16, 16, 3]), training=False)
  assert outputs['final_avg_pool'].dtype == name
  assert outputs['logits_sup'].dtype == tf.float32
  assert all(v.dtype == tf.float32 for v in model.weights)


@pytest.mark.parametrize('name', ['bfloat16', 'float16'])
def test_selective_kernels_and_squeeze_excite_compute_in_the_models_precision(
    name, rng):
  """Every layer computes in the policy, those built after the model's
  constructor (squeeze-excite's convolutions) included, and the result
  stays near float32's at the same weights."""
  settings = dict(resnet_depth=50, width_multiplier=0.0625, sk_ratio=0.0625,
                  se_ratio=0.25)
  model = build_model(_run_config(precision=name, **settings))
  reference = build_model(_run_config(**settings))
  reference.set_weights(model.get_weights())
  images = tf.constant(rng.uniform(size=(2, 16, 16, 3)), tf.float32)
  mixed = model(images, training=False)['final_avg_pool']
  assert mixed.dtype == name
  se = model.encoder.block_groups[0].blocks[0].se
  assert se.reduce.compute_dtype == se.expand.compute_dtype == name
  expected = reference(images, training=False)['final_avg_pool'].numpy()
  assert _relative_error(tf.cast(mixed, tf.float32).numpy(), expected) < 0.05


def _one_step(config, images, labels, max_calls=1):
  """Training steps from the seeded initialisation until one is applied
  (float16 loss scaling skips steps whose scaled gradients overflow)."""
  keras.utils.set_random_seed(0)
  task = TrainTask(config, tf.distribute.get_strategy(),
                   Plan(64, 8, 100, 0, 10))
  step_fn = tf.function(task.replica_step)
  for _ in range(max_calls):
    step_fn({'view1': images[0], 'view2': images[1], 'label': labels,
             'eval_view': images[0]})
    if task.step == 1:
      break
  return task.model, task.optimizer, task.read_metrics()


def test_xla_step_matches_the_plain_step(rng):
  images = rng.uniform(size=(2, 8, 16, 16, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 8)
  plain = _run_config()
  # Both start from the same seeded weights.
  model, _, plain_metrics = _one_step(plain, images, labels)
  jit = dataclasses.replace(
      plain, train=dataclasses.replace(plain.train, jit_compile=True))
  jit_model, _, jit_metrics = _one_step(jit, images, labels)
  for name in ('contrast_loss', 'contrast_acc', 'supervised_loss'):
    assert jit_metrics[name] == pytest.approx(plain_metrics[name], rel=1e-4)
  for a, b in zip(model.get_weights(), jit_model.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def _seeded_gradients(config, batch):
  keras.utils.set_random_seed(0)
  task = TrainTask(config, tf.distribute.get_strategy(),
                   Plan(64, 8, 100, 0, 10))
  with tf.GradientTape() as tape:
    loss = task.objective.values(batch)['total_loss']
  variables = task.model.trainable_variables
  return [(v.path, g.numpy()) for v, g in
          zip(variables, tape.gradient(loss, variables))]


def test_bfloat16_step_with_matmul_weight_gradients_matches_tensorflows(
    rng, monkeypatch, cpu_kernels):
  """A bfloat16 training step with the matmul weight gradients of the small
  convolutions (network/speedups/weight_gradients.py) against the same step with
  TensorFlow's own gradients: every variable's gradient, and the loss of a
  fixed batch after the step, agree within bfloat16 precision."""
  images = rng.uniform(size=(2, 8, 16, 16, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 8)
  batch = {'view1': images[0], 'view2': images[1], 'label': labels,
           'eval_view': images[0]}
  fixed = tf.constant(rng.uniform(size=(16, 16, 16, 3)), tf.float32)
  config = _run_config(precision='bfloat16')
  # Every residual branch on from the start (zero gamma would leave their
  # convolutions without a gradient at the first step).
  model = dataclasses.replace(config.model, encoder=dataclasses.replace(
      config.model.encoder, zero_init_residual=False))
  config = dataclasses.replace(config, model=model)
  calls = []
  applies = weight_gradients.applies
  monkeypatch.setattr(weight_gradients, 'applies',
                      lambda *a: calls.append(a) or applies(*a))
  ours = _seeded_gradients(config, batch)
  # Block groups 3 and 4 at 16 px, the strided convolution between them too.
  assert sum(applies(*a) for a in calls) >= 4
  ours_model, _, _ = _one_step(config, images, labels)
  monkeypatch.setattr(weight_gradients, 'applies', lambda *a: False)
  theirs = _seeded_gradients(config, batch)
  theirs_model, _, _ = _one_step(config, images, labels)
  # With oneDNN's kernels on an AMD EPYC with AVX512_BF16 both ways give
  # the same bits; TensorFlow's own bfloat16 kernels (what CPUs without
  # AVX-512 run) round elsewhere, and the gradients differ by up to 1.5% of
  # their norm (up to 3.5% of the largest element, here and there):
  # bfloat16's precision, where a wrong gradient would differ by its whole
  # size.
  for (path, mine), (_, gradient) in zip(ours, theirs):
    assert np.abs(gradient).max() > 0, path
    assert (np.linalg.norm(mine - gradient) <=
            3e-2 * np.linalg.norm(gradient)), path
  losses = []
  for model in (ours_model, theirs_model):
    hidden = model(fixed, training=False)['proj_head_output']
    losses.append(float(objective.contrastive_loss(hidden, 0.5)[0]))
  assert losses[0] == pytest.approx(losses[1], rel=1e-3)


def test_float16_step_scales_the_loss_and_checkpoints_its_step(rng,
                                                               tmp_path):
  images = rng.uniform(size=(2, 8, 16, 16, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 8)
  config = _run_config(precision='float16')
  keras.utils.set_random_seed(0)
  initial = build_model(config).get_weights()
  model, optimizer, metrics = _one_step(config, images, labels, max_calls=30)
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  # Steps whose scaled gradients overflow are skipped and halve the scale
  # (from 2**15); then one is applied.
  assert int(optimizer.iterations.numpy()) == 1
  assert float(optimizer.dynamic_scale.numpy()) <= 2.0**15
  assert np.isfinite(metrics['contrast_loss'])
  assert not all(np.array_equal(a, b)
                 for a, b in zip(initial, model.get_weights()))
  path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(
      str(tmp_path / 'ckpt'))
  assert checkpoints.step_of(path) == 1


def test_float16_loss_matches_float32_at_the_same_weights(rng):
  images = tf.constant(rng.uniform(size=(16, 16, 16, 3)), tf.float32)
  keras.utils.set_random_seed(0)
  float32_model = build_model(_run_config())
  losses = {}
  for name in ('float32', 'float16', 'bfloat16'):
    model = build_model(_run_config(precision=name))
    model.set_weights(float32_model.get_weights())
    hidden = model(images, training=True)['proj_head_output']
    loss, _, _ = objective.contrastive_loss(hidden, 0.5)
    assert loss.dtype == tf.float32
    losses[name] = float(loss)
  assert losses['float16'] == pytest.approx(losses['float32'], rel=5e-3)
  assert losses['bfloat16'] == pytest.approx(losses['float32'], rel=3e-2)


def _relative_error(ours, reference):
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def test_an_export_of_a_bfloat16_model_computes_in_float32(tmp_path, rng):
  config = _run_config(precision='bfloat16')
  keras.utils.set_random_seed(0)
  model = build_model(config)
  for v in model.weights:  # Zero-gamma blocks would hide the encoder.
    if v.name == 'gamma':
      v.assign(tf.ones_like(v) * 0.7)
  reference = build_model(_run_config())  # float32, same weights.
  reference.set_weights(model.get_weights())
  images = tf.constant(rng.uniform(size=(4, 16, 16, 3)), tf.float32)
  expected = {k: v.numpy() for k, v in reference(images).items()}
  in_bfloat16 = {k: tf.cast(v, tf.float32).numpy()
                 for k, v in model(images).items()}

  path = export.export(model, config.augment, str(tmp_path), 1)
  served = tf.saved_model.load(path).signatures['serving_default'](
      images=images)
  for name in ('final_avg_pool', 'proj_head_output', 'logits_sup'):
    assert served[name].dtype == tf.float32
    assert _relative_error(served[name].numpy(), expected[name]) < 1e-5
    # The model itself computes in bfloat16, far from float32.
    assert _relative_error(in_bfloat16[name], expected[name]) > 1e-3
  assert json.load(open(os.path.join(path, export.RECORD_FILE))) == {
      'compute_precision': 'float32', 'trained_precision': 'bfloat16',
      'global_step': 1, 'image_size': 16}

  # Asked for, an export computes in bfloat16: the model's own outputs.
  path = export.export(model, config.augment, str(tmp_path), 2,
                       compute_precision='bfloat16')
  served = tf.saved_model.load(path).signatures['serving_default'](
      images=images)
  for name in ('final_avg_pool', 'proj_head_output', 'logits_sup'):
    assert served[name].dtype == tf.float32
    assert _relative_error(served[name].numpy(), in_bfloat16[name]) < 1e-5
  assert json.load(open(os.path.join(path, export.RECORD_FILE)))[
      'compute_precision'] == 'bfloat16'


def test_run_py_trains_in_float16_with_xla_and_says_so(tmp_path, rng):
  folder = helpers.make_class_folder(str(tmp_path / 'data'), rng,
                                     per_class=8, size=(16, 16))
  model_dir = str(tmp_path / 'run')
  result = run('--mode=train', f'--dataset=folder:{folder}',
               f'--model_dir={model_dir}', '--image_size=16',
               '--width_multiplier=0.125', '--train_batch_size=8',
               '--train_steps=2', '--steps_per_loop=2', '--knn=false',
               '--mixed_precision=float16', '--jit_compile',
               '--export_formats=none')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Computing in float16 with XLA on 1 CPU replica(s).' in result.stderr
  latest = tf.train.latest_checkpoint(model_dir)
  assert checkpoints.step_of(latest) == 2
