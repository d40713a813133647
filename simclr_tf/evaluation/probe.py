"""The linear probe: multinomial logistic regression on frozen features,
solved to convergence (scikit-learn, L-BFGS) at every penalty it tries."""

import contextlib
import dataclasses
import threading
import time
import warnings

from absl import logging
import joblib
import numpy as np
from sklearn import exceptions
from sklearn import linear_model
from sklearn import model_selection
from sklearn import pipeline
from sklearn import preprocessing
from threadpoolctl import threadpool_limits

from simclr_tf.evaluation.features import accuracy

# scikit-learn's inverse L2 strengths C the linear probe chooses from; the
# path starts at the middle one (_path).
PROBE_C_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)
PROBE_MAX_ITER = 3000
# Cross-validation folds that choose C when the probe has few labels
# (fewer than this many examples per class would leave a fold without a
# class).
PROBE_FOLDS = 5
# Fits of fewer feature values than this run on one thread each, and
# independent ones (few_labels.py, evaluators side by side) as many at once
# as there are cores: scikit-learn's L-BFGS iterations are short, and
# waking BLAS / OpenMP threads for each costs more than they share (2
# cores, Fashion-MNIST pixels: 75 against 103 ms an iteration on 54,000 x
# 784, 1.3 against 8.8 on 480 x 784). Larger fits run on every core.
ONE_THREAD_BELOW = 64_000_000


@dataclasses.dataclass(frozen=True)
class ProbeResult:
  """A converged linear probe: test scores and how they were obtained."""

  scores: np.ndarray  # [N_test, num_classes] decision values.
  c: float  # The chosen inverse L2 strength (scikit-learn's C).
  # Of that C, on held-out training examples; None when a class has a
  # single example (C = 1, scikit-learn's default).
  validation_accuracy: float | None
  converged: bool  # Every fit stopped on its tolerance, not on max_iter.
  iterations: int  # L-BFGS iterations of the fit whose scores these are.

  def metrics(self, test_labels) -> dict:
    return {'linear_probe_top_1_accuracy':
                accuracy(self.scores, test_labels, 1),
            'linear_probe_top_5_accuracy':
                accuracy(self.scores, test_labels, 5),
            'linear_probe_c': self.c,
            'linear_probe_validation_accuracy': self.validation_accuracy,
            'linear_probe_converged': self.converged,
            'linear_probe_iterations': self.iterations}


@dataclasses.dataclass(frozen=True)
class Fit:
  """One logistic regression solved from zero weights."""

  model: pipeline.Pipeline  # Centring, then the logistic regression.
  converged: bool  # L-BFGS stopped on its tolerance, not on max_iter.
  iterations: int


# Per thread: whether scikit-learn warned that this thread's fit did not
# converge (fitting_threads routes its warnings here).
_noted = threading.local()
_held = 0  # How many fitting_threads are entered, in any thread.
_holding = threading.Lock()
_restore = None  # What the first of them set, to undo.


def fit_logistic(x, y, c) -> Fit:
  """Multinomial logistic regression at inverse L2 strength `c`, solved
  cold: a start from another C's solution can meet the gradient tolerance
  before it moves (0 iterations at C >= 10 on standardised features).

  The features are centred on their mean first. That moves no prediction
  (the intercept is not penalised and absorbs the shift) but L-BFGS needs
  2-2.5x fewer iterations (pixels in [0, 1], C = 0.1 and 1). Callers hold
  fitting_threads.
  """
  if not _held:
    raise RuntimeError('fit_logistic runs inside probe.fitting_threads.')
  regression = linear_model.LogisticRegression(C=c, solver='lbfgs',
                                               max_iter=PROBE_MAX_ITER)
  model = pipeline.make_pipeline(
      preprocessing.StandardScaler(with_std=False), regression)
  _noted.unconverged = False
  model.fit(x, y)
  return Fit(model, not _noted.unconverged, int(regression.n_iter_[0]))


def fit_workers(values_per_fit: int) -> int:
  """How many fits of `values_per_fit` feature values run side by side (on
  one thread each when more than one): one per core this process may use
  (joblib counts affinity and CPU quotas)."""
  return joblib.cpu_count() if values_per_fit < ONE_THREAD_BELOW else 1


@contextlib.contextmanager
def fitting_threads(workers: int):
  """Around fits (fit_logistic) in this thread and threads it starts: BLAS
  and OpenMP on one thread while `workers` > 1 fits run side by side (else
  on every core), and scikit-learn's ConvergenceWarning noted for the fit
  of the thread that raised it (Fit.converged) instead of printed.

  Both are process-wide state, so the first of nested or concurrent callers
  (few-label subsets, evaluators side by side) sets them, with its
  `workers`, and the last restores them; a fit never does: fits in several
  threads that set and restored them in turn would undo each other's.
  """
  global _held, _restore
  with _holding:
    if not _held:
      _restore = contextlib.ExitStack()
      _restore.enter_context(threadpool_limits(1 if workers > 1 else None))
      _restore.enter_context(warnings.catch_warnings())
      warnings.simplefilter('always', exceptions.ConvergenceWarning)
      show_others = warnings.showwarning

      def note(message, category, *args, **kwargs):
        if issubclass(category, exceptions.ConvergenceWarning):
          _noted.unconverged = True
        else:
          show_others(message, category, *args, **kwargs)

      warnings.showwarning = note
    _held += 1
  try:
    yield
  finally:
    with _holding:
      _held -= 1
      if not _held:
        _restore.close()


