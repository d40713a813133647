"""Images held in memory as numpy arrays: Fashion-MNIST's IDX files, tests."""

import hashlib

from absl import logging
import numpy as np
import tensorflow as tf

from simclr_tf.inputs import idx
from simclr_tf.inputs.sources import Source, gray_to_rgb


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
    self._fingerprint = None
    self._labels_by_split = labels
    height, width = all_images.shape[1:3]
    self.native_image_size = height if height == width else None

  random_access = True

  def fingerprint(self):
    if self._fingerprint is None:
      digest = hashlib.sha256(repr(self.split_sizes).encode())
      digest.update(self._images.numpy().tobytes())
      for split in self.split_sizes:
        digest.update(np.asarray(self._labels_by_split[split],
                                 np.int64).tobytes())
      self._fingerprint = f'{self.name}:sha256:{digest.hexdigest()[:32]}'
    return self._fingerprint

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
