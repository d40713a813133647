"""Embeddings of an image folder with an exported SavedModel.

Uses the `serving_bytes` signature, so images get exactly the decoding and
preprocessing that a TF Serving client gets.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from simclr_tf.config import DataConfig
from simclr_tf.evaluation import knn
from simclr_tf.inputs import catalog
from simclr_tf.inputs.folder_source import FolderSource
from simclr_tf.serving import projector
from simclr_tf.serving import retrievals


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


@dataclasses.dataclass(frozen=True)
class EmbedOutputs:
  """What --mode=embed writes besides the embeddings."""

  output: str  # The .npz file.
  neighbors: int = 0  # Nearest neighbours per image (0: none).
  projector_dir: str | None = None  # A TensorBoard Projector.
  retrievals: str | None = None  # A PNG of queries and their neighbours.
  retrieval_queries: int = 8
  retrieval_neighbors: int = 8


def embed_folder(saved_model_dir: str, data: DataConfig, batch_size: int,
                 outputs: EmbedOutputs) -> dict:
  """Embeds the folder of `data.dataset` ('folder:PATH'; its images no
  larger than data.max_image_pixels) and writes `outputs.output` (.npz):
  `embeddings`, `paths`, `splits` (each image's split), and `labels` /
  `class_names` when the folder has classes, `neighbors` /
  `neighbor_similarities` when `outputs.neighbors` > 0; also the Projector
  and the retrieval picture (queries drawn with data.seed) when asked."""
  folder = data.dataset.removeprefix(catalog.FOLDER_PREFIX)
  source = FolderSource(folder, data.max_image_pixels)
  if outputs.retrievals and not source.split_sizes.get(
      source.default_eval_split):
    raise EmbedError(
        f'--retrievals draws its queries from {folder}\'s evaluation split '
        f'({source.default_eval_split}), which has no images; add images '
        'there, or leave --retrievals out.')
  paths, splits = [], []
  for split in source.split_sizes:
    split_paths = source.paths(split)
    paths += split_paths
    splits += [split] * len(split_paths)
  arrays = {'embeddings': embed_files(saved_model_dir, paths, batch_size),
            'paths': np.array(paths), 'splits': np.array(splits)}
  if source.has_labels:
    arrays['labels'] = np.concatenate(
        [source.labels(split) for split in source.split_sizes])
    arrays['class_names'] = np.array(source.class_names)
  if outputs.neighbors > 0:
    arrays['neighbors'], arrays['neighbor_similarities'] = (
        knn.nearest_neighbors(arrays['embeddings'], outputs.neighbors))
  np.savez(outputs.output, **arrays)
  if outputs.projector_dir:
    projector.write_projector(outputs.projector_dir, arrays['embeddings'],
                              paths, arrays.get('labels'), source.class_names)
  if outputs.retrievals:
    write_retrievals(arrays, source.default_eval_split, outputs.retrievals,
                     outputs.retrieval_queries, outputs.retrieval_neighbors,
                     data.seed)
  return arrays


def write_retrievals(arrays: dict, query_split: str, path: str,
                     num_queries: int, k: int, seed: int):
  """A PNG: queries drawn from `query_split`, each followed by its k
  nearest images of the training split."""
  splits = arrays['splits']
  query_rows = np.flatnonzero(splits == query_split)
  bank_rows = np.flatnonzero(splits == 'train')
  queries = query_rows[retrievals.choose_queries(len(query_rows), num_queries,
                                                 seed)]
  found, _ = retrievals.retrieve(arrays['embeddings'][queries],
                                 arrays['embeddings'][bank_rows], k)
  neighbors = bank_rows[found]
  labels = arrays.get('labels')
  grid = retrievals.retrieval_grid(
      arrays['paths'][queries], arrays['paths'][neighbors],
      None if labels is None else labels[queries],
      None if labels is None else labels[neighbors])
  tf.io.write_file(path, tf.io.encode_png(grid))
