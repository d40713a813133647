"""TFDS datasets as sources: TFRecord files read in sequence, ArrayRecord
files by index; offline, an unprepared dataset fails in one line."""

import difflib
import hashlib
import os
import socket

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf.inputs import image_files
from simclr_tf.inputs import sequential
from simclr_tf.inputs.sources import OFFLINE_HINT, UNLABELED, DatasetError, Source, gray_to_rgb


def _stamps(folder: str) -> list[tuple[str, tuple]]:
  """(path, stamp) of each file in a prepared dataset's folder: on a local
  disk image_files' stamps, elsewhere (gs://) sizes and modification times."""
  if os.path.isdir(folder):
    return [(f.path, f.stamp) for f in image_files.list_files(folder)]
  paths = sorted(tf.io.gfile.glob(os.path.join(folder, '*')))
  return [(p, (s.length, s.mtime_nsec))
          for p, s in zip(paths, map(tf.io.gfile.stat, paths))]


class TFDSSource(Source):
  """A prepared TFDS dataset. In a random-access file format (ArrayRecord)
  examples are read by index; TFRecord files are read in shuffled order
  (`sequential`)."""

  def __init__(self, builder):
    self._builder = builder
    info = builder.info
    self.name = info.name
    label = info.features['label'] if 'label' in info.features else None
    self.num_classes = getattr(label, 'num_classes', None)
    self.split_sizes = {k: v.num_examples for k, v in info.splits.items()}
    self.default_eval_split = next(
        (s for s in ('test', 'validation', 'val') if s in self.split_sizes),
        'train')
    self._image_feature = info.features['image']
    shape = self._image_feature.shape
    self.native_image_size = (shape[0] if shape[0] and shape[0] == shape[1]
                              else None)
    file_format = getattr(info.file_format, 'value', info.file_format)
    self.random_access = str(file_format) == 'array_record'
    self._fingerprint = None

  _ENCODED = {'image': tfds.decode.SkipDecoding()}

  def fingerprint(self):
    # A prepared version's folder can still be prepared again or copied
    # over: its files' names and stamps, and dataset_info.json's content.
    if self._fingerprint is None:
      folder = self._builder.data_dir
      digest = hashlib.sha256(f'{folder}\n'.encode())
      for path, stamp in _stamps(folder):
        digest.update(f'{path}\t{stamp}\n'.encode())
      with tf.io.gfile.GFile(os.path.join(folder, 'dataset_info.json'),
                             'rb') as f:
        digest.update(f.read())
      self._fingerprint = f'tfds:{folder}:sha256:{digest.hexdigest()[:32]}'
    return self._fingerprint

  def records(self, split):
    if self.random_access:  # ArrayRecord files have no tf.data reader.
      return tf.data.Dataset.range(self.num_examples(split)).map(
          self.lookup(split), num_parallel_calls=tf.data.AUTOTUNE,
          deterministic=True)
    dataset = self._builder.as_dataset(split=split, shuffle_files=False,
                                       decoders=self._ENCODED)
    return dataset.map(self._record)

  def _record(self, example):
    return {'record': example['image'],
            'label': (example['label'] if self.has_labels
                      else tf.constant(UNLABELED, tf.int64))}

  def record_files(self, split):
    files, first = [], 0
    for part in self._builder.info.splits[split].file_instructions:
      files.append(sequential.RecordFile(part.filename, part.skip, part.take,
                                         first))
      first += part.take
    return files

  def parse(self, serialized):
    return self._record(self._builder.info.features.deserialize_example(
        serialized, decoders=self._ENCODED))

  def lookup(self, split, indices=None):
    examples = self._builder.as_data_source(split=split,
                                            decoders=self._ENCODED)
    table = None if indices is None else np.asarray(indices, np.int64)
    has_labels = self.has_labels

    def read(index):
      example = examples[int(index if table is None else table[index])]
      return (example['image'],
              np.int64(example['label'] if has_labels else UNLABELED))

    def lookup_fn(index):
      record, label = tf.numpy_function(read, [index], [tf.string, tf.int64],
                                        stateful=False)
      record.set_shape([])
      label.set_shape([])
      return {'record': record, 'label': label}
    return lookup_fn

  def decode(self, record):
    return gray_to_rgb(self._image_feature.decode_example(record))

  def labels(self, split):
    if not self.has_labels:
      return np.full(self.num_examples(split), UNLABELED, np.int64)
    labels = self.records(split).map(lambda ex: ex['label']).batch(4096)
    return np.concatenate(list(labels.as_numpy_iterator()))


def _network_reachable(host='storage.googleapis.com', timeout=3.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def tfds_source(name: str, data_dir: str) -> TFDSSource:
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    known = tfds.list_builders() + ['fashion_mnist', 'folder:PATH']
    close = difflib.get_close_matches(name, known, n=3)
    hint = f' Did you mean {" or ".join(close)}?' if close else ''
    raise DatasetError(f'Unknown dataset {name!r}.{hint} Use a TFDS name '
                       '(cifar10, imagenet2012, ...) or folder:PATH.') from None
  if not builder.is_prepared():
    if not _network_reachable():
      raise DatasetError(
          f'Dataset {name!r} is not prepared in {builder.data_dir} and cannot '
          f'be downloaded (no network). {OFFLINE_HINT}')
    logging.info('Downloading and preparing %s into %s.', name, data_dir)
    builder.download_and_prepare()
  return TFDSSource(builder)
