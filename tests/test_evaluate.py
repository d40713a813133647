"""Evaluation pieces against numpy: padded top-k, kNN, linear probe."""

import numpy as np
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


def _source(n_test=29, num_classes=7):
  rng = np.random.default_rng(1)
  images = {'train': rng.integers(0, 256, (10, 8, 8, 3), np.uint8),
            'test': rng.integers(0, 256, (n_test, 8, 8, 3), np.uint8)}
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
  scores = evaluate.knn_scores(train_x, train_y, test_x, 5, k=20,
                               temperature=0.1, chunk_size=16)
  expected = _knn_numpy(train_x, train_y, test_x, 5, 20, 0.1)
  np.testing.assert_allclose(scores, expected, rtol=1e-4)
  assert evaluate.accuracy(np.eye(3), np.array([0, 1, 0])) == 2 / 3


def test_linear_probe_separates_separable_classes(rng):
  centers = rng.normal(size=(4, 16)) * 3
  train_y = rng.integers(0, 4, 800)
  test_y = rng.integers(0, 4, 200)
  train_x = centers[train_y] + rng.normal(size=(800, 16))
  test_x = centers[test_y] + rng.normal(size=(200, 16))
  scores = evaluate.linear_probe(train_x, train_y, test_x, 4, steps=200)
  assert evaluate.accuracy(scores, test_y) > 0.97
  # Labels unrelated to the features cannot be learned.
  shuffled = evaluate.linear_probe(train_x, rng.permutation(train_y), test_x,
                                   4, steps=200)
  assert evaluate.accuracy(shuffled, test_y) < 0.45
