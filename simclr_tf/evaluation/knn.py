"""Cosine nearest neighbours in blocks: the kNN classifier's weighted votes
(Wu et al. 2018), its k and temperature chosen on held-out training
features (leave-one-out), and the neighbours that --mode=embed stores."""

import dataclasses

import numpy as np
import tensorflow as tf

# The neighbour counts and vote temperatures tried on held-out training
# features. Wu et al.'s monitor fixes k = 200, temperature 0.1: on a
# small dataset 200 can exceed every class.
KNN_K_GRID = (1, 3, 5, 10, 20, 50, 100, 200)
KNN_TEMPERATURE_GRID = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.2, 0.5)
# At least this many bank rows (all of a smaller bank) are held out in turn
# to choose them: a tenth of a 1,800-image folder's bank (180 rows) chose
# k = 100 where all 1,800 rows chose 20, 4 points apart on the test set.
KNN_MIN_HELD_OUT = 5000


def feature_bank(features, dtype=np.float16) -> np.ndarray:
  """L2-normalised rows, stored in `dtype` (float16 halves the memory of a
  kNN bank; similarities keep about three decimals)."""
  features = np.asarray(features, np.float32)
  norms = np.linalg.norm(features, axis=1, keepdims=True)
  return (features / np.maximum(norms, 1e-12)).astype(dtype)


def cosine_top_k(queries, bank, k, query_rows=None, chunk_size=1024,
                 bank_chunk_size=65_536):
  """(similarities [N, k], bank indices [N, k]) of each query's k most
  cosine-similar bank rows, most similar first.

  Blocks of `chunk_size` queries x `bank_chunk_size` bank rows keep a
  running top-k, so memory does not grow with the bank; each bank block is
  copied and normalised once. `query_rows`: the bank row each query is,
  which is not its own neighbour (None: queries are not bank rows).
  """
  k = min(k, len(bank) - (0 if query_rows is None else 1))
  starts = range(0, len(queries), chunk_size)
  best = {start: np.full([len(queries[start:start + chunk_size]), 0],
                         -np.inf, np.float32) for start in starts}
  best_indices = {start: np.zeros([len(best[start]), 0], np.int32)
                  for start in starts}
  for block in range(0, len(bank), bank_chunk_size):
    keys = tf.math.l2_normalize(
        tf.constant(bank[block:block + bank_chunk_size], tf.float32), -1)
    for start in starts:
      rows = tf.math.l2_normalize(
          tf.constant(queries[start:start + chunk_size], tf.float32), -1)
      similarity = tf.matmul(rows, keys, transpose_b=True)
      if query_rows is not None:  # Below any cosine similarity.
        own = query_rows[start:start + chunk_size] - block
        similarity -= 3.0 * tf.one_hot(own, keys.shape[0])
      top = tf.math.top_k(similarity, min(k, similarity.shape[1]))
      merged = tf.concat([best[start], top.values], 1)
      merged_indices = tf.concat([best_indices[start], top.indices + block],
                                 1)
      kept = tf.math.top_k(merged, min(k, merged.shape[1]))
      best[start] = kept.values.numpy()
      best_indices[start] = tf.gather(merged_indices, kept.indices,
                                      batch_dims=1).numpy()
  return (np.concatenate([best[start] for start in starts]),
          np.concatenate([best_indices[start] for start in starts]))


def votes(similarities, neighbor_labels, num_classes, temperature):
  """[N, num_classes] sums of exp(similarity / temperature) of each row's
  neighbours (most similar first) by their class."""
  similarities = np.asarray(similarities, np.float64)
  # Shifting by the row's best similarity changes no ranking and keeps
  # exp() finite at small temperatures.
  weights = np.exp((similarities - similarities[:, :1]) / temperature)
  scores = np.zeros([len(similarities), num_classes])
  np.add.at(scores, (np.arange(len(similarities))[:, None], neighbor_labels),
            weights)
  return scores.astype(np.float32)


def knn_scores(bank, bank_labels, test_features, num_classes, k=200,
               temperature=0.1, chunk_size=1024, bank_chunk_size=65_536):
  """Weighted k-NN votes [N_test, num_classes]: each of the k most
  cosine-similar bank rows (`feature_bank`) votes for its class with weight
  exp(similarity / temperature), up to a per-row factor."""
  similarities, indices = cosine_top_k(test_features, bank, k,
                                       chunk_size=chunk_size,
                                       bank_chunk_size=bank_chunk_size)
  return votes(similarities, np.asarray(bank_labels, np.int64)[indices],
               num_classes, temperature)


@dataclasses.dataclass(frozen=True)
class KnnChoice:
  """The neighbour count and temperature a kNN classifier uses."""

  k: int
  temperature: float
  # Of that pair on the held-out training features; None when both were
  # given rather than chosen.
  validation_accuracy: float | None = None


def choose_k_and_temperature(bank, bank_labels, num_classes, k=None,
                             temperature=None, validation_fraction=0.1,
                             seed=0, k_grid=KNN_K_GRID,
                             temperature_grid=KNN_TEMPERATURE_GRID,
                             min_held_out=KNN_MIN_HELD_OUT) -> KnnChoice:
  """The pair of `k_grid` x `temperature_grid` whose votes classify held-out
  bank rows best (the first of the grids' order among equals); a given `k`
  or `temperature` is kept, not chosen.

  The held-out rows are a seeded random `validation_fraction` of the bank,
  at least `min_held_out` of them (every row of a smaller bank), each
  classified by the votes of all the other rows (leave-one-out): a small
  bank's choice then rests on every row, and each vote sees a bank one row
  short of the one it chooses for.
  """
  if k is not None and temperature is not None:
    return KnnChoice(k, temperature)
  bank_labels = np.asarray(bank_labels, np.int64)
  count = len(bank_labels)
  held_out = np.sort(np.random.default_rng(seed).permutation(count)[:max(
      1, int(count * validation_fraction), min(count, min_held_out))])
  ks = [k] if k is not None else list(k_grid)
  temperatures = ([temperature] if temperature is not None
                  else list(temperature_grid))
  similarities, indices = cosine_top_k(bank[held_out], bank, max(ks),
                                       query_rows=held_out)
  neighbor_labels = bank_labels[indices]
  best = None
  for candidate_k in ks:
    for candidate_temperature in temperatures:
      scores = votes(similarities[:, :candidate_k],
                     neighbor_labels[:, :candidate_k], num_classes,
                     candidate_temperature)
      correct = np.mean(scores.argmax(1) == bank_labels[held_out])
      if best is None or correct > best.validation_accuracy:
        best = KnnChoice(candidate_k, candidate_temperature, float(correct))
  return best


def nearest_neighbors(embeddings: np.ndarray, k: int, chunk_size=1024):
  """(indices [N, k], cosine similarities [N, k]) of each row's k nearest
  other rows, most similar first."""
  similarities, indices = cosine_top_k(
      embeddings, embeddings, k, query_rows=np.arange(len(embeddings)),
      chunk_size=chunk_size)
  return indices, similarities
