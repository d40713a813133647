"""What every dataset source is: named splits of records that decode into
`{'image': uint8 [H, W, 3], 'label': int64}` examples (label -1 for
unlabeled images), with known split sizes so that pipelines can compute
steps per epoch and pad evaluation batches exactly. The sources themselves:
array_source.py, folder_source.py, tfds_source.py; catalog.py picks one by
name.
"""

import types
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf.inputs import sequential

UNLABELED = -1
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
OFFLINE_HINT = ('Offline, use --dataset=fashion_mnist (IDX files in --data_dir '
                f'or {FASHION_MNIST_SYSTEM_DIR}, Debian package '
                'dataset-fashion-mnist) or --dataset=folder:PATH.')


class DatasetError(ValueError):
  """A dataset request that cannot be served; the message is for the user."""


class SplitSlice(NamedTuple):
  splitname: str
  from_: int
  to: int


class Source:
  """A dataset with named splits.

  Examples come in two steps so that shuffling, sharding and subsetting act
  on small records (an index, a path, encoded bytes) and only the images that
  are used get decoded: `records(split)` then `decode(record)`.
  """

  name: str
  num_classes: int | None  # None when the images carry no labels.
  split_sizes: dict[str, int]
  default_eval_split: str
  native_image_size: int | None  # Side of square images when all share it.
  # Whether decoding may fail on a bad file (then pipelines skip it).
  decode_may_fail = False
  # Whether any example can be read by its index (arrays, folders, TFDS in a
  # random-access file format). Training then draws every epoch as one
  # permutation of the whole split, whatever the order of the files.
  random_access = False

  @property
  def has_labels(self) -> bool:
    return self.num_classes is not None

  def slices(self, split: str) -> list[SplitSlice]:
    """TFDS split syntax ('train[:10%]+test') -> absolute slices."""
    infos = {name: types.SimpleNamespace(num_examples=size)
             for name, size in self.split_sizes.items()}
    try:
      parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
      return [SplitSlice(p.splitname, p.from_ or 0,
                         self.split_sizes[p.splitname] if p.to is None
                         else p.to) for p in parts]
    except (ValueError, AssertionError) as e:
      raise DatasetError(
          f'Split {split!r} of {self.name}: {e} Available splits: '
          f'{", ".join(f"{k} ({v})" for k, v in self.split_sizes.items())}.'
      ) from None

  def fingerprint(self) -> str | None:
    """A digest of what the source holds (its images, labels and splits),
    equal across runs while they are unchanged; None where it cannot say,
    and then nothing computed from it is reused across runs."""
    return None

  def num_examples(self, split: str) -> int:
    return sum(part.to - part.from_ for part in self.slices(split))

  def records(self, split: str) -> tf.data.Dataset:
    """`{'record', 'label'}` for every example of `split`, in a fixed order."""
    parts = [self._records(p.splitname, p.from_, p.to)
             for p in self.slices(split)]
    dataset = parts[0]
    for part in parts[1:]:
      dataset = dataset.concatenate(part)
    return dataset

  def decode(self, record: tf.Tensor) -> tf.Tensor:
    """A record -> uint8 image [H, W, 3]."""
    raise NotImplementedError

  def record_files(self, split: str) -> list[sequential.RecordFile]:
    """For sources without random access: the files holding `split`."""
    raise NotImplementedError

  def parse(self, serialized: tf.Tensor) -> dict:
    """For sources without random access: a serialized record from
    `record_files` -> `{'record', 'label'}`."""
    raise NotImplementedError

  def load(self, split: str) -> tf.data.Dataset:
    """Decoded `{'image', 'label'}` examples of `split`, in a fixed order."""
    dataset = self.records(split).map(
        lambda ex: {'image': self.decode(ex['record']), 'label': ex['label']},
        num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.ignore_errors() if self.decode_may_fail else dataset

  def labels(self, split: str) -> np.ndarray:
    """Labels of `split` in `records` order, without decoding images."""
    return np.concatenate([self._labels(p.splitname, p.from_, p.to)
                           for p in self.slices(split)])

  def lookup(self, split: str, indices: np.ndarray | None = None):
    """For random-access sources: a function from an int64 index tensor in
    [0, n) of `split` (of `indices` when given, a subset in `records` order)
    to its `{'record', 'label'}`.

    The table holds small records (a row number, a path), never images.
    """
    parts = [self._record_arrays(p.splitname, p.from_, p.to)
             for p in self.slices(split)]
    records = np.concatenate([records for records, _ in parts])
    labels = np.concatenate([labels for _, labels in parts]).astype(np.int64)
    if indices is not None:
      records, labels = records[indices], labels[indices]
    records, labels = tf.constant(records), tf.constant(labels)
    return lambda index: {'record': tf.gather(records, index),
                          'label': tf.gather(labels, index)}

  def _record_arrays(self, split: str, start: int, stop: int):
    """(records, labels) numpy arrays of a random-access source's slice."""
    raise NotImplementedError

  def _records(self, split: str, start: int, stop: int) -> tf.data.Dataset:
    records, labels = self._record_arrays(split, start, stop)
    return tf.data.Dataset.from_tensor_slices({
        'record': records, 'label': labels.astype(np.int64)})

  def _labels(self, split: str, start: int, stop: int) -> np.ndarray:
    raise NotImplementedError


def gray_to_rgb(image):
  return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def require_labels(source: Source, purpose: str):
  """Fails with one line when `purpose` needs labels the source lacks."""
  if not source.has_labels:
    raise DatasetError(
        f'{source.name} has no labels, so it cannot be used for {purpose}. '
        'Put the images in one sub-folder per class, or pretrain only '
        '(--mode=train --train_mode=pretrain).')


def select(dataset: tf.data.Dataset, indices: np.ndarray,
           num_total: int) -> tf.data.Dataset:
  """Keeps the examples of `dataset` at `indices`."""
  keep = np.zeros(num_total, bool)
  keep[indices] = True
  keep = tf.constant(keep)
  return dataset.enumerate().filter(
      lambda i, _: tf.gather(keep, i)).map(lambda _, example: example)
