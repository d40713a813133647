"""Evaluation pieces against numpy: padded top-k, kNN, linear probe."""

import numpy as np
import scipy.optimize
import pytest
import tensorflow as tf

from simclr_tf import datasets
from simclr_tf import evaluate
from simclr_tf import pipeline
from simclr_tf.config import AugmentConfig
from tests import helpers


class _LinearOnPixels(tf.Module):
  """A stand-in model: fixed random logits from the mean colour."""

  def __init__(self, num_classes, seed=0):
    super().__init__()
    rng = np.random.default_rng(seed)
    self.weights = tf.constant(rng.normal(size=(3, num_classes)), tf.float32)

  def __call__(self, images, training=False):
    features = tf.reduce_mean(images, axis=[1, 2])
    return {'logits_sup': tf.matmul(features, self.weights),
            'final_avg_pool': features}


def _source(n_test=29, num_classes=7, channels=3):
  rng = np.random.default_rng(1)
  images = {'train': rng.integers(0, 256, (10, 8, 8, channels), np.uint8),
            'test': rng.integers(0, 256, (n_test, 8, 8, channels), np.uint8)}
  labels = {'train': rng.integers(0, num_classes, 10),
            'test': rng.integers(0, num_classes, n_test)}
  return datasets.ArraySource('toy', images, labels, num_classes)


@pytest.mark.parametrize('replicas', [1, 2])
def test_label_accuracy_counts_each_example_once(replicas):
  source = _source()
  model = _LinearOnPixels(7)
  data = evaluate.EvalData(source, pipeline.Split('test'),
                           AugmentConfig(image_size=8), batch_size=8)
  result = evaluate.label_accuracy(model, helpers.cpu_strategy(replicas),
                                   data)
  images = np.stack([e['image'] / 255.0 for e in
                     source.load('test').as_numpy_iterator()])
  logits = images.mean(axis=(1, 2)) @ model.weights.numpy()
  labels = source.labels('test')
  ranked = np.argsort(-logits, axis=1)
  assert result['num_eval_examples'] == 29
  assert abs(result['label_top_1_accuracy'] -
             np.mean(ranked[:, 0] == labels)) < 1e-9
  assert abs(result['label_top_5_accuracy'] -
             np.mean((ranked[:, :5] == labels[:, None]).any(1))) < 1e-9


def test_extract_features_returns_every_example_once():
  source = _source(n_test=13)
  data = evaluate.EvalData(source, pipeline.Split('test'),
                           AugmentConfig(image_size=8), batch_size=4)
  features, labels = evaluate.extract_features(
      _LinearOnPixels(7), helpers.cpu_strategy(2), data)
  images = np.stack([e['image'] / 255.0 for e in
                     source.load('test').as_numpy_iterator()])
  np.testing.assert_allclose(features, images.mean(axis=(1, 2)), atol=1e-6)
  np.testing.assert_array_equal(labels, source.labels('test'))


@pytest.mark.parametrize('grayscale', [False, True])
def test_extract_pixels_returns_every_image_once_in_0_1(grayscale):
  # Grayscale sources decode to three equal channels.
  source = _source(n_test=13, channels=1 if grayscale else 3)
  data = evaluate.EvalData(source, pipeline.Split('test'),
                           AugmentConfig(image_size=8), batch_size=4)
  pixels, labels = evaluate.extract_pixels(data)
  images = np.stack([e['image'] / 255.0 for e in
                     source.load('test').as_numpy_iterator()])
  if grayscale:  # One of the three equal channels is kept.
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    images = images[..., :1]
  np.testing.assert_allclose(pixels, images.reshape(13, -1), atol=1e-6)
  np.testing.assert_array_equal(labels, source.labels('test'))


def _knn_numpy(train_x, train_y, test_x, num_classes, k, temperature):
  train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  scores = np.zeros((len(test_x), num_classes))
  for i, x in enumerate(test_x):
    sims = train @ (x / np.linalg.norm(x))
    for j in np.argsort(-sims)[:k]:
      scores[i, train_y[j]] += np.exp(sims[j] / temperature)
  return scores


