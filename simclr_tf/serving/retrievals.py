"""A picture of nearest-neighbour retrieval: a row per query image, the
query, then its k most cosine-similar training images, each framed green
when its label is the query's and red when it is not."""

import numpy as np

from simclr_tf.evaluation import knn
from simclr_tf.serving import projector

TILE_SIDE = 64
FRAME = 3  # Pixels of the label frame around each neighbour.
_GAP = 4
_WHITE, _GREEN, _RED = (255, 255, 255), (40, 160, 60), (210, 40, 40)


def choose_queries(num_candidates: int, count: int, seed: int = 0):
  """`count` distinct positions in [0, num_candidates), seeded, in order."""
  count = min(count, num_candidates)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(num_candidates, count, replace=False))


def retrieve(query_embeddings, bank_embeddings, k: int):
  """(bank indices [Q, k], cosine similarities [Q, k]), most similar
  first."""
  similarities, indices = knn.cosine_top_k(query_embeddings, bank_embeddings,
                                           k)
  return indices, similarities


def _framed(tile, color):
  framed = tile.copy()
  if color is not None:
    framed[:FRAME], framed[-FRAME:] = color, color
    framed[:, :FRAME], framed[:, -FRAME:] = color, color
  return framed


def retrieval_grid(query_paths, neighbor_paths, query_labels=None,
                   neighbor_labels=None, side: int = TILE_SIDE) -> np.ndarray:
  """uint8 image: row i holds query i's thumbnail, a gap, then its
  neighbours' thumbnails (`neighbor_paths[i]`), framed by label agreement
  when labels are given."""
  gap = np.full((side, _GAP, 3), _WHITE, np.uint8)
  rows = []
  for i, query in enumerate(query_paths):
    tiles = [projector.thumbnail(query, side), gap, gap]
    for j, path in enumerate(neighbor_paths[i]):
      color = None
      if query_labels is not None:
        color = _GREEN if neighbor_labels[i][j] == query_labels[i] else _RED
      tiles += [_framed(projector.thumbnail(path, side), color), gap]
    rows.append(np.concatenate(tiles[:-1], axis=1))
    rows.append(np.full((_GAP, rows[-1].shape[1], 3), _WHITE, np.uint8))
  return np.concatenate(rows[:-1], axis=0)
