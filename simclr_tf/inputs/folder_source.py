"""Image folders: one sub-folder per class, or flat for unlabeled images;
`train/` and `val/` (or `test/`) sub-folders are the splits."""

import hashlib
import os

from absl import logging
import numpy as np
import tensorflow as tf

from simclr_tf.config import DEFAULT_MAX_IMAGE_PIXELS
from simclr_tf.inputs import image_files
from simclr_tf.inputs.sources import DatasetError, Source, UNLABELED
from simclr_tf.inputs.subsets import sample_per_class

# Share of a folder without train/ and val/ sub-folders held out for eval.
FOLDER_HELD_OUT_FRACTION = 0.1


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
    # Paths and stamps: what the scan cache trusts too.
    digest = hashlib.sha256(f'{path}\n{max_image_pixels}\n'.encode())
    for file in files:
      digest.update(f'{file.path}\t{file.stamp}\n'.encode())
    self._fingerprint = f'{self.name}:sha256:{digest.hexdigest()[:32]}'
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

  def fingerprint(self):
    return self._fingerprint

  def paths(self, split: str) -> list[str]:
    return [p for part in self.slices(split)
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
