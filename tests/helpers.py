"""Small image files and folders for tests."""

import io
import os
import struct
import zlib

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


def png_header(width, height) -> bytes:
  """A 57-byte PNG whose header declares width x height (its pixels never
  come: decoding it would fail or take width x height x 3 bytes)."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b'')


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
