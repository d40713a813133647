"""Where images come from: Fashion-MNIST IDX files, image folders and TFDS
(tfds_source.py).

Every source yields `{'image': uint8 [H, W, 3], 'label': int64}` examples
(label -1 for unlabeled images) and knows its split sizes, so pipelines can
compute steps per epoch and pad evaluation batches exactly.
"""

import os
import types
from typing import NamedTuple

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_tf import idx
from simclr_tf import image_files
from simclr_tf import sequential
from simclr_tf.config import DataConfig
from simclr_tf.config import DEFAULT_MAX_IMAGE_PIXELS

UNLABELED = -1
FOLDER_PREFIX = 'folder:'
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
# Share of a folder without train/ and val/ sub-folders held out for eval.
FOLDER_HELD_OUT_FRACTION = 0.1
# Under --data_dir: the header checks of image folders, reused while their
# files are unchanged.
FOLDER_SCANS_DIR = 'folder_scans'
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

  def resolve(self, split: str) -> list[SplitSlice]:
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

  def num_examples(self, split: str) -> int:
    return sum(part.to - part.from_ for part in self.resolve(split))

  def records(self, split: str) -> tf.data.Dataset:
    """`{'record', 'label'}` for every example of `split`, in a fixed order."""
    parts = [self._records(p.splitname, p.from_, p.to)
             for p in self.resolve(split)]
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
                           for p in self.resolve(split)])

  def lookup(self, split: str, indices: np.ndarray | None = None):
    """For random-access sources: a function from an int64 index tensor in
    [0, n) of `split` (of `indices` when given, a subset in `records` order)
    to its `{'record', 'label'}`.

    The table holds small records (a row number, a path), never images.
    """
    parts = [self._record_arrays(p.splitname, p.from_, p.to)
             for p in self.resolve(split)]
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


class ArraySource(Source):
  """Images held in memory as numpy arrays (Fashion-MNIST, tests).

  A record is the row of the image in one array that holds every split.
  """

  def __init__(self, name, images: dict, labels: dict, num_classes,
               default_eval_split='test'):
    self.name = name
    self.num_classes = num_classes
    self.default_eval_split = default_eval_split
    self.split_sizes = {k: len(v) for k, v in images.items()}
    self._offsets, offset = {}, 0
    for split, size in self.split_sizes.items():
      self._offsets[split] = offset
      offset += size
    all_images = np.concatenate(list(images.values()))
    if all_images.ndim == 3:
      all_images = all_images[..., np.newaxis]
    self._images = tf.constant(all_images, tf.uint8)
    self._labels_by_split = labels
    height, width = all_images.shape[1:3]
    self.native_image_size = height if height == width else None

  random_access = True

  def _record_arrays(self, split, start, stop):
    offset = self._offsets[split]
    rows = np.arange(offset + start, offset + stop, dtype=np.int64)
    return rows, self._labels_by_split[split][start:stop]

  def decode(self, record):
    return gray_to_rgb(tf.gather(self._images, record))

  def _labels(self, split, start, stop):
    return self._labels_by_split[split][start:stop]


def fashion_mnist_source(directory: str) -> ArraySource:
  images, labels = {}, {}
  for split in idx.FASHION_MNIST_FILES:
    images[split], labels[split] = idx.load_fashion_mnist_split(directory,
                                                                split)
  logging.info('Fashion-MNIST from IDX files in %s.', directory)
  return ArraySource('fashion_mnist', images, labels, num_classes=10)


# --- Image folders -----------------------------------------------------------


TOO_LARGE = 'too large'
UNREADABLE = 'not a readable JPEG/PNG/BMP/GIF image'


def image_problem(file: image_files.ImageFile, max_pixels: int) -> str | None:
  """Why TF should not decode `file` (UNREADABLE, TOO_LARGE), or None."""
  if file.pixels == image_files.UNREADABLE:
    return UNREADABLE
  return TOO_LARGE if file.pixels > max_pixels else None


