"""kNN votes and nearest neighbours against numpy."""

import numpy as np

from simclr_tf.evaluation import features
from simclr_tf.evaluation import knn
from tests import helpers


def test_knn_matches_a_numpy_loop(rng):
  train_x = rng.normal(size=(300, 8))
  train_y = rng.integers(0, 5, 300)
  test_x = rng.normal(size=(40, 8))
  expected = helpers.knn_numpy(train_x, train_y, test_x, 5, 20, 0.1)
  bank = knn.feature_bank(train_x, np.float32)
  # Whole bank at once, and in blocks smaller than k (a running top-k).
  for bank_chunk_size in (1000, 7):
    scores = knn.knn_scores(bank, train_y, test_x, 5, k=20,
                            temperature=0.1, chunk_size=16,
                            bank_chunk_size=bank_chunk_size)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)
  # A float16 bank: the same votes up to its precision.
  half = knn.knn_scores(knn.feature_bank(train_x), train_y, test_x,
                        5, k=20, temperature=0.1, bank_chunk_size=64)
  assert (half.argmax(1) == expected.argmax(1)).mean() >= 0.95
  np.testing.assert_allclose(half.sum(1), expected.sum(1), rtol=0.05)
  assert features.accuracy(np.eye(3), np.array([0, 1, 0])) == 2 / 3


def test_nearest_neighbors_in_chunks(rng):
  x = rng.normal(size=(50, 4)).astype(np.float32)
  whole = knn.nearest_neighbors(x, 5)
  chunked = knn.nearest_neighbors(x, 5, chunk_size=7)
  np.testing.assert_array_equal(whole[0], chunked[0])
  # Each row's neighbours, by brute force: the most cosine-similar others.
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  similarity = unit @ unit.T
  np.fill_diagonal(similarity, -np.inf)
  expected = np.argsort(-similarity, axis=1)[:, :5]
  np.testing.assert_array_equal(whole[0], expected)
  np.testing.assert_allclose(whole[1], np.take_along_axis(similarity,
                                                          expected, 1),
                             atol=1e-5)
  # Queries and bank both in blocks: a row is still not its own neighbour.
  blocked = knn.cosine_top_k(x, x, 5, exclude_self=True, chunk_size=7,
                             bank_chunk_size=9)
  np.testing.assert_array_equal(blocked[1], expected)
