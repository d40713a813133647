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


def multi_crop_numpy(hidden, small, temperature, hidden_norm=True):
  """Multi-crop NT-Xent from its definition, one term at a time: the
  two-view loss (`nt_xent_numpy`), and for small view k of example i and
  each large view v of example i, -log exp(sim(s, v)/t) / sum over every
  large view u of the batch of exp(sim(s, u)/t); total: (two-view loss +
  the small terms summed and divided by N) / (1 + S)."""
  z = np.array(hidden, np.float64)
  s = np.array(small, np.float64)
  if hidden_norm:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
  n = len(z) // 2
  num_small = len(s) // n
  small_terms = 0.0
  for k in range(num_small):
    for i in range(n):
      anchor = s[k * n + i]
      denominator = sum(np.exp(anchor @ z[u] / temperature)
                        for u in range(2 * n))
      for positive in (i, i + n):
        small_terms -= np.log(np.exp(anchor @ z[positive] / temperature) /
                              denominator)
  two_view = nt_xent_numpy(hidden, temperature, hidden_norm)
  return (two_view + small_terms / n) / (1 + num_small)


@pytest.mark.parametrize('num_small', [1, 3])
@pytest.mark.parametrize('hidden_norm', [True, False])
def test_multi_crop_loss_matches_its_definition(num_small, hidden_norm, rng):
  hidden = rng.normal(size=(8, 5)) * (1.0 if hidden_norm else 0.3)
  small = rng.normal(size=(4 * num_small, 5)) * (1.0 if hidden_norm else 0.3)
  loss, logits_ab, labels = objective.multi_crop_loss(
      tf.constant(hidden), tf.constant(small), 0.2, hidden_norm)
  assert abs(float(loss) - multi_crop_numpy(hidden, small, 0.2,
                                            hidden_norm)) < 1e-9
  # The two views' logits and labels, as without small views.
  _, two_view_logits, two_view_labels = objective.contrastive_loss(
      tf.constant(hidden), 0.2, hidden_norm)
  np.testing.assert_array_equal(logits_ab, two_view_logits)
  np.testing.assert_array_equal(labels, two_view_labels)


def test_a_small_view_equal_to_its_large_views_lowers_the_loss(rng):
  # Hand-made: a small view equal to view 1 (= view 2) of its own image is
  # closer to its positives than a random one, so its terms are smaller.
  view = np.eye(4)
  hidden = tf.constant(np.concatenate([view, view]))
  aligned = objective.multi_crop_loss(hidden, tf.constant(view), 0.1)[0]
  shuffled = objective.multi_crop_loss(hidden, tf.constant(view[[1, 2, 3, 0]]),
                                       0.1)[0]
  two_view = objective.contrastive_loss(hidden, 0.1)[0]
  # Each aligned term: -log(e^10 / (2 e^10 + 6 e^0)); two per example.
  term = -np.log(np.exp(10) / (2 * np.exp(10) + 6))
  assert abs(float(aligned) - (float(two_view) + 2 * term) / 2) < 1e-6
  assert float(shuffled) > float(aligned)


@pytest.mark.parametrize('replicas', [2])
def test_multi_crop_negatives_come_from_every_replica(replicas, rng):
  local, num_small = 3, 2
  view1 = rng.normal(size=(replicas * local, 6)).astype(np.float32)
  view2 = rng.normal(size=(replicas * local, 6)).astype(np.float32)
  # small[k][j]: small view k of global example j.
  small = rng.normal(size=(num_small, replicas * local, 6)).astype(np.float32)
  expected = multi_crop_numpy(np.concatenate([view1, view2]),
                              small.reshape(-1, 6), 0.2)
  strategy = helpers.cpu_strategy(replicas)

  def local_batch(ctx):
    part = slice(ctx.replica_id_in_sync_group * local,
                 (ctx.replica_id_in_sync_group + 1) * local)
    return (tf.constant(np.concatenate([view1[part], view2[part]])),
            tf.constant(small[:, part].reshape(-1, 6)))

  values = strategy.experimental_distribute_values_from_function(local_batch)
  losses = strategy.experimental_local_results(tf.function(
      lambda v: strategy.run(
          lambda h, s: objective.multi_crop_loss(h, s, 0.2)[0], args=v))(
              values))
  # Each replica's loss is over its own anchors: their mean is the loss of
  # the whole batch, negatives from every replica.
  assert abs(np.mean([float(l) for l in losses]) - expected) < 1e-5