def _keep_readable(files, where, max_pixels):
  """Paths of the files that are readable images within the pixel limit;
  says how many were dropped, once per reason."""
  problems = [image_problem(f, max_pixels) for f in files]
  for reason in (UNREADABLE, TOO_LARGE):
    skipped = [f.path for f, problem in zip(files, problems)
               if problem == reason]
    if skipped:
      examples = ', '.join(os.path.relpath(p, where) for p in skipped[:3])
      limit = (f' (over {max_pixels} pixels, --max_image_pixels)'
               if reason == TOO_LARGE else '')
      logging.warning('Skipped %d of %d files under %s: %s%s (e.g. %s).',
                      len(skipped), len(files), where, reason, limit,
                      examples)
  return [f.path for f, problem in zip(files, problems) if problem is None]


def _under(files, directory):
  prefix = os.path.join(directory, '')
  return [f for f in files if f.path.startswith(prefix)]


def _split_dir_files(files, directory, max_pixels, class_names=None):
  """Returns (paths, labels, class_names) for one split directory, given
  the scanned files below it.

  Sub-folders are classes; without sub-folders the images are unlabeled.
  """
  subdirs = sorted(d for d in os.listdir(directory)
                   if os.path.isdir(os.path.join(directory, d))
                   and not image_files.is_hidden(d))
  if not subdirs:
    paths = _keep_readable(files, directory, max_pixels)
    return paths, np.full(len(paths), UNLABELED, np.int64), None
  class_names = class_names or subdirs
  unknown = sorted(set(subdirs) - set(class_names))
  if unknown:
    raise DatasetError(f'{directory} has class folders {unknown} that the '
                       'training split does not have; give every split the '
                       'same class folders.')
  by_class = {name: [] for name in subdirs}
  prefix = len(os.path.join(directory, ''))
  for file in files:  # One pass: ImageNet has 1000 classes, 1.28M files.
    name, separator, _ = file.path[prefix:].partition(os.sep)
    if separator and name in by_class:
      by_class[name].append(file)
  paths, labels = [], []
  for name in subdirs:
    class_paths = _keep_readable(by_class[name], directory, max_pixels)
    if not class_paths:
      raise DatasetError(f'Class folder {os.path.join(directory, name)} '
                         'has no readable images; add images or remove it.')
    paths.extend(class_paths)
    labels.extend([class_names.index(name)] * len(class_paths))
  return paths, np.array(labels, np.int64), class_names


def _hold_out(labels, fraction, seed=0):
  """Deterministic per-class split into (train, eval) index arrays: at least
  one held-out image per class that has two or more."""
  def held_out_count(members):
    return max(1, int(round(fraction * members))) if members > 1 else 0

  held_out, kept = sample_per_class(labels, held_out_count, seed)
  return kept, held_out


class FolderSource(Source):
  """Images in a folder: class sub-folders, or flat for unlabeled images.

  With `train/` and `val/` (or `test/`) sub-folders those are the splits;
  otherwise 10% of each class is held out, deterministically, as `test`.
  """

  def __init__(self, path: str,
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               scan_cache_dir: str | None = None):
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
      raise DatasetError(f'--dataset=folder:{path}: no such directory.')
    self.name = f'folder:{path}'
    self.path = path
    files = image_files.scan(path, scan_cache_dir)
    split_dirs = {s: os.path.join(path, s) for s in ('train', 'val', 'test')
                  if os.path.isdir(os.path.join(path, s))}
    self._files = {}
    if 'train' in split_dirs and len(split_dirs) > 1:
      train_dir = split_dirs.pop('train')
      paths, labels, classes = _split_dir_files(
          _under(files, train_dir), train_dir, max_image_pixels)
      self._files['train'] = (paths, labels)
      for split, directory in split_dirs.items():
        s_paths, s_labels, _ = _split_dir_files(
            _under(files, directory), directory, max_image_pixels, classes)
        self._files[split] = (s_paths, s_labels)
      self.default_eval_split = 'val' if 'val' in split_dirs else 'test'
    else:
      paths, labels, classes = _split_dir_files(files, path, max_image_pixels)
      train_idx, eval_idx = _hold_out(labels, FOLDER_HELD_OUT_FRACTION)
      self._files['train'] = ([paths[i] for i in train_idx], labels[train_idx])
      self._files['test'] = ([paths[i] for i in eval_idx], labels[eval_idx])
      self.default_eval_split = 'test'
    if not self._files['train'][0]:
      raise DatasetError(f'{path} has no readable JPEG/PNG/BMP/GIF images.')
    self.class_names = classes
    self.num_classes = len(classes) if classes else None
    self.split_sizes = {k: len(v[0]) for k, v in self._files.items()}
    self.native_image_size = None

  def paths(self, split: str) -> list[str]:
    return [p for part in self.resolve(split)
            for p in self._files[part.splitname][0][part.from_:part.to]]

  decode_may_fail = True  # The scan is cheap, not a full decode.
  random_access = True

  def _record_arrays(self, split, start, stop):
    paths, labels = self._files[split]
    return np.array(paths[start:stop], dtype=object), labels[start:stop]

  def decode(self, record):
    return tf.io.decode_image(tf.io.read_file(record), channels=3,
                              expand_animations=False)

  def _labels(self, split, start, stop):
    return self._files[split][1][start:stop]


