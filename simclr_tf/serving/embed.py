"""Embeddings of an image folder with an exported SavedModel.

Uses the `serving_bytes` signature, so images get exactly the decoding and
preprocessing that a TF Serving client gets.
"""

import keras
import numpy as np
import tensorflow as tf

from simclr_tf.evaluation import knn
from simclr_tf.inputs.folder_source import FolderSource
from simclr_tf.settings.config import DEFAULT_MAX_IMAGE_PIXELS


class EmbedError(ValueError):
  """A SavedModel that cannot embed images; the message is for the user."""


def embed_files(saved_model_dir: str, paths: list[str],
                batch_size: int = 64) -> np.ndarray:
  """`default` outputs [N, F] for the image files at `paths`."""
  signatures = tf.saved_model.load(saved_model_dir).signatures
  if 'serving_bytes' not in signatures:
    raise EmbedError(
        f'--saved_model={saved_model_dir} has no serving_bytes signature '
        f'(it has: {", ".join(sorted(signatures)) or "none"}); export one '
        'with this project (--mode=export) to embed image files.')
  serve = signatures['serving_bytes']
  progress = keras.utils.Progbar(len(paths), unit_name='image')
  embeddings = []
  for start in range(0, len(paths), batch_size):
    batch = paths[start:start + batch_size]
    encoded = tf.stack([tf.io.read_file(p) for p in batch])
    embeddings.append(serve(image_bytes=encoded)['default'].numpy())
    progress.add(len(batch))
  return np.concatenate(embeddings)


def embed_folder(saved_model_dir: str, folder: str, output: str,
                 neighbors: int = 0, batch_size: int = 64,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> dict:
  """Writes `output` (.npz): `embeddings`, `paths`, and `labels` /
  `class_names` when the folder has classes, `neighbors` /
  `neighbor_similarities` when `neighbors` > 0."""
  source = FolderSource(folder, max_image_pixels)
  splits = '+'.join(source.split_sizes)
  paths = source.paths(splits)
  arrays = {'embeddings': embed_files(saved_model_dir, paths, batch_size),
            'paths': np.array(paths)}
  if source.has_labels:
    arrays['labels'] = source.labels(splits)
    arrays['class_names'] = np.array(source.class_names)
  if neighbors > 0:
    arrays['neighbors'], arrays['neighbor_similarities'] = (
        knn.nearest_neighbors(arrays['embeddings'], neighbors))
  np.savez(output, **arrays)
  return arrays
