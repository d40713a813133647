"""Heads and the assembled SimCLR model."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import (EncoderConfig, ModelConfig,
                              ProjectionHeadConfig, SupervisedHeadConfig)
from simclr_tf.devices.precision import dtype_policy
from simclr_tf.network import heads
from simclr_tf.network.model import build_eagerly, create_model
from simclr_tf.network.model import SimCLRModel

_ENCODER = EncoderConfig(resnet_depth=18, width_multiplier=0.25,
                         cifar_stem=True)


def _model(supervised_head=SupervisedHeadConfig(num_classes=5), **kwargs):
  config = ModelConfig(
      encoder=_ENCODER, projection_head=ProjectionHeadConfig(
          proj_out_dim=16, num_proj_layers=3),
      supervised_head=supervised_head, **kwargs)
  model = SimCLRModel(config)
  build_eagerly(model, tf.zeros([2, 16, 16, 3]))
  return model


@pytest.mark.parametrize('mode,layers,out_dim', [('none', 0, 128),
                                                 ('linear', 1, 16),
                                                 ('nonlinear', 3, 16)])
def test_projection_head_modes(mode, layers, out_dim):
  config = ProjectionHeadConfig(proj_head_mode=mode, proj_out_dim=16,
                                num_proj_layers=3)
  head = heads.ProjectionHead(config, _ENCODER)
  features = tf.random.normal([4, 128])
  output, hiddens = head(features, training=True)
  assert output.shape == (4, out_dim) and len(hiddens) == layers + 1
  assert hiddens[0] is features
  # Middle layers keep the input width and have a bias (BN beta); the last
  # has neither bias nor beta.
  for j, layer in enumerate(head.projection_layers):
    last = j == layers - 1
    assert layer.dense.units == (16 if last else 128)
    assert not layer.dense.use_bias and layer.bn.bn.center == (not last)


def test_nonlinear_head_matches_numpy_in_inference_mode(rng):
  config = ProjectionHeadConfig(proj_out_dim=3, num_proj_layers=2)
  head = heads.ProjectionHead(config, _ENCODER)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  head(tf.constant(x), training=False)
  for v in head.weights:  # Non-trivial BN parameters and statistics.
    v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32))
  out, _ = head(tf.constant(x), training=False)

  def layer(inputs, l):
    bn = l.bn.bn
    y = inputs @ l.dense.kernel.numpy()
    y = (y - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() +
                                               1e-5) * bn.gamma.numpy()
    return y + (bn.beta.numpy() if bn.center else 0)

  first, second = head.projection_layers
  expected = layer(np.maximum(layer(x, first), 0), second)
  np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_ft_proj_selector_chooses_the_supervised_head_input():
  for selector, width in [(0, 128), (1, 128), (3, 16)]:
    head = SupervisedHeadConfig(num_classes=5, ft_proj_selector=selector)
    model = _model(supervised_head=head, train_mode='finetune')
    assert model.supervised_head.linear.dense.kernel.shape == (width, 5)


@pytest.mark.parametrize('selector', [0, 1, 3])
def test_fine_tuning_trains_the_projection_layers_up_to_the_selector(
    selector):
  head = SupervisedHeadConfig(num_classes=5, ft_proj_selector=selector)
  model = _model(supervised_head=head, train_mode='finetune')
  with tf.GradientTape() as tape:
    logits = model(tf.random.uniform([4, 16, 16, 3]), training=True)[
        'logits_sup']
  layers = model.projection_head.projection_layers
  trained = [v for layer in layers for v in layer.trainable_variables]
  gradients = tape.gradient(logits, model.projection_head.variables)
  reached = {v.path for v, g in zip(model.projection_head.variables,
                                    gradients) if g is not None}
  # Exactly the variables that the head's loss reaches are trained.
  assert {v.path for v in trained} == reached
  assert all(layer.trainable == (j < selector)
             for j, layer in enumerate(layers))


def test_zero_init_logits_layer():
  model = _model(train_mode='finetune', supervised_head=SupervisedHeadConfig(
      num_classes=5, zero_init_logits_layer=True))
  logits = model(tf.random.uniform([3, 16, 16, 3]))['logits_sup']
  assert not np.any(logits.numpy())
  assert model.supervised_head.linear.dense.use_bias


def test_outputs_with_and_without_a_supervised_head():
  config = ModelConfig(encoder=_ENCODER)
  outputs = SimCLRModel(config)(tf.zeros([2, 16, 16, 3]))
  assert set(outputs) == {'final_avg_pool', 'proj_head_output'}
  outputs = _model()(tf.zeros([2, 16, 16, 3]))
  assert set(outputs) == {'final_avg_pool', 'proj_head_output', 'logits_sup'}
  assert outputs['logits_sup'].shape == (2, 5)


@pytest.mark.parametrize('train_mode,reaches_encoder', [('pretrain', False),
                                                        ('finetune', True)])
def test_supervised_loss_reaches_the_encoder_only_when_fine_tuning(
    train_mode, reaches_encoder):
  model = _model(train_mode=train_mode)
  with tf.GradientTape() as tape:
    logits = model(tf.random.uniform([4, 16, 16, 3]), training=True)[
        'logits_sup']
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.constant([0, 1, 2, 3]), logits))
  encoder_vars = model.encoder.trainable_variables
  grads = tape.gradient(loss, encoder_vars)
  reached = any(g is not None and np.any(g.numpy()) for g in grads)
  assert reached == reaches_encoder


def test_variable_groups_partition_the_trainable_variables():
  model = _model()
  groups = [model.encoder_variables, model.projection_variables,
            model.supervised_variables]
  ids = [id(v) for group in groups for v in group]
  assert len(ids) == len(set(ids))  # No variable in two groups.
  assert sorted(ids) == sorted(id(v) for v in model.trainable_variables)
  assert len(model.supervised_variables) == 2  # Kernel and bias.
  # Keras names batch norm's trainable weights gamma and beta: an
  # independent check of the group that the optimizers leave undecayed.
  by_name = [v for v in model.trainable_variables
             if v.name in ('gamma', 'beta')]
  assert sorted(id(v) for v in model.batch_norm_variables) == sorted(
      id(v) for v in by_name)
  assert len(by_name) > 40


def test_a_model_without_supervised_head_has_an_empty_group():
  config = ModelConfig(encoder=_ENCODER)
  model = SimCLRModel(config)
  model(tf.zeros([2, 16, 16, 3]), training=False)
  assert model.supervised_variables == []


def test_create_builds_what_keras_own_build_does(rng):
  """model.create builds in one eager call; Keras' own first call (a
  symbolic trace per nested layer) must give the same variables: paths,
  shapes, dtypes, trainability, seeded initial values, and outputs (in
  bfloat16, whose casts are the likeliest to differ)."""
  precision = 'bfloat16'
  config = ModelConfig(
      encoder=EncoderConfig(resnet_depth=50, width_multiplier=0.0625,
                            sk_ratio=0.0625, se_ratio=0.25),
      projection_head=ProjectionHeadConfig(proj_out_dim=8),
      supervised_head=SupervisedHeadConfig(num_classes=3),
      precision=precision)
  keras.utils.set_random_seed(1)
  created = create_model(config, 16)
  keras.utils.set_random_seed(1)
  with dtype_policy(precision):
    by_keras = SimCLRModel(config)
  by_keras(tf.zeros([1, 16, 16, 3]), training=False)
  def described(model):  # Paths without Keras' per-process name counters.
    return [(re.sub(r'_\d+(?=/|$)', '', v.path), tuple(v.shape), v.dtype,
             v.trainable) for v in model.weights]
  assert described(created) == described(by_keras)
  for a, b in zip(created.weights, by_keras.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  images = tf.constant(rng.uniform(size=(2, 16, 16, 3)), tf.float32)
  ours, theirs = created(images), by_keras(images)
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name])
