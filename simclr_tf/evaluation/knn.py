"""Cosine nearest neighbours in blocks: the kNN monitor's weighted votes
(Wu et al. 2018) and the neighbours that --mode=embed stores."""

import numpy as np
import tensorflow as tf


def feature_bank(features, dtype=np.float16) -> np.ndarray:
  """L2-normalised rows, stored in `dtype` (float16 halves the memory of a
  kNN bank; similarities keep about three decimals)."""
  features = np.asarray(features, np.float32)
  norms = np.linalg.norm(features, axis=1, keepdims=True)
  return (features / np.maximum(norms, 1e-12)).astype(dtype)


def cosine_top_k(queries, bank, k, exclude_self=False, chunk_size=1024,
                 bank_chunk_size=65_536):
  """(similarities [N, k], bank indices [N, k]) of each query's k most
  cosine-similar bank rows, most similar first.

  Blocks of `chunk_size` queries x `bank_chunk_size` bank rows keep a
  running top-k, so memory does not grow with the bank; each bank block is
  copied and normalised once. `exclude_self`: queries are the bank's rows,
  and a row is not its own neighbour.
  """
  k = min(k, len(bank) - (1 if exclude_self else 0))
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
      if exclude_self:  # Below any cosine similarity.
        own = tf.range(start, start + rows.shape[0]) - block
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


def knn_scores(bank, bank_labels, test_features, num_classes, k=200,
               temperature=0.1, chunk_size=1024, bank_chunk_size=65_536):
  """Weighted k-NN votes [N_test, num_classes]: each of the k most
  cosine-similar bank rows (`feature_bank`) votes for its class with weight
  exp(similarity / temperature)."""
  similarities, indices = cosine_top_k(test_features, bank, k,
                                       chunk_size=chunk_size,
                                       bank_chunk_size=bank_chunk_size)
  labels = np.asarray(bank_labels, np.int64)[indices]
  weights = np.exp(similarities.astype(np.float64) / temperature)
  scores = np.zeros([len(test_features), num_classes])
  np.add.at(scores, (np.arange(len(labels))[:, None], labels), weights)
  return scores.astype(np.float32)


def nearest_neighbors(embeddings: np.ndarray, k: int, chunk_size=1024):
  """(indices [N, k], cosine similarities [N, k]) of each row's k nearest
  other rows, most similar first."""
  similarities, indices = cosine_top_k(embeddings, embeddings, k,
                                       exclude_self=True,
                                       chunk_size=chunk_size)
  return indices, similarities
