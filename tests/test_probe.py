"""The linear probe against an independent solver (scipy)."""

import numpy as np
import scipy.optimize

from simclr_tf.evaluation import features
from simclr_tf.evaluation.probe import linear_probe


def _softmax_regression_scipy(x, y, num_classes, c):
  """Scikit-learn's objective, C * sum of cross-entropies + ||W||^2 / 2
  (bias not penalised), written in numpy and minimised by scipy's L-BFGS."""
  n, d = x.shape
  onehot = np.eye(num_classes)[y]

  def objective(theta):
    weights = theta[:d * num_classes].reshape(d, num_classes)
    logits = x @ weights + theta[d * num_classes:]
    logits -= logits.max(1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(1))
    loss = c * np.sum(log_norm - (logits * onehot).sum(1))
    residual = c * (np.exp(logits - log_norm[:, None]) - onehot)
    grad = np.concatenate([(x.T @ residual + weights).ravel(),
                           residual.sum(0)])
    return loss + 0.5 * np.sum(weights ** 2), grad

  theta = scipy.optimize.minimize(
      objective, np.zeros(d * num_classes + num_classes), jac=True,
      method='L-BFGS-B', options={'maxiter': 5000, 'gtol': 1e-9,
                                  'ftol': 1e-15}).x
  return theta[:d * num_classes].reshape(d, num_classes), \
      theta[d * num_classes:]


def test_linear_probe_agrees_with_an_independent_solver(rng):
  centers = rng.normal(size=(3, 6))
  train_y = rng.integers(0, 3, 400)
  test_y = rng.integers(0, 3, 100)
  train_x = centers[train_y] + 1.5 * rng.normal(size=(400, 6))
  test_x = centers[test_y] + 1.5 * rng.normal(size=(100, 6))
  probe = linear_probe(train_x, train_y, test_x, 3,
                       standardize=False, c_grid=(0.05,))
  assert probe.converged and probe.c == 0.05
  weights, bias = _softmax_regression_scipy(train_x, train_y, 3, 0.05)
  expected = test_x @ weights + bias
  # Softmax regression scores are defined up to a per-example constant.
  np.testing.assert_allclose(
      probe.scores - probe.scores.mean(1, keepdims=True),
      expected - expected.mean(1, keepdims=True), atol=2e-3)


def test_linear_probe_picks_the_penalty_on_held_out_data(rng, monkeypatch):
  # 20 weakly informative features among 600 noise ones: a weak penalty
  # overfits, so held-out accuracy must pick a strong one.
  train_y = rng.integers(0, 2, 1000)
  signal = np.where(train_y[:, None] == 1, 0.15, -0.15)
  train_x = np.concatenate([signal + rng.normal(size=(1000, 20)),
                            rng.normal(size=(1000, 600))], axis=1)
  probe = linear_probe(train_x, train_y, train_x[:5], 2,
                       validation_fraction=0.3,
                       c_grid=(1e-4, 1e-3, 1e-2, 1e-1, 1, 10))
  assert probe.c <= 1e-2
  assert probe.converged and probe.iterations > 0
  # An iteration limit too small to converge is reported as such.
  monkeypatch.setattr('simclr_tf.evaluation.probe.PROBE_MAX_ITER', 2)
  assert not linear_probe(train_x, train_y, train_x[:5], 2,
                          c_grid=(1.0,)).converged


def test_linear_probe_separates_separable_classes(rng):
  centers = rng.normal(size=(4, 16)) * 3
  train_y = rng.integers(0, 4, 800)
  test_y = rng.integers(0, 4, 200)
  train_x = centers[train_y] + rng.normal(size=(800, 16))
  test_x = centers[test_y] + rng.normal(size=(200, 16))
  probe = linear_probe(train_x, train_y, test_x, 4)
  assert features.accuracy(probe.scores, test_y) > 0.97
  assert probe.metrics(test_y)['linear_probe_top_1_accuracy'] > 0.97
  # Labels unrelated to the features cannot be learned.
  shuffled = linear_probe(train_x, rng.permutation(train_y), test_x,
                          4)
  assert features.accuracy(shuffled.scores, test_y) < 0.45
  # A class missing from training is never predicted.
  seen = train_y != 3
  partial = linear_probe(train_x[seen], train_y[seen], test_x, 4)
  assert np.all(np.isneginf(partial.scores[:, 3]))
