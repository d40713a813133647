"""Evaluation: supervised-head top-k accuracy, features, kNN and a linear
probe on frozen features."""

import dataclasses
import time
import warnings

from absl import logging
import numpy as np
from sklearn import exceptions
from sklearn import linear_model
import tensorflow as tf

from simclr_tf import pipeline
from simclr_tf.config import AugmentConfig
from simclr_tf.datasets import Source


@dataclasses.dataclass(frozen=True)
class EvalData:
  """What to evaluate on: a source's split and how to read it."""

  source: Source
  split: pipeline.Split
  augment: AugmentConfig
  batch_size: int
  max_steps: int = 0  # > 0: only the first batches.

  def num_steps(self) -> int:
    steps = pipeline.eval_num_steps(self.split.num_examples(self.source),
                                    self.batch_size)
    return min(steps, self.max_steps) if self.max_steps else steps

  def distributed(self, strategy):
    return strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.eval_dataset(
            self.source, self.split, global_batch_size=self.batch_size,
            augment_config=self.augment, input_context=ctx))


def top_k_correct(labels, logits, k):
  """1.0 where `labels` is among the `k` highest logits (labels < 0 never)."""
  k = min(k, logits.shape[-1])
  top = tf.math.top_k(logits, k).indices
  hits = tf.reduce_any(tf.equal(top, tf.cast(labels, top.dtype)[:, None]),
                       axis=1)
  return tf.cast(hits, tf.float32)


def label_accuracy(model, strategy, data: EvalData) -> dict:
  """Top-1 / top-5 of the supervised head over every example once."""

  @tf.function
  def eval_step(batch):
    def replica_fn(batch):
      logits = model(batch['image'], training=False)['logits_sup']
      mask = batch['mask']
      return (tf.reduce_sum(top_k_correct(batch['label'], logits, 1) * mask),
              tf.reduce_sum(top_k_correct(batch['label'], logits, 5) * mask),
              tf.reduce_sum(mask))
    per_replica = strategy.run(replica_fn, args=(batch,))
    return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for v in per_replica]

  totals = np.zeros(3)
  for _, batch in zip(range(data.num_steps()), data.distributed(strategy)):
    totals += [float(v) for v in eval_step(batch)]
  top1, top5, count = totals
  return {'label_top_1_accuracy': top1 / count,
          'label_top_5_accuracy': top5 / count,
          'num_eval_examples': int(count)}


def extract_features(model, strategy, data: EvalData, dtype=np.float32):
  """(`final_avg_pool` features [N, F] in `dtype`, labels [N]) for every
  example once."""

  @tf.function
  def step(batch):
    def replica_fn(batch):
      features = model(batch['image'], training=False)['final_avg_pool']
      return tf.cast(features, tf.float32), batch['label'], batch['mask']
    # Every replica's rows, on every worker (each worker reads a shard).
    return [strategy.gather(value, axis=0)
            for value in strategy.run(replica_fn, args=(batch,))]

  features, labels, masks = [], [], []
  for _, batch in zip(range(data.num_steps()), data.distributed(strategy)):
    f, l, m = step(batch)
    features.append(f.numpy().astype(dtype, copy=False))
    labels.append(l.numpy())
    masks.append(m.numpy())
  keep = np.concatenate(masks) > 0
  return np.concatenate(features)[keep], np.concatenate(labels)[keep]


def extract_pixels(data: EvalData):
  """(flattened evaluation-preprocessed images [N, P] in [0, 1], labels [N])
  for every example once: the raw-pixel baseline's features. Grayscale
  images stored as three equal channels give one."""
  dataset = pipeline.eval_dataset(
      data.source, data.split, global_batch_size=data.batch_size,
      augment_config=data.augment)
  images, labels = [], []
  for batch in dataset.take(data.num_steps()).as_numpy_iterator():
    keep = batch['mask'] > 0
    images.append(batch['image'][keep])
    labels.append(batch['label'][keep])
  images, labels = np.concatenate(images), np.concatenate(labels)
  if np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(
      images[..., 0], images[..., 2]):
    images = images[..., :1]
  return images.reshape(len(images), -1).astype(np.float32), labels


def feature_bank(features, dtype=np.float16) -> np.ndarray:
  """L2-normalised rows, stored in `dtype` (float16 halves the memory of a
  kNN bank; similarities keep about three decimals)."""
  features = np.asarray(features, np.float32)
  norms = np.linalg.norm(features, axis=1, keepdims=True)
  return (features / np.maximum(norms, 1e-12)).astype(dtype)


def knn_scores(bank, bank_labels, test_features, num_classes, k=200,
               temperature=0.1, chunk_size=1024, bank_chunk_size=65_536):
  """Weighted k-NN votes [N_test, num_classes] (Wu et al. 2018).

  Each of the k most cosine-similar bank rows (`feature_bank`) votes for its
  class with weight exp(similarity / temperature). Similarities are computed
  block by block, keeping a running top-k, so memory is chunk_size x
  bank_chunk_size whatever the bank's size.
  """
  bank_labels = np.asarray(bank_labels, np.int32)
  k = min(k, len(bank))
  scores = []
  for start in range(0, len(test_features), chunk_size):
    test = tf.math.l2_normalize(
        tf.constant(test_features[start:start + chunk_size], tf.float32), -1)
    best = tf.fill([test.shape[0], 0], -np.inf)
    best_labels = tf.zeros([test.shape[0], 0], tf.int32)
    for block in range(0, len(bank), bank_chunk_size):
      similarity = tf.matmul(
          test, tf.constant(bank[block:block + bank_chunk_size], tf.float32),
          transpose_b=True)
      top = tf.math.top_k(similarity, min(k, similarity.shape[1]))
      labels = tf.gather(bank_labels[block:block + bank_chunk_size],
                         top.indices)
      best = tf.concat([best, top.values], 1)
      best_labels = tf.concat([best_labels, labels], 1)
      kept = tf.math.top_k(best, min(k, best.shape[1]))
      best = kept.values
      best_labels = tf.gather(best_labels, kept.indices, batch_dims=1)
    weights = tf.exp(best / temperature)
    votes = tf.one_hot(best_labels, num_classes)
    scores.append(tf.reduce_sum(votes * weights[..., None], axis=1).numpy())
  return np.concatenate(scores)


def accuracy(scores, labels, k=1):
  top = np.argsort(-scores, axis=1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


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
  model = linear_model.LogisticRegression(C=c, solver='lbfgs', max_iter=PROBE_MAX_ITER,
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
