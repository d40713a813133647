"""Reader for the IDX format of (Fashion-)MNIST's original distribution files."""

import gzip
import os

import numpy as np

# IDX type codes -> numpy element types (all big-endian on disk).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4',
               0x0D: '>f4', 0x0E: '>f8'}


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzip-compressed) into a numpy array."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f'{path} is not an IDX file (bad magic number).')
  dtype = _IDX_DTYPES.get(data[2])
  if dtype is None:
    raise ValueError(f'{path}: unknown IDX element type 0x{data[2]:02x}.')
  num_dims = data[3]
  header_size = 4 + 4 * num_dims
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big')
                for i in range(num_dims))
  array = np.frombuffer(data, dtype=dtype, offset=header_size)
  if array.size != int(np.prod(shape)):
    raise ValueError(f'{path} is truncated: header says {shape}, '
                     f'found {array.size} elements.')
  return array.reshape(shape)


def write_idx(path: str, array: np.ndarray):
  """Writes `array` as an IDX file (gzip-compressed where `path` ends in
  .gz), the inverse of read_idx."""
  array = np.asarray(array)
  code = next((code for code, dtype in _IDX_DTYPES.items()
               if np.dtype(dtype).newbyteorder('>') ==
               array.dtype.newbyteorder('>')), None)
  if code is None:
    raise ValueError(f'IDX has no element type for {array.dtype}.')
  header = bytes([0, 0, code, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  big_endian = array.astype(np.dtype(_IDX_DTYPES[code]).newbyteorder('>'))
  # mtime=0: the same array gives the same bytes (committed samples).
  with (gzip.GzipFile(path, 'wb', mtime=0) if path.endswith('.gz')
        else open(path, 'wb')) as f:
    f.write(header + big_endian.tobytes())


# The four files of the original Fashion-MNIST release, per split.
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


def find_fashion_mnist(search_dirs) -> str | None:
  """First directory (or its `fashion_mnist/` sub-folder) with all four files."""
  needed = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
  for directory in search_dirs:
    for candidate in (directory, os.path.join(directory, 'fashion_mnist'),
                      os.path.join(directory, 'fashion-mnist')):
      if all(os.path.isfile(os.path.join(candidate, n)) for n in needed):
        return candidate
  return None


def load_fashion_mnist_split(directory: str, split: str):
  """Returns (images uint8 [N, 28, 28], labels int64 [N])."""
  image_file, label_file = FASHION_MNIST_FILES[split]
  images = read_idx(os.path.join(directory, image_file))
  labels = read_idx(os.path.join(directory, label_file)).astype(np.int64)
  if len(images) != len(labels):
    raise ValueError(f'{directory}: {len(images)} images but {len(labels)} '
                     f'labels in the {split} split.')
  return images, labels
