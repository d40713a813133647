"""kNN votes, the choice of k and temperature, and nearest neighbours
against numpy."""

import numpy as np
import pytest

from simclr_tf.evaluation import features
from simclr_tf.evaluation import knn
from tests import helpers


def test_knn_matches_a_numpy_loop(rng):
  train_x = rng.normal(size=(300, 8))
  train_y = rng.integers(0, 5, 300)
  test_x = rng.normal(size=(40, 8))
  expected = helpers.knn_numpy(train_x, train_y, test_x, 5, 20, 0.1)
  # Votes are defined up to a per-row factor (exp of the best similarity).
  per_row = lambda scores: scores / scores.sum(1, keepdims=True)
  bank = knn.feature_bank(train_x, np.float32)
  # Whole bank at once, and in blocks smaller than k (a running top-k).
  for bank_chunk_size in (1000, 7):
    scores = knn.knn_scores(bank, train_y, test_x, 5, k=20,
                            temperature=0.1, chunk_size=16,
                            bank_chunk_size=bank_chunk_size)
    np.testing.assert_allclose(per_row(scores), per_row(expected), rtol=1e-4)
  # A float16 bank: the same votes up to its precision.
  half = knn.knn_scores(knn.feature_bank(train_x), train_y, test_x,
                        5, k=20, temperature=0.1, bank_chunk_size=64)
  assert (half.argmax(1) == expected.argmax(1)).mean() >= 0.95
  np.testing.assert_allclose(per_row(half), per_row(expected), atol=0.05)
  assert features.accuracy(np.eye(3), np.array([0, 1, 0])) == 2 / 3


def test_votes_stay_finite_at_small_temperatures():
  similarities = np.array([[0.99, 0.98, 0.5]])
  scores = knn.votes(similarities, np.array([[0, 1, 1]]), 2, 0.001)
  assert np.all(np.isfinite(scores))
  np.testing.assert_allclose(scores, [[1.0, np.exp(-10.0) + 0.0]],
                             rtol=1e-6)


def _held_out_accuracy_numpy(x, y, num_classes, k, temperature, seed,
                             held_out_count):
  """The choice's criterion by brute force: each of a seeded random
  `held_out_count` rows classified by the weighted votes of all the
  others."""
  held_out = np.random.default_rng(seed).permutation(len(y))[:held_out_count]
  correct = []
  for row in held_out:
    others = np.arange(len(y)) != row
    scores = helpers.knn_numpy(x[others], y[others], x[row:row + 1],
                               num_classes, k, temperature)
    correct.append(scores.argmax(1)[0] == y[row])
  return np.mean(correct)


# A bank of 180 rows: every row held out in turn (the default minimum), or
# a tenth of them (18) when the minimum allows fewer.
@pytest.mark.parametrize('min_held_out, held_out_count', [(5000, 180),
                                                          (10, 18)])
def test_k_and_temperature_are_chosen_on_held_out_training_features(
    rng, min_held_out, held_out_count):
  # 12 small clusters in 3 classes, 15 points each: the nearest few
  # neighbours share a point's cluster, 200 reach every row of every class.
  centers = rng.normal(size=(12, 16))
  cluster = np.repeat(np.arange(12), 15)
  x = centers[cluster] + 0.45 * rng.normal(size=(180, 16))
  y = cluster % 3
  bank = knn.feature_bank(x, np.float32)
  k_grid, temperature_grid = (1, 5, 20, 200), (0.05, 5.0)
  choice = knn.choose_k_and_temperature(
      bank, y, 3, seed=4, k_grid=k_grid, temperature_grid=temperature_grid,
      min_held_out=min_held_out)
  expected = {(k, t): _held_out_accuracy_numpy(x, y, 3, k, t, 4,
                                               held_out_count)
              for k in k_grid for t in temperature_grid}
  best = max(expected.values())
  assert choice.validation_accuracy == pytest.approx(best, abs=1e-12)
  # The first pair of the grids' order that reaches it.
  assert (choice.k, choice.temperature) == next(
      pair for pair, value in expected.items() if value == best)
  # The nearest few beat nearly equal votes of every other row.
  assert best > expected[(200, 5.0)]
  # A given k is kept, the temperature chosen for it; both given: kept.
  fixed_k = knn.choose_k_and_temperature(
      bank, y, 3, k=200, seed=4, k_grid=k_grid,
      temperature_grid=temperature_grid, min_held_out=min_held_out)
  assert fixed_k.k == 200 and fixed_k.validation_accuracy == pytest.approx(
      max(expected[(200, t)] for t in temperature_grid), abs=1e-12)
  assert knn.choose_k_and_temperature(bank, y, 3, k=7, temperature=0.2) == (
      knn.KnnChoice(7, 0.2))


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
  blocked = knn.cosine_top_k(x, x, 5, query_rows=np.arange(50),
                             chunk_size=7, bank_chunk_size=9)
  np.testing.assert_array_equal(blocked[1], expected)
  # Some of the rows as queries: each is still not its own neighbour.
  rows = np.array([3, 17, 40])
  subset = knn.cosine_top_k(x[rows], x, 5, query_rows=rows, chunk_size=2,
                            bank_chunk_size=9)
  np.testing.assert_array_equal(subset[1], expected[rows])
