"""Sources (folders, arrays, TFDS), split slicing and label fractions."""

import logging
import os
import time

import numpy as np
import pytest

from simclr_tf.config import DataConfig
from simclr_tf.inputs import array_source
from simclr_tf.inputs import catalog
from simclr_tf.inputs import folder_source
from simclr_tf.inputs import sources
from simclr_tf.inputs import subsets
from simclr_tf.inputs import tfds_source
from tests import helpers


def _all(source, split):
  examples = list(source.load(split).as_numpy_iterator())
  return [e['image'] for e in examples], np.array([e['label']
                                                   for e in examples])


def test_folder_with_mixed_formats_skips_and_counts_bad_files(tmp_path, rng,
                                                              caplog):
  root = tmp_path / 'pets'
  rgb = helpers.random_rgb(rng)
  good = {
      'cat/a.jpg': helpers.encode(rgb, 'JPEG'),
      'cat/b_gray.png': helpers.encode(rgb[..., 0], 'PNG'),
      'cat/c_rgba.PNG': helpers.encode(rgb, 'PNG', mode='RGBA'),
      'dog/d.bmp': helpers.encode(rgb, 'BMP'),
      'dog/e_palette.gif': helpers.encode(rgb, 'GIF', mode='P'),
      'dog/f_cmyk.jpeg': helpers.encode(rgb, 'JPEG', mode='CMYK'),
      'dog/g_16bit.png': helpers.encode(
          (rgb[..., 0].astype(np.uint16) * 257), 'PNG', mode='I;16'),
  }
  jpeg = helpers.encode(rgb, 'JPEG')
  bad = {
      'cat/corrupt.jpg': jpeg[:len(jpeg) // 2],
      'cat/empty.png': b'',
      'dog/notes.txt': b'not an image',
  }
  for name, data in {**good, **bad}.items():
    helpers.write(str(root / name), data)
  # Held-out split would take images away; give explicit splits instead.
  for name, data in good.items():
    helpers.write(str(root / 'train' / name), data)
    helpers.write(str(root / 'val' / name), data)
  for name, data in bad.items():
    helpers.write(str(root / 'train' / name), data)

  with caplog.at_level(logging.WARNING):
    source = folder_source.FolderSource(str(root))
  assert source.class_names == ['cat', 'dog'] and source.num_classes == 2
  assert source.split_sizes == {'train': 7, 'val': 7}
  assert source.default_eval_split == 'val'
  assert any('Skipped 2 of 5' in r.getMessage() for r in caplog.records)
  assert any('Skipped 1 of 5' in r.getMessage() for r in caplog.records)
  images, labels = _all(source, 'train')
  assert len(images) == 7 and labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
  assert all(image.shape == (20, 24, 3) for image in images)
  # The RGBA image keeps its colours; the gray ones are replicated.
  np.testing.assert_array_equal(images[2], rgb)
  assert (images[1][..., 0] == images[1][..., 2]).all()


def test_folder_skips_images_above_the_pixel_limit_before_decoding(
    tmp_path, rng, caplog):
  root = helpers.make_class_folder(str(tmp_path / 'f'), rng, per_class=3,
                                   size=(20, 24))
  helpers.write(f'{root}/cat/big.png',
                helpers.encode(helpers.random_rgb(rng, 30, 40), 'PNG'))
  # 57 bytes declaring 12000 x 12000 pixels (430 MB decoded).
  helpers.write(f'{root}/dog/bomb.png', helpers.png_header(12000, 12000))
  with caplog.at_level(logging.WARNING):
    source = folder_source.FolderSource(root, max_image_pixels=1000)
  paths = source.paths('train') + source.paths('test')
  assert len(paths) == 6 and not any('big' in p or 'bomb' in p
                                     for p in paths)
  messages = [r.getMessage() for r in caplog.records]
  assert any('Skipped 1 of 4' in m and 'too large (over 1000 pixels' in m
             for m in messages), messages
  # The default limit keeps the 30 x 40 image and still refuses the bomb.
  default = folder_source.FolderSource(root)
  paths = default.paths('train') + default.paths('test')
  assert any('big' in p for p in paths) and not any('bomb' in p
                                                    for p in paths)


def test_folder_without_split_folders_holds_out_a_deterministic_tenth(
    tmp_path, rng):
  root = helpers.make_class_folder(str(tmp_path / 'f'), rng,
                                   classes=('a', 'b', 'c'), per_class=20)
  first = folder_source.FolderSource(root)
  second = folder_source.FolderSource(root)
  assert first.split_sizes == {'train': 54, 'test': 6}
  assert first.paths('test') == second.paths('test')
  assert not set(first.paths('train')) & set(first.paths('test'))
  assert np.bincount(first.labels('test')).tolist() == [2, 2, 2]


def test_flat_folder_is_unlabeled_and_evaluation_says_so(tmp_path, rng):
  for i in range(6):
    helpers.write(str(tmp_path / f'{i}.png'),
                  helpers.encode(helpers.random_rgb(rng), 'PNG'))
  source = folder_source.FolderSource(str(tmp_path))
  assert not source.has_labels
  assert set(source.labels('train').tolist()) == {sources.UNLABELED}
  with pytest.raises(sources.DatasetError, match='has no labels'):
    sources.require_labels(source, 'linear evaluation')


def test_folder_errors_are_one_clear_line(tmp_path, rng):
  with pytest.raises(sources.DatasetError, match='no such directory'):
    folder_source.FolderSource(str(tmp_path / 'missing'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(sources.DatasetError, match='no readable'):
    folder_source.FolderSource(str(tmp_path / 'empty'))
  root = helpers.make_class_folder(str(tmp_path / 'c'), rng)
  os.makedirs(os.path.join(root, 'zebra'))
  helpers.write(os.path.join(root, 'zebra', 'x.txt'), b'text')
  with pytest.raises(sources.DatasetError, match='zebra has no readable'):
    folder_source.FolderSource(root)


def _array_source(n_train=100, n_test=30, num_classes=10):
  images = {'train': np.zeros((n_train, 4, 4), np.uint8),
            'test': np.zeros((n_test, 4, 4), np.uint8)}
  labels = {'train': np.arange(n_train) % num_classes,
            'test': np.arange(n_test) % num_classes}
  return array_source.ArraySource('toy', images, labels, num_classes)


def test_split_slicing_follows_tfds_syntax():
  source = _array_source()
  assert source.num_examples('train[:10%]') == 10
  assert source.num_examples('train[-5:]+test[:2]') == 7
  rows = [int(r['record']) for r in
          source.records('train[-5:]+test[:2]').as_numpy_iterator()]
  assert rows == [95, 96, 97, 98, 99, 100, 101]
  with pytest.raises(sources.DatasetError, match='Available splits'):
    source.num_examples('validation')


def test_label_fraction_is_class_balanced_and_seeded():
  labels = np.repeat(np.arange(10), [100, 120, 80, 100, 100, 100, 90, 110,
                                     100, 100])
  labels = np.random.default_rng(0).permutation(labels)
  first = subsets.label_fraction_indices(labels, 0.1, seed=3)
  again = subsets.label_fraction_indices(labels, 0.1, seed=3)
  other = subsets.label_fraction_indices(labels, 0.1, seed=4)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert np.bincount(labels[first]).tolist() == [10] * 10
  assert len(set(first.tolist())) == len(first)
  one_percent = subsets.label_fraction_indices(labels, 0.01, seed=0)
  assert np.bincount(labels[one_percent]).tolist() == [1] * 10


def test_select_keeps_exactly_the_given_indices():
  source = _array_source()
  keep = np.array([3, 17, 42, 99])
  selected = sources.select(source.records('train'), keep, 100)
  assert [int(r['record']) for r in selected.as_numpy_iterator()] == [
      3, 17, 42, 99]


def test_tfds_source_reads_a_prepared_builder(tmp_path):
  helpers.SimclrTestTinyImages(data_dir=str(tmp_path)).download_and_prepare()
  source = catalog.make_source(DataConfig(dataset='simclr_test_tiny_images',
                                           data_dir=str(tmp_path)))
  assert isinstance(source, tfds_source.TFDSSource)
  assert source.split_sizes == {'train': 12, 'test': 6}
  assert source.num_classes == 3 and source.native_image_size == 8
  images, labels = _all(source, 'train[:50%]')
  assert sorted(labels.tolist()) == sorted([i % 3 for i in range(6)])
  assert all(image.shape == (8, 8, 3) for image in images)
  assert sorted(source.labels('train').tolist()) == sorted(
      [i % 3 for i in range(12)])


def test_unknown_tfds_name_suggests_a_close_one(tmp_path):
  with pytest.raises(sources.DatasetError, match="Did you mean cifar100"):
    catalog.make_source(DataConfig(dataset='cifar100x',
                                    data_dir=str(tmp_path)))


def test_unprepared_tfds_dataset_offline_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, '_network_reachable', lambda: False)
  start = time.time()
  with pytest.raises(sources.DatasetError) as error:
    catalog.make_source(DataConfig(dataset='cifar10',
                                    data_dir=str(tmp_path)))
  assert time.time() - start < 10
  message = str(error.value)
  assert "'cifar10' is not prepared" in message and str(tmp_path) in message
  assert '--dataset=fashion_mnist' in message and 'folder:PATH' in message
  assert '\n' not in message
