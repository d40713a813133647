"""Embeddings as a TensorBoard Projector: `tensorboard --logdir DIR` shows
them in its Projector tab, each point drawn as its image and coloured by its
label."""

import math
import os

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector

# TensorBoard reads sprites of up to 8192 x 8192 pixels.
MAX_SPRITE_SIDE = 8192
MAX_THUMBNAIL_SIDE = 64
TENSOR_NAME = 'embedding/.ATTRIBUTES/VARIABLE_VALUE'
METADATA_FILE = 'metadata.tsv'
SPRITE_FILE = 'sprite.png'


def thumbnail_side(num_images: int) -> int:
  """The largest thumbnail (up to 64 px) that fits all images in a sprite."""
  per_row = max(1, math.ceil(math.sqrt(num_images)))
  return max(1, min(MAX_THUMBNAIL_SIDE, MAX_SPRITE_SIDE // per_row))


def thumbnail(path: str, side: int) -> np.ndarray:
  """uint8 [side, side, 3]: the image file, fitted inside the square and
  padded with black."""
  image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                             expand_animations=False)
  image = tf.image.resize_with_pad(tf.cast(image, tf.float32), side, side,
                                   antialias=True)
  return np.asarray(tf.clip_by_value(tf.round(image), 0, 255), np.uint8)


def sprite(thumbnails: np.ndarray) -> np.ndarray:
  """The thumbnails [N, S, S, 3] row by row in a square grid, as TensorBoard
  expects (thumbnail i at row i // per_row, column i % per_row)."""
  count, side = len(thumbnails), thumbnails.shape[1]
  per_row = max(1, math.ceil(math.sqrt(count)))
  rows = math.ceil(count / per_row)
  grid = np.zeros((rows * side, per_row * side, 3), np.uint8)
  for i, tile in enumerate(thumbnails):
    top, left = (i // per_row) * side, (i % per_row) * side
    grid[top:top + side, left:left + side] = tile
  return grid


def metadata_rows(paths, labels=None, class_names=None) -> list[str]:
  """metadata.tsv's lines: a header, then each image's label and path."""
  if labels is None:
    # One column: TensorBoard reads a file without a header.
    return [_cell(p) for p in paths]
  return ['label\tpath'] + [f'{_cell(class_names[label])}\t{_cell(p)}'
                            for label, p in zip(labels, paths)]


def _cell(text: str) -> str:
  return str(text).replace('\t', ' ').replace('\n', ' ')


def write_projector(directory: str, embeddings: np.ndarray, paths,
                    labels=None, class_names=None):
  """Writes the embeddings (a checkpoint), metadata.tsv, sprite.png and
  projector_config.pbtxt into `directory`."""
  os.makedirs(directory, exist_ok=True)
  # save(), not write(): its `checkpoint` index lets TensorBoard find the
  # embeddings in the directory, wherever the directory is moved.
  tf.train.Checkpoint(
      embedding=tf.Variable(np.asarray(embeddings, np.float32))).save(
          os.path.join(directory, 'embedding'))
  with open(os.path.join(directory, METADATA_FILE), 'w') as f:
    f.write('\n'.join(metadata_rows(paths, labels, class_names)) + '\n')
  side = thumbnail_side(len(paths))
  tiles = np.stack([thumbnail(p, side) for p in paths])
  tf.io.write_file(os.path.join(directory, SPRITE_FILE),
                   tf.io.encode_png(sprite(tiles)))
  config = projector.ProjectorConfig()
  embedding = config.embeddings.add()
  embedding.tensor_name = TENSOR_NAME
  embedding.metadata_path = METADATA_FILE
  embedding.sprite.image_path = SPRITE_FILE
  embedding.sprite.single_image_dim.extend([side, side])
  projector.visualize_embeddings(directory, config)
