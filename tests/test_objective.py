"""NT-Xent against a numpy double loop written from the paper's formula, at
the original SimCLR code's scale."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.training import objective
from tests import helpers


def nt_xent_numpy(hidden, temperature, hidden_norm=True):
  """Paper, eq. (1), per anchor: -log exp(sim(z_i, z_j)/t) /
  sum_{k != i} exp(sim(z_i, z_k)/t); combined as the original code does:
  the mean over the N view-1 anchors plus the mean over the N view-2 ones."""
  z = np.array(hidden, np.float64)
  if hidden_norm:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  n = n2 // 2
  losses = []
  for i in range(n2):
    positive = (i + n) % n2
    denominator = 0.0
    for k in range(n2):
      if k != i:
        denominator += np.exp(z[i] @ z[k] / temperature)
    losses.append(-np.log(np.exp(z[i] @ z[positive] / temperature) /
                          denominator))
  return np.mean(losses[:n]) + np.mean(losses[n:])


@pytest.mark.parametrize('temperature', [0.1, 0.5, 1.0])
@pytest.mark.parametrize('hidden_norm', [True, False])
def test_loss_matches_the_paper_formula(temperature, hidden_norm, rng):
  hidden = rng.normal(size=(8, 5)) * (1.0 if hidden_norm else 0.3)
  loss, logits_ab, labels = objective.contrastive_loss(
      tf.constant(hidden), temperature, hidden_norm)
  assert abs(float(loss) - nt_xent_numpy(hidden, temperature,
                                         hidden_norm)) < 1e-9
  z = hidden / np.linalg.norm(hidden, axis=1, keepdims=True) \
      if hidden_norm else hidden
  np.testing.assert_allclose(logits_ab, z[:4] @ z[4:].T / temperature,
                             atol=1e-12)
  np.testing.assert_array_equal(labels, np.eye(4, 8))


def test_gradient_matches_finite_differences(rng):
  hidden = tf.constant(rng.normal(size=(6, 4)))
  theoretical, numerical = tf.test.compute_gradient(
      lambda h: objective.contrastive_loss(h, 0.5)[0], [hidden])
  np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-5,
                             atol=1e-6)


def test_metrics_on_a_hand_made_batch():
  # View 2 equals view 1 for distinct one-hot rows: every positive ranks
  # first. Swapping two rows of view 2 makes two of four anchors wrong.
  view1 = np.eye(4)
  swapped = view1[[1, 0, 2, 3]]
  for view2, accuracy in [(view1, 1.0), (swapped, 0.5)]:
    _, logits_ab, labels = objective.contrastive_loss(
        tf.constant(np.concatenate([view1, view2])), 0.1)
    metrics = objective.contrastive_metrics(logits_ab, labels)
    assert float(metrics['contrast_acc']) == accuracy
  # Entropy of a uniform softmax over 4 candidates is log(4).
  _, logits_ab, labels = objective.contrastive_loss(
      tf.ones([8, 3], tf.float64), 1.0)
  entropy = objective.contrastive_metrics(logits_ab, labels)[
      'contrast_entropy']
  assert abs(float(entropy) - np.log(4)) < 1e-6


def test_half_precision_input_gives_a_float32_loss(rng):
  hidden = tf.constant(rng.normal(size=(8, 5)), tf.bfloat16)
  loss, _, _ = objective.contrastive_loss(hidden, 0.5)
  assert loss.dtype == tf.float32


@pytest.mark.parametrize('replicas', [2, 4])
def test_replicas_use_the_global_batch_as_negatives(replicas, rng):
  local = 3
  view1 = rng.normal(size=(replicas * local, 6)).astype(np.float32)
  view2 = rng.normal(size=(replicas * local, 6)).astype(np.float32)
  expected = nt_xent_numpy(np.concatenate([view1, view2]), 0.2)

  # The gradient of the global loss, computed on one device.
  whole = tf.Variable(np.concatenate([view1, view2]))
  with tf.GradientTape() as tape:
    single_loss = objective.contrastive_loss(whole, 0.2)[0]
  single_grad = tape.gradient(single_loss, whole).numpy()
  assert abs(float(single_loss) - expected) < 1e-5

  strategy = helpers.cpu_strategy(replicas)

  def local_batch(ctx):
    part = slice(ctx.replica_id_in_sync_group * local,
                 (ctx.replica_id_in_sync_group + 1) * local)
    return tf.constant(np.concatenate([view1[part], view2[part]]))

  @tf.function
  def step(hidden):
    with tf.GradientTape() as tape:
      tape.watch(hidden)
      loss, logits_ab, labels = objective.contrastive_loss(hidden, 0.2)
      scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
    return loss, tape.gradient(scaled, hidden), logits_ab, labels

  hidden = strategy.experimental_distribute_values_from_function(local_batch)
  results = [strategy.experimental_local_results(value)
             for value in strategy.run(step, args=(hidden,))]
  losses, grads, logits, labels = results
  # Mean of the replica losses is the loss of the whole batch.
  assert abs(np.mean([float(l) for l in losses]) - expected) < 1e-5
  for r in range(replicas):
    part = slice(r * local, (r + 1) * local)
    assert logits[r].shape == (local, replicas * local)
    # Positives sit at this replica's offset in the global batch.
    np.testing.assert_array_equal(
        np.argmax(labels[r].numpy(), 1), np.arange(local) + r * local)
    # Gradients flow through the gather: each replica's gradient equals
    # the one-device gradient of the global loss for its examples.
    expected_grad = np.concatenate([single_grad[:replicas * local][part],
                                    single_grad[replicas * local:][part]])
    np.testing.assert_allclose(grads[r].numpy(), expected_grad, atol=1e-6)
