"""Reading TFDS datasets: TFRecord files in shuffled order (`sequential`),
ArrayRecord by index, and --cache_dataset."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import AugmentConfig, DataConfig
from simclr_tf.inputs import pipeline
from simclr_tf.inputs import sequential
from tests import helpers


@pytest.fixture(scope='module')
def tfrecord(tmp_path_factory):
  return helpers.numbered_tfds(tmp_path_factory.mktemp('tfrecord'))


@pytest.fixture(scope='module')
def array_record(tmp_path_factory):
  return helpers.numbered_tfds(tmp_path_factory.mktemp('array_record'),
                               file_format='array_record')


def _numbers(source, stream, count):
  """(positions, example numbers) of the first `count` stream elements."""
  numbers = stream.take(count).map(
      lambda position, record: (position,
                                source.decode(record['record'])[0, 0, 0]))
  pairs = list(numbers.as_numpy_iterator())
  return [int(p) for p, _ in pairs], np.array([int(n) for _, n in pairs])


def _stream(source, first=0, keep=None, seed=1):
  return sequential.shuffled_stream(
      source.record_files('train'), source.parse, seed=seed, first=first,
      keep=keep, window=4, files_per_group=3)


def test_tfrecord_epochs_visit_every_example_once_in_new_orders(tfrecord):
  assert not tfrecord.random_access
  assert len(tfrecord.record_files('train')) == 8
  positions, numbers = _numbers(tfrecord, _stream(tfrecord), 180)
  assert positions == list(range(180))
  epochs = numbers.reshape(3, 60)
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(60))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.sort(epochs[0]))
  _, other_seed = _numbers(tfrecord, _stream(tfrecord, seed=2), 60)
  assert not np.array_equal(other_seed, epochs[0])


def test_a_resumed_tfrecord_stream_is_the_same_stream(tfrecord):
  _, whole = _numbers(tfrecord, _stream(tfrecord), 200)
  for first in (1, 6, 23, 59, 60, 61, 131):
    positions, resumed = _numbers(tfrecord, _stream(tfrecord, first), 30)
    assert positions == list(range(first, first + 30))
    np.testing.assert_array_equal(resumed, whole[first:first + 30])


def test_resuming_skips_whole_file_groups_without_reading_them(
    tfrecord, monkeypatch):
  read = []
  real = tf.data.TFRecordDataset

  def counting(name):
    def count(serialized):
      read.append(1)
      return serialized
    return real(name).map(lambda r: tf.ensure_shape(
        tf.numpy_function(count, [r], tf.string, stateful=True), []))
  monkeypatch.setattr(tf.data, 'TFRecordDataset', counting)
  _numbers(tfrecord, _stream(tfrecord, first=0), 1)
  from_start = len(read)
  read.clear()
  # Position 58 lies in the last group of 2 or 3 files (at most 24 records).
  _numbers(tfrecord, _stream(tfrecord, first=58), 1)
  assert len(read) <= 24 < 58
  assert from_start <= 24


def test_a_label_fraction_subset_of_tfrecords(tfrecord):
  # Indices count in the split's order (TFDS shuffled the examples when
  # writing the files), not in example numbers.
  in_split_order = [int(tfrecord.decode(r['record'])[0, 0, 0])
                    for r in tfrecord.records('train')]
  chosen = [3, 4, 17, 30, 31, 58]
  keep = np.zeros(60, bool)
  keep[chosen] = True
  _, numbers = _numbers(tfrecord, _stream(tfrecord, keep=keep), 18)
  for epoch in numbers.reshape(3, 6):
    assert sorted(epoch.tolist()) == sorted(in_split_order[i]
                                            for i in chosen)
  _, resumed = _numbers(tfrecord, _stream(tfrecord, first=8, keep=keep), 4)
  np.testing.assert_array_equal(resumed, numbers[8:12])


def _epoch_labels(source, split=pipeline.Split('train'), input_context=None,
                  cache=False, batches=10, batch_size=6):
  dataset = pipeline.train_dataset(
      source, split, global_batch_size=batch_size,
      augment_config=AugmentConfig(image_size=4),
      data=DataConfig(seed=0, cache_dataset=cache, shuffle_buffer=8), views=1,
      input_context=input_context)
  return np.concatenate([b['label'] for b in
                         dataset.take(batches).as_numpy_iterator()])


@pytest.mark.parametrize('cache', [False, True])
def test_training_batches_from_tfrecords_cover_the_split(tfrecord, cache):
  # 60 examples, label number % 5: each label 12 times an epoch.
  labels = _epoch_labels(tfrecord, cache=cache)
  assert np.bincount(labels, minlength=5).tolist() == [12] * 5


def test_input_pipelines_read_disjoint_tfrecord_files(tfrecord):
  counts = []
  for pipeline_id in (0, 1):
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=pipeline_id,
        num_replicas_in_sync=2)
    files = tfrecord.record_files('train')[pipeline_id::2]
    size = sum(f.take for f in files)
    labels = _epoch_labels(tfrecord, input_context=context, batches=size,
                           batch_size=2)[:size]
    counts.append(np.bincount(labels, minlength=5))
  assert (counts[0] + counts[1]).tolist() == [12] * 5


def test_array_record_is_read_by_index(array_record):
  assert array_record.random_access
  labels = _epoch_labels(array_record)
  assert np.bincount(labels, minlength=5).tolist() == [12] * 5
  in_split_order = [int(array_record.decode(r['record'])[0, 0, 0])
                    for r in array_record.records('train')]
  lookup = array_record.lookup('train[10:30]', np.array([0, 7, 19]))
  numbers = [int(array_record.decode(lookup(tf.constant(i, tf.int64))
                                     ['record'])[0, 0, 0]) for i in range(3)]
  assert numbers == [in_split_order[i] for i in (10, 17, 29)]
  subset = _epoch_labels(array_record, pipeline.Split('train', np.arange(10)),
                         batches=5, batch_size=2)
  assert sorted(subset.tolist()) == sorted(in_split_order[i] % 5
                                           for i in range(10))