def test_knn_matches_a_numpy_loop(rng):
  train_x = rng.normal(size=(300, 8))
  train_y = rng.integers(0, 5, 300)
  test_x = rng.normal(size=(40, 8))
  expected = _knn_numpy(train_x, train_y, test_x, 5, 20, 0.1)
  bank = evaluate.feature_bank(train_x, np.float32)
  # Whole bank at once, and in blocks smaller than k (a running top-k).
  for bank_chunk_size in (1000, 7):
    scores = evaluate.knn_scores(bank, train_y, test_x, 5, k=20,
                                 temperature=0.1, chunk_size=16,
                                 bank_chunk_size=bank_chunk_size)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)
  # A float16 bank: the same votes up to its precision.
  half = evaluate.knn_scores(evaluate.feature_bank(train_x), train_y, test_x,
                             5, k=20, temperature=0.1, bank_chunk_size=64)
  assert (half.argmax(1) == expected.argmax(1)).mean() >= 0.95
  np.testing.assert_allclose(half.sum(1), expected.sum(1), rtol=0.05)
  assert evaluate.accuracy(np.eye(3), np.array([0, 1, 0])) == 2 / 3


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
  probe = evaluate.linear_probe(train_x, train_y, test_x, 3,
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
  probe = evaluate.linear_probe(train_x, train_y, train_x[:5], 2,
                                validation_fraction=0.3,
                                c_grid=(1e-4, 1e-3, 1e-2, 1e-1, 1, 10))
  assert probe.c <= 1e-2
  assert probe.converged and probe.iterations > 0
  # An iteration limit too small to converge is reported as such.
  monkeypatch.setattr(evaluate, 'PROBE_MAX_ITER', 2)
  assert not evaluate.linear_probe(train_x, train_y, train_x[:5], 2,
                                   c_grid=(1.0,)).converged


def test_linear_probe_separates_separable_classes(rng):
  centers = rng.normal(size=(4, 16)) * 3
  train_y = rng.integers(0, 4, 800)
  test_y = rng.integers(0, 4, 200)
  train_x = centers[train_y] + rng.normal(size=(800, 16))
  test_x = centers[test_y] + rng.normal(size=(200, 16))
  probe = evaluate.linear_probe(train_x, train_y, test_x, 4)
  assert evaluate.accuracy(probe.scores, test_y) > 0.97
  assert probe.metrics(test_y)['linear_probe_top_1_accuracy'] > 0.97
  # Labels unrelated to the features cannot be learned.
  shuffled = evaluate.linear_probe(train_x, rng.permutation(train_y), test_x,
                                   4)
  assert evaluate.accuracy(shuffled.scores, test_y) < 0.45
  # A class missing from training is never predicted.
  seen = train_y != 3
  partial = evaluate.linear_probe(train_x[seen], train_y[seen], test_x, 4)
  assert np.all(np.isneginf(partial.scores[:, 3]))


def test_train_subsets_are_seeded_random_and_nested():
  from simclr_tf import runner  # pylint: disable=g-import-not-at-top
  whole = runner._TrainSubset.of(10, 0, seed=0)  # pylint: disable=protected-access
  assert whole.indices is None and whole.ranks.tolist() == list(range(10))
  assert runner._TrainSubset.of(10, 10, seed=0).indices is None  # pylint: disable=protected-access
  subset = runner._TrainSubset.of(1000, 300, seed=3)  # pylint: disable=protected-access
  assert len(set(subset.indices.tolist())) == 300
  assert subset.indices.tolist() == sorted(subset.indices.tolist())
  assert sorted(subset.ranks.tolist()) == list(range(300))
  # The 100 lowest ranks are the first 100 of the same seeded order: a
  # smaller subset (the kNN bank) nested in the larger (the probe's).
  order = np.random.default_rng(3).permutation(1000)
  assert set(subset.indices[subset.ranks < 100].tolist()) == set(
      order[:100].tolist())
  assert subset.indices.min() < 100 and subset.indices.max() > 900


def test_feature_metrics_use_the_seeded_subsets_of_training_features():
  from simclr_tf import config as c  # pylint: disable=g-import-not-at-top
  from simclr_tf import runner  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  images = {'train': rng.integers(0, 256, (90, 8, 8, 3), np.uint8),
            'test': rng.integers(0, 256, (20, 8, 8, 3), np.uint8)}
  labels = {'train': rng.integers(0, 3, 90), 'test': rng.integers(0, 3, 20)}
  source = datasets.ArraySource('toy', images, labels, num_classes=3)
  config = c.RunConfig(
      data=c.DataConfig(dataset='toy', seed=6),
      augment=AugmentConfig(image_size=8),
      model=c.ModelConfig(encoder=c.EncoderConfig(depth=18)),
      optim=c.OptimConfig(), train=c.TrainConfig(model_dir='unused'),
      eval=c.EvalConfig(eval_batch_size=16, knn_k=5, knn_train_examples=30,
                        probe_train_examples=60))
  run = runner.Run(config, helpers.cpu_strategy(1), source)

  def model(images, training=False):
    del training  # Features: the first 12 centred pixel values.
    return {'final_avg_pool': tf.reshape(images, [-1, 192])[:, :12] - 0.5}
  result = runner.feature_metrics(run, model, knn=True, probe=False)

  order = np.random.default_rng(6).permutation(90)
  bank_rows = order[:30]
  features = lambda x: (x / 255.0).reshape(len(x), -1)[:, :12] - 0.5
  train_x = features(images['train'][bank_rows])
  test_x = features(images['test'])
  scores = _knn_numpy(train_x, labels['train'][bank_rows], test_x, 3, 5, 0.1)
  assert result['knn_top_1_accuracy'] == evaluate.accuracy(scores,
                                                           labels['test'])
  # The probe fits on 60: the same order's first 60.
  probe_rows = np.sort(order[:60])
  expected = evaluate.linear_probe(
      features(images['train'][probe_rows]), labels['train'][probe_rows],
      test_x, 3, seed=6).metrics(labels['test'])
  both = runner.feature_metrics(run, model, knn=True, probe=True)
  assert both['knn_top_1_accuracy'] == result['knn_top_1_accuracy']
  assert both['linear_probe_top_1_accuracy'] == expected[
      'linear_probe_top_1_accuracy']
  assert both['linear_probe_c'] == expected['linear_probe_c']
