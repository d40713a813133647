"""The linear probe: multinomial logistic regression on frozen features,
solved to convergence (scikit-learn, L-BFGS)."""

import dataclasses
import time
import warnings

from absl import logging
import numpy as np
from sklearn import exceptions
from sklearn import linear_model

from simclr_tf.evaluation.features import accuracy

# scikit-learn's inverse L2 strengths C tried by the linear probe, strongest
# penalty first; the path stops once held-out accuracy falls (it is
# unimodal in practice, and the weak penalties are the slow fits).
PROBE_C_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)
PROBE_MAX_ITER = 3000


@dataclasses.dataclass(frozen=True)
class ProbeResult:
  """A converged linear probe: test scores and how they were obtained."""

  scores: np.ndarray  # [N_test, num_classes] decision values.
  c: float  # The chosen inverse L2 strength (scikit-learn's C).
  validation_accuracy: float  # Of that C, on the held-out training part.
  converged: bool  # Every fit stopped on its tolerance, not on max_iter.
  iterations: int  # L-BFGS iterations of the final fit.

  def metrics(self, test_labels) -> dict:
    return {'linear_probe_top_1_accuracy':
                accuracy(self.scores, test_labels, 1),
            'linear_probe_top_5_accuracy':
                accuracy(self.scores, test_labels, 5),
            'linear_probe_c': self.c,
            'linear_probe_validation_accuracy': self.validation_accuracy,
            'linear_probe_converged': self.converged,
            'linear_probe_iterations': self.iterations}


def _logistic_regression(c, warm_from=None):
  model = linear_model.LogisticRegression(
      C=c, solver='lbfgs', max_iter=PROBE_MAX_ITER,
      warm_start=warm_from is not None)
  if warm_from is not None:
    model.coef_ = warm_from.coef_.copy()
    model.intercept_ = warm_from.intercept_.copy()
  return model


def _fit(model, x, y) -> bool:
  """Fits `model`; True when L-BFGS stopped on its tolerance."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', exceptions.ConvergenceWarning)
    model.fit(x, y)
  return not any(issubclass(w.category, exceptions.ConvergenceWarning)
                 for w in caught)


def _scores(model, x, num_classes):
  """Decision values [N, num_classes]; classes absent from training never
  win."""
  scores = np.full([len(x), num_classes], -np.inf, np.float32)
  decision = model.decision_function(x)
  if decision.ndim == 1:  # Two classes: scikit-learn returns one column.
    decision = np.stack([-decision, decision], axis=1) / 2
  scores[:, model.classes_] = decision
  return scores


def linear_probe(train_features, train_labels, test_features, num_classes,
                 standardize=True, validation_fraction=0.1, seed=0,
                 c_grid=PROBE_C_GRID) -> ProbeResult:
  """Multinomial logistic regression on frozen features, solved to
  convergence (scikit-learn, L-BFGS), its L2 penalty chosen on held-out
  training examples and then refitted on all of them.

  Features are standardised with the training statistics; inputs with a
  natural common scale (pixels) may skip that, since standardising nearly
  constant ones (the border of Fashion-MNIST images) blows up their noise.
  """
  train_features = np.asarray(train_features, np.float32)
  test_features = np.asarray(test_features, np.float32)
  if standardize:
    mean = train_features.mean(0)
    std = train_features.std(0) + 1e-6
    train_features = (train_features - mean) / std
    test_features = (test_features - mean) / std
  order = np.random.default_rng(seed).permutation(len(train_labels))
  held_out = order[:max(1, int(len(order) * validation_fraction))]
  fit_part = order[len(held_out):]

  converged = True
  best, previous = None, None
  for c in c_grid:
    started = time.perf_counter()
    model = _logistic_regression(c, warm_from=previous)
    converged &= _fit(model, train_features[fit_part],
                      train_labels[fit_part])
    validation = accuracy(
        _scores(model, train_features[held_out], num_classes),
        train_labels[held_out])
    logging.info('Linear probe, C=%g: held-out accuracy %.4f (%d L-BFGS '
                 'iterations, %.1f s).', c, validation, model.n_iter_[0],
                 time.perf_counter() - started)
    if best is not None and validation < best[1]:
      break
    if best is None or validation > best[1]:
      best = (c, validation, model)
    previous = model
  c, validation, model = best
  final = _logistic_regression(c, warm_from=model)
  converged &= _fit(final, train_features, train_labels)
  return ProbeResult(_scores(final, test_features, num_classes), c,
                     validation, bool(converged), int(final.n_iter_[0]))
