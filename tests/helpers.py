"""Small image files and folders for tests."""

import io
import os

import numpy as np
from PIL import Image
import tensorflow as tf


def encode(array, fmt, mode=None, **kwargs) -> bytes:
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def random_rgb(rng, height=20, width=24):
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_class_folder(root, rng, classes=('cat', 'dog'), per_class=5,
                      size=(20, 24)):
  """Writes `per_class` PNG images into one sub-folder per class."""
  for name in classes:
    for i in range(per_class):
      write(os.path.join(root, name, f'{i}.png'),
            encode(random_rgb(rng, *size), 'PNG'))
  return root


def cpu_strategy(num_replicas: int) -> tf.distribute.Strategy:
  """MirroredStrategy over the first `num_replicas` logical CPUs."""
  devices = [f'/cpu:{i}' for i in range(num_replicas)]
  return tf.distribute.MirroredStrategy(
      devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