def scores_of(model, x, num_classes):
  """Decision values [N, num_classes]; classes absent from training never
  win."""
  scores = np.full([len(x), num_classes], -np.inf, np.float32)
  decision = model.decision_function(x)
  if decision.ndim == 1:  # Two classes: scikit-learn returns one column.
    decision = np.stack([-decision, decision], axis=1) / 2
  scores[:, model.classes_] = decision
  return scores


def standardized(train_features, test_features):
  """Both standardised with the training features' mean and deviation."""
  mean = train_features.mean(0)
  std = train_features.std(0) + 1e-6
  return (train_features - mean) / std, (test_features - mean) / std


def held_out_split(num_examples, validation_fraction, seed):
  """[(fit indices, held-out indices)]: one seeded random split."""
  order = np.random.default_rng(seed).permutation(num_examples)
  held_out = order[:max(1, int(num_examples * validation_fraction))]
  return [(np.sort(order[len(held_out):]), np.sort(held_out))]


def cross_validation_folds(labels, seed):
  """Stratified folds, PROBE_FOLDS of them or as many as the smallest class
  allows; [] when a class has a single example."""
  folds = min(PROBE_FOLDS,
              int(np.min(np.unique(labels, return_counts=True)[1])))
  if folds < 2:
    return []
  splitter = model_selection.StratifiedKFold(folds, shuffle=True,
                                             random_state=seed)
  return list(splitter.split(np.zeros(len(labels)), labels))


def _held_out_accuracy(features, labels, num_classes, splits, c):
  """(mean held-out accuracy over `splits`, the fits) at inverse L2
  strength `c`."""
  started = time.perf_counter()
  fits = [fit_logistic(features[fit], labels[fit], c) for fit, _ in splits]
  validation = float(np.mean([
      accuracy(scores_of(f.model, features[held_out], num_classes),
               labels[held_out])
      for f, (_, held_out) in zip(fits, splits)]))
  logging.info('Linear probe, C=%g: held-out accuracy %.4f (L-BFGS '
               'iterations %s, %.1f s).', c, validation,
               '/'.join(str(f.iterations) for f in fits),
               time.perf_counter() - started)
  return validation, fits


def _path(features, labels, num_classes, splits, c_grid, whole_grid):
  """(C, mean held-out accuracy over `splits`, its fits, all converged) of
  the best C (the strongest penalty among equals).

  With `whole_grid` every C is fitted. Otherwise the path starts in the
  middle of the grid and walks towards stronger penalties while held-out
  accuracy does not fall, or else towards weaker ones while it rises:
  held-out accuracy is unimodal in C in practice, and the weak penalties
  are the slow fits, so most paths fit three Cs. (Fitting the walk's next
  C and the one after it side by side was no faster: the weak penalty it
  may not need is the slowest fit.)
  """
  grid = sorted(c_grid)
  scored = {}

  def score(i):
    scored[i] = _held_out_accuracy(features, labels, num_classes, splits,
                                   grid[i])
    return scored[i][0]

  if whole_grid:
    for i in range(len(grid)):
      score(i)
    best = max(scored, key=lambda i: (scored[i][0], -i))
  else:
    best = len(grid) // 2
    score(best)
    while best > 0 and score(best - 1) >= scored[best][0]:
      best -= 1
    if best == len(grid) // 2:
      while best + 1 < len(grid) and score(best + 1) > scored[best][0]:
        best += 1
  converged = all(f.converged for _, fits in scored.values() for f in fits)
  validation, fits = scored[best]
  return grid[best], validation, fits, converged


def linear_probe(train_features, train_labels, test_features, num_classes,
                 standardize=True, validation_fraction=0.1, seed=0,
                 c_grid=PROBE_C_GRID, cross_validate=False) -> ProbeResult:
  """Multinomial logistic regression on frozen features, each C solved to
  convergence from zero weights, C chosen on held-out training examples.

  By default C is chosen on a seeded random `validation_fraction` of the
  examples and the probe is that C's fit on the rest (refitting on all of
  them would move accuracy by hundredths of a point at a full fit's cost).
  `cross_validate` (few labels) chooses C by stratified k-fold
  cross-validation over the whole grid (on a few labels held-out accuracy
  need not be unimodal in C) and then fits it on every example.

  Features are standardised with the training statistics; inputs with a
  natural common scale (pixels) may skip that, since standardising nearly
  constant ones (the border of Fashion-MNIST images) blows up their noise.
  """
  train_features = np.asarray(train_features, np.float32)
  test_features = np.asarray(test_features, np.float32)
  train_labels = np.asarray(train_labels, np.int64)
  if standardize:
    train_features, test_features = standardized(train_features,
                                                 test_features)
  splits = (cross_validation_folds(train_labels, seed) if cross_validate
            else held_out_split(len(train_labels), validation_fraction, seed))
  with fitting_threads(fit_workers(train_features.size)):
    if not splits:  # One example of some class: nothing to hold out.
      c, validation = 1.0, None
      final = fit_logistic(train_features, train_labels, c)
      converged = final.converged
    else:
      c, validation, fits, converged = _path(
          train_features, train_labels, num_classes, splits, c_grid,
          whole_grid=cross_validate)
      if cross_validate:
        final = fit_logistic(train_features, train_labels, c)
        converged &= final.converged
      else:
        final = fits[0]
  return ProbeResult(scores_of(final.model, test_features, num_classes), c,
                     validation, bool(converged), final.iterations)
