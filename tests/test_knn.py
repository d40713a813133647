"""kNN votes, the choice of k and temperature, and nearest neighbours
against numpy."""

import numpy as np

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


def _held_out_accuracy_numpy(x, y, num_classes, k, temperature, seed):
  """The choice's criterion by brute force: a seeded random tenth of the
  rows classified by the others' weighted votes."""
  order = np.random.default_rng(seed).permutation(len(y))
  held_out, rest = order[:len(y) // 10], order[len(y) // 10:]
  scores = helpers.knn_numpy(x[rest], y[rest], x[held_out], num_classes, k,
                             temperature)
  return np.mean(scores.argmax(1) == y[held_out])


def test_k_and_temperature_are_chosen_on_held_out_training_features(rng):
  # 12 small clusters in 3 classes, 15 points each: the nearest few
  # neighbours share a point's cluster, 200 reach every row of every class.
  centers = rng.normal(size=(12, 16))
  cluster = np.repeat(np.arange(12), 15)
  x = centers[cluster] + 0.45 * rng.normal(size=(180, 16))
  y = cluster % 3
  bank = knn.feature_bank(x, np.float32)
  k_grid, temperature_grid = (1, 5, 20, 200), (0.05, 5.0)
  choice = knn.choose_k_and_temperature(
      bank, y, 3, seed=4, k_grid=k_grid, temperature_grid=temperature_grid)
  expected = {(k, t): _held_out_accuracy_numpy(x, y, 3, k, t, seed=4)
              for k in k_grid for t in temperature_grid}
  best = max(expected.values())
  assert choice.validation_accuracy == best
  # The first pair of the grids' order that reaches it.
  assert (choice.k, choice.temperature) == next(
      pair for pair, value in expected.items() if value == best)
  # Nearly equal votes of all 162 other rows: about a third right.
  assert best > expected[(200, 5.0)] + 0.3
  # A given k is kept, the temperature chosen for it; both given: kept.
  fixed_k = knn.choose_k_and_temperature(
      bank, y, 3, k=200, seed=4, k_grid=k_grid,
      temperature_grid=temperature_grid)
  assert fixed_k.k == 200 and fixed_k.validation_accuracy == max(
      expected[(200, t)] for t in temperature_grid)
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
  blocked = knn.cosine_top_k(x, x, 5, exclude_self=True, chunk_size=7,
                             bank_chunk_size=9)
  np.testing.assert_array_equal(blocked[1], expected)
