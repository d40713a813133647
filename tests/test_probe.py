"""The linear probe against independent solvers (scipy, scikit-learn
fitted cold to a tight tolerance), on every label and on a few."""

from concurrent import futures
import threading
import warnings

import numpy as np
import pytest
import scipy.optimize
import threadpoolctl
from sklearn import exceptions
from sklearn import linear_model
from sklearn import model_selection

from simclr_tf.evaluation import features
from simclr_tf.evaluation import few_labels
from simclr_tf.evaluation.probe import Fit, fit_logistic, linear_probe
from simclr_tf.evaluation.probe import _path, fitting_threads
from simclr_tf.evaluation.probe import PROBE_C_GRID, standardized


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
  # Far from zero, as pixels are: the probe centres them, the reference
  # does not, and the intercept absorbs the difference.
  train_x = 4.0 + centers[train_y] + 1.5 * rng.normal(size=(400, 6))
  test_x = 4.0 + centers[test_y] + 1.5 * rng.normal(size=(100, 6))
  probe = linear_probe(train_x, train_y, test_x, 3,
                       standardize=False, c_grid=(0.05,))
  assert probe.converged and probe.c == 0.05
  # The probe is the chosen C's fit on all but a seeded random tenth.
  fit = np.random.default_rng(0).permutation(400)[40:]
  weights, bias = _softmax_regression_scipy(train_x[fit], train_y[fit], 3,
                                            0.05)
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


@pytest.mark.parametrize('held_out, fitted, chosen', [
    # Best in the middle: one step each way confirms it.
    ((0.80, 0.85, 0.86, 0.86, 0.84), (1, 2, 3), 2),
    # Falling with C: down to the strongest of the equals.
    ((0.90, 0.90, 0.80, 0.70, 0.60), (0, 1, 2), 0),
    # Rising with C: up to the end.
    ((0.50, 0.60, 0.70, 0.80, 0.90), (1, 2, 3, 4), 4),
    ((0.50, 0.60, 0.70, 0.90, 0.80), (1, 2, 3, 4), 3),
])
def test_the_path_fits_only_the_penalties_it_needs(monkeypatch, held_out,
                                                   fitted, chosen):
  grid = (1e-2, 1e-1, 1.0, 10.0, 100.0)
  calls = []

  def fake_held_out_accuracy(features, labels, num_classes, splits, c):
    calls.append(grid.index(c))
    return held_out[grid.index(c)], [Fit(None, True, 1)]

  monkeypatch.setattr('simclr_tf.evaluation.probe._held_out_accuracy',
                      fake_held_out_accuracy)
  c, validation, _, _ = _path(None, None, 2, [], grid[::-1],
                              whole_grid=False)
  assert sorted(calls) == list(fitted)
  assert (c, validation) == (grid[chosen], held_out[chosen])
  # The whole grid's choice, the strongest penalty among equals, is the
  # same on these unimodal paths.
  best = max(range(5), key=lambda i: (held_out[i], -i))
  calls.clear()
  assert _path(None, None, 2, [], grid, whole_grid=True)[0] \
      == grid[best] == c
  assert sorted(calls) == list(range(5))


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


def _tight_logistic_regression(x, y, c):
  """scikit-learn's solver from zero weights, to a tolerance 10^6 times
  tighter than the probe's."""
  return linear_model.LogisticRegression(C=c, tol=1e-10,
                                         max_iter=100_000).fit(x, y)


def _ill_conditioned_classes(rng, n, num_classes=10, dim=40):
  """Gaussian classes seen through a mixing matrix whose singular values
  span three decades: weak-penalty fits move slowly along the flat
  directions."""
  centers = rng.normal(size=(num_classes, dim))
  labels = rng.integers(0, num_classes, n)
  mixing = np.linalg.qr(rng.normal(size=(dim, dim)))[0] @ np.diag(
      np.logspace(0, -3, dim))
  return (centers[labels] + 2.0 * rng.normal(size=(n, dim))) @ mixing, labels


def test_the_probe_is_converged_at_the_c_it_reports(rng):
  x, y = _ill_conditioned_classes(rng, 4000)
  train_x, train_y, test_x, test_y = x[:3000], y[:3000], x[3000:], y[3000:]
  probe = linear_probe(train_x, train_y, test_x, 10,
                       c_grid=(0.01, 0.1, 1.0, 10.0, 100.0))
  assert probe.converged and probe.iterations > 0
  standard_train, standard_test = standardized(
      train_x.astype(np.float32), test_x.astype(np.float32))
  fit = np.random.default_rng(0).permutation(3000)[300:]
  reference = _tight_logistic_regression(standard_train[fit], train_y[fit],
                                         probe.c)
  expected = reference.score(standard_test, test_y)
  assert abs(features.accuracy(probe.scores, test_y) - expected) <= 0.001 + 1e-9
  # Every C on the path is solved from zero weights: at each, the test
  # accuracy is the tight solution's.
  for c in (0.01, 100.0):
    with fitting_threads(1):
      fitted = fit_logistic(standard_train[fit], train_y[fit], c)
    tight = _tight_logistic_regression(standard_train[fit], train_y[fit], c)
    assert fitted.converged and fitted.iterations > 0
    assert abs(fitted.model.score(standard_test, test_y) -
               tight.score(standard_test, test_y)) <= 0.001 + 1e-9


