"""The IDX reader and writer on hand-made files, and Fashion-MNIST read from
the release's IDX files (the tests' sample of them)."""

import gzip
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from simclr_tf.config import DataConfig
from simclr_tf.inputs import catalog
from simclr_tf.inputs import idx
from tests import helpers

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_idx(path, array, type_code=0x08):
  header = bytes([0, 0, type_code, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())


@pytest.mark.parametrize('name', ['images.idx', 'images.idx.gz'])
def test_read_idx_round_trips(tmp_path, rng, name):
  array = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  path = str(tmp_path / name)
  _write_idx(path, array)
  np.testing.assert_array_equal(idx.read_idx(path), array)


def test_read_idx_reads_big_endian_ints(tmp_path):
  array = np.array([1, -2, 70000], '>i4')
  _write_idx(str(tmp_path / 'x.idx'), array, type_code=0x0C)
  assert idx.read_idx(str(tmp_path / 'x.idx')).tolist() == [1, -2, 70000]


def test_read_idx_rejects_bad_and_truncated_files(tmp_path):
  (tmp_path / 'bad').write_bytes(b'\x01\x02\x08\x01')
  with pytest.raises(ValueError, match='not an IDX file'):
    idx.read_idx(str(tmp_path / 'bad'))
  _write_idx(str(tmp_path / 'ok'), np.zeros((10, 4), np.uint8))
  data = (tmp_path / 'ok').read_bytes()
  (tmp_path / 'short').write_bytes(data[:-5])
  with pytest.raises(ValueError, match='truncated'):
    idx.read_idx(str(tmp_path / 'short'))


def test_write_idx_writes_what_the_hand_made_writer_does(tmp_path, rng):
  for array, code in ((rng.integers(0, 256, (4, 3, 2), dtype=np.uint8), 0x08),
                      (np.array([1, -2, 70000], np.int32), 0x0C),
                      (np.array([[0.5, -1e30]]), 0x0E)):
    ours, reference = str(tmp_path / 'ours.gz'), str(tmp_path / 'ref.gz')
    idx.write_idx(ours, array)
    _write_idx(reference, array.astype(array.dtype.newbyteorder('>')), code)
    with gzip.open(ours) as a, gzip.open(reference) as b:
      assert a.read() == b.read()
  # The same array gives the same bytes: a sample can be committed.
  first = (tmp_path / 'ours.gz').read_bytes()
  idx.write_idx(str(tmp_path / 'ours.gz'), array)
  assert (tmp_path / 'ours.gz').read_bytes() == first


def test_fashion_mnist_is_read_from_idx_files_in_data_dir(tmp_path):
  """The offline path: the release's four IDX files under --data_dir (the
  tests' sample, written here with the hand-made writer) become a source
  of 28 px RGB images with their labels."""
  data_dir = tmp_path / 'data'
  (data_dir / 'fashion_mnist').mkdir(parents=True)
  sample = {}
  for split, (image_file, label_file) in idx.FASHION_MNIST_FILES.items():
    with gzip.open(os.path.join(helpers.FASHION_MNIST_SAMPLE,
                                image_file)) as f:
      images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28)
    with gzip.open(os.path.join(helpers.FASHION_MNIST_SAMPLE,
                                label_file)) as f:
      labels = np.frombuffer(f.read()[8:], np.uint8)
    _write_idx(str(data_dir / 'fashion_mnist' / image_file), images)
    _write_idx(str(data_dir / 'fashion_mnist' / label_file), labels)
    sample[split] = images, labels
  source = catalog.make_source(DataConfig(dataset='fashion_mnist',
                                          data_dir=str(data_dir)))
  assert source.split_sizes == {'train': 300, 'test': 100}
  assert source.num_classes == 10 and source.native_image_size == 28
  train_labels = source.labels('train')
  test_labels = source.labels('test')
  # The sample: the first 30 training and 10 test images of every class.
  assert np.bincount(train_labels).tolist() == [30] * 10
  assert np.bincount(test_labels).tolist() == [10] * 10
  np.testing.assert_array_equal(train_labels, sample['train'][1])
  # The first training and test images are both ankle boots (class 9).
  assert train_labels[0] == 9 and test_labels[0] == 9
  for split in ('train', 'test'):
    first = next(iter(source.load(split)))
    assert first['image'].shape == (28, 28, 3)
    image = first['image'].numpy()
    assert (image[..., 0] == image[..., 2]).all() and image.max() > 200
    np.testing.assert_array_equal(image[..., 1], sample[split][0][0])


def test_find_fashion_mnist_looks_in_data_dir_subfolders(tmp_path):
  target = tmp_path / 'fashion_mnist'
  target.mkdir()
  for pair in idx.FASHION_MNIST_FILES.values():
    for name in pair:
      (target / name).write_bytes(b'')
  assert idx.find_fashion_mnist([str(tmp_path)]) == str(target)
  os.remove(target / 't10k-labels-idx1-ubyte.gz')
  assert idx.find_fashion_mnist([str(tmp_path)]) is None


def test_fashion_mnist_folder_script_writes_the_images_by_class(tmp_path,
                                                               rng):
  data = tmp_path / 'idx'
  data.mkdir()
  splits = {}
  for split, count in (('train', 30), ('test', 12)):
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = np.arange(count, dtype=np.uint8) % 10
    image_file, label_file = idx.FASHION_MNIST_FILES[split]
    _write_idx(str(data / image_file), images)
    _write_idx(str(data / label_file), labels)
    splits[split] = images, labels
  out = tmp_path / 'folder'
  subprocess.run([sys.executable, 'scripts/fashion_mnist_folder.py',
                  f'--output={out}', f'--data_dir={data}',
                  '--train_per_class=2', '--test_per_class=1'],
                 check=True, capture_output=True, cwd=_REPO)
  train_files = sorted((out / 'train').glob('*/*.png'))
  assert len(train_files) == 20 and len(list((out / 'test').glob('*/*'))) == 10
  # The first two images of each class, pixel for pixel, under its name.
  images, labels = splits['train']
  for path in train_files:
    row = int(path.stem)
    assert path.parent.name.startswith(f'{labels[row]}_') and row < 20
    np.testing.assert_array_equal(np.asarray(Image.open(path)), images[row])
