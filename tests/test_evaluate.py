"""Evaluation data: supervised-head top-k, features and pixels, each
example exactly once."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.evaluation import features
from simclr_tf.inputs import array_source
from simclr_tf.inputs import pipeline
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
  return array_source.ArraySource('toy', images, labels, num_classes)


@pytest.mark.parametrize('replicas', [1, 2])
def test_label_accuracy_counts_each_example_once(replicas):
  source = _source()
  model = _LinearOnPixels(7)
  data = pipeline.EvalData(source, pipeline.Split('test'),
                           AugmentConfig(image_size=8), batch_size=8)
  result = features.label_accuracy(model, helpers.cpu_strategy(replicas),
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
  data = pipeline.EvalData(source, pipeline.Split('test'),
                           AugmentConfig(image_size=8), batch_size=4)
  extracted, labels = features.extract_features(
      _LinearOnPixels(7), helpers.cpu_strategy(2), data)
  images = np.stack([e['image'] / 255.0 for e in
                     source.load('test').as_numpy_iterator()])
  np.testing.assert_allclose(extracted, images.mean(axis=(1, 2)), atol=1e-6)
  np.testing.assert_array_equal(labels, source.labels('test'))


@pytest.mark.parametrize('grayscale', [False, True])
def test_extract_pixels_returns_every_image_once_in_0_1(grayscale):
  # Grayscale sources decode to three equal channels.
  source = _source(n_test=13, channels=1 if grayscale else 3)
  data = pipeline.EvalData(source, pipeline.Split('test'),
                           AugmentConfig(image_size=8), batch_size=4)
  pixels, labels = features.extract_pixels(data)
  images = np.stack([e['image'] / 255.0 for e in
                     source.load('test').as_numpy_iterator()])
  if grayscale:  # One of the three equal channels is kept.
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    images = images[..., :1]
  np.testing.assert_allclose(pixels, images.reshape(13, -1), atol=1e-6)
  np.testing.assert_array_equal(labels, source.labels('test'))