def test_few_label_probes_match_scikit_learn_model_selection(rng):
  centers = rng.normal(size=(4, 12))
  train_y = np.repeat(np.arange(4), 250)
  test_y = rng.integers(0, 4, 300)
  train_x = centers[train_y] + 2.5 * rng.normal(size=(1000, 12))
  test_x = centers[test_y] + 2.5 * rng.normal(size=(300, 12))
  # Subsets of 40 and 200 examples choose C by cross-validation; of 400,
  # as the probe on every label does.
  result = few_labels.few_label_metrics(
      train_x, train_y, test_x, test_y, 4, (0.04, 0.2, 0.4), 3, seed=5,
      standardize=True, cross_validation_below=300)
  # Standardised by every training example, labels unused.
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_s, test_s = (train_x - mean) / std, (test_x - mean) / std
  for fraction, prefix, per_class in ((0.04, 'linear_probe_4pct', 10),
                                      (0.2, 'linear_probe_20pct', 50)):
    accuracies = []
    for seed in (5, 6, 7):
      # A class-balanced subset: per_class seeded examples of each class.
      state = np.random.RandomState(seed)
      rows = np.sort(np.concatenate([
          np.flatnonzero(train_y == label)[state.permutation(250)][:per_class]
          for label in range(4)]))
      search = model_selection.GridSearchCV(
          linear_model.LogisticRegression(max_iter=3000),
          {'C': PROBE_C_GRID},
          cv=model_selection.StratifiedKFold(5, shuffle=True,
                                             random_state=seed))
      search.fit(train_s[rows], train_y[rows])
      accuracies.append(search.score(test_s, test_y))
    assert result[f'{prefix}_label_fraction'] == fraction
    assert result[f'{prefix}_train_labels'] == 4 * per_class
    np.testing.assert_allclose(result[f'{prefix}_top_1_accuracies'],
                               accuracies, atol=1e-9)
    np.testing.assert_allclose(result[f'{prefix}_top_1_accuracy'],
                               np.mean(accuracies))
    np.testing.assert_allclose(result[f'{prefix}_top_1_accuracy_std'],
                               np.std(accuracies, ddof=1))
  prefix = 'linear_probe_40pct'
  assert result[f'{prefix}_train_labels'] == 400
  for seed, accuracy in zip((5, 6, 7), result[f'{prefix}_top_1_accuracies']):
    state = np.random.RandomState(seed)
    rows = np.sort(np.concatenate([
        np.flatnonzero(train_y == label)[state.permutation(250)][:100]
        for label in range(4)]))
    expected = linear_probe(train_s[rows], train_y[rows], test_s, 4,
                            standardize=False, seed=seed)
    assert accuracy == features.accuracy(expected.scores, test_y)


def test_fits_in_threads_keep_their_own_convergence_and_the_threads(
    rng, monkeypatch):
  x, y = _ill_conditioned_classes(rng, 800)
  blas_threads = [pool['num_threads']
                  for pool in threadpoolctl.threadpool_info()]
  # Fits side by side in threads, each its own convergence: within 30
  # iterations C = 0.001 converges (13 from zero weights) and C = 100 (296)
  # does not, which is noted for its fit alone and not printed.
  monkeypatch.setattr('simclr_tf.evaluation.probe.PROBE_MAX_ITER', 30)
  penalties = [1e-3, 100.0] * 4
  with warnings.catch_warnings(record=True) as printed:
    warnings.simplefilter('always')
    with fitting_threads(2), futures.ThreadPoolExecutor(2) as pool:
      fits = list(pool.map(lambda c: fit_logistic(x, y, c), penalties))
  assert [f.converged for f in fits] == [c < 1 for c in penalties]
  assert [f.iterations == 30 for f in fits] == [c > 1 for c in penalties]
  assert not printed
  # Deterministically interleaved: the C = 1 fit is still running when the
  # other thread's fit warns.
  warned = threading.Event()

  def interleaved_fit(regression, features, labels):
    del features, labels
    if regression.C == 1.0:
      assert warned.wait(10)
    else:
      warnings.warn('did not converge', exceptions.ConvergenceWarning)
      warned.set()
    regression.n_iter_ = np.array([1])
    return regression

  monkeypatch.setattr(linear_model.LogisticRegression, 'fit',
                      interleaved_fit)
  with fitting_threads(2), futures.ThreadPoolExecutor(2) as pool:
    fits = list(pool.map(lambda c: fit_logistic(x, y, c), [1.0, 2.0]))
  assert [f.converged for f in fits] == [True, False]
  # The process has its BLAS / OpenMP threads back; a fit outside
  # fitting_threads is refused.
  assert [pool['num_threads'] for pool in threadpoolctl.threadpool_info()
          ] == blas_threads
  with pytest.raises(RuntimeError, match='fitting_threads'):
    fit_logistic(x, y, 1.0)