# --- TFDS --------------------------------------------------------------------


def require_labels(source: Source, purpose: str):
  """Fails with one line when `purpose` needs labels the source lacks."""
  if not source.has_labels:
    raise DatasetError(
        f'{source.name} has no labels, so it cannot be used for {purpose}. '
        'Put the images in one sub-folder per class, or pretrain only '
        '(--mode=train --train_mode=pretrain).')


def make_source(config: DataConfig) -> Source:
  """The source named by `config.dataset`."""
  name = config.dataset
  if name.startswith(FOLDER_PREFIX):
    return FolderSource(name[len(FOLDER_PREFIX):], config.max_image_pixels,
                        scan_cache_dir=os.path.join(config.data_dir,
                                                    FOLDER_SCANS_DIR))
  if name == 'fashion_mnist':
    directory = idx.find_fashion_mnist([config.data_dir,
                                        FASHION_MNIST_SYSTEM_DIR])
    if directory:
      return fashion_mnist_source(directory)
  # Imported here: tfds_source imports this module.
  from simclr_tf import tfds_source  # pylint: disable=g-import-not-at-top
  return tfds_source.tfds_source(name, config.data_dir)


# --- Label fraction ----------------------------------------------------------


def sample_per_class(labels: np.ndarray, count, seed: int, classes=None):
  """(chosen, rest): sorted indices of `count(class size)` seeded random
  examples of each of `classes` (default: every label, UNLABELED too), and
  of their other examples."""
  rng = np.random.RandomState(seed)
  chosen, rest = [], []
  for label in np.unique(labels) if classes is None else classes:
    members = np.flatnonzero(labels == label)
    members = members[rng.permutation(len(members))]
    take = min(count(len(members)), len(members))
    chosen.extend(members[:take])
    rest.extend(members[take:])
  return (np.sort(np.array(chosen, np.int64)),
          np.sort(np.array(rest, np.int64)))


def label_fraction_indices(labels: np.ndarray, fraction: float,
                           seed: int) -> np.ndarray:
  """Sorted indices of a class-balanced, seeded subset of labeled examples.

  Every class contributes the same number of examples, round(fraction * N /
  num_classes) (at least 1, at most what the class has), as in the paper's
  1% / 10% ImageNet subsets.
  """
  classes = np.unique(labels[labels != UNLABELED])
  per_class = max(1, int(round(fraction * len(labels) / len(classes))))
  return sample_per_class(labels, lambda members: per_class, seed,
                          classes)[0]


def select(dataset: tf.data.Dataset, indices: np.ndarray,
           num_total: int) -> tf.data.Dataset:
  """Keeps the examples of `dataset` at `indices`."""
  keep = np.zeros(num_total, bool)
  keep[indices] = True
  keep = tf.constant(keep)
  return dataset.enumerate().filter(
      lambda i, _: tf.gather(keep, i)).map(lambda _, example: example)

