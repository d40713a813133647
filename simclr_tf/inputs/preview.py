"""A picture of the augmentations: each row an original, then pairs of views."""

import math

import numpy as np
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.inputs import augment
from simclr_tf.inputs.sources import Source

_MIN_TILE_SIDE = 96  # Small images are enlarged (nearest neighbour) to this.
_GAP = 4  # Pixels between tiles; a double gap separates pairs.


def _tile(image, scale):
  image = np.asarray(image * 255.0 + 0.5, np.uint8)
  return image.repeat(scale, axis=0).repeat(scale, axis=1)


def preview_grid(source: Source, split: str, config: AugmentConfig,
                 num_images: int, num_pairs: int, seed: int) -> np.ndarray:
  """uint8 [rows, cols, 3]: a row per image, original then view pairs."""
  size = config.image_size
  scale = max(1, math.ceil(_MIN_TILE_SIDE / size))
  side = size * scale
  white = np.full((side, _GAP, 3), 255, np.uint8)
  rows = []
  for row, example in enumerate(source.load(split).take(num_images)):
    original = augment.resize(augment.to_float(example['image']), size)
    tiles = [_tile(original, scale), white, white]
    for pair in range(num_pairs):
      pair_seed = tf.constant([seed, row * 1000 + pair], tf.int64)
      for second, view_seed in enumerate(augment.split_seed(pair_seed, 2)):
        view = augment.pretrain_view(example['image'], view_seed, config,
                                     second=bool(second))
        if view.shape[0] != size:  # --view_size: shown at the image's.
          view = augment.resize(view, size)
        tiles += [_tile(view, scale), white]
      tiles.append(white)
    rows.append(np.concatenate(tiles, axis=1))
    rows.append(np.full((_GAP, rows[-1].shape[1], 3), 255, np.uint8))
  if not rows:
    raise ValueError(f'Split {split!r} of {source.name} has no images.')
  return np.concatenate(rows[:-1], axis=0)


def write_png(image: np.ndarray, path: str):
  tf.io.write_file(path, tf.io.encode_png(image))
