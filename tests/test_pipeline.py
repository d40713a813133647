"""Input pipelines: training batches, sharding and exactly-once evaluation."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import AugmentConfig, DataConfig
from simclr_tf.inputs import array_source
from simclr_tf.inputs import folder_source
from simclr_tf.inputs import image_files
from simclr_tf.inputs import pipeline
from tests import helpers

_AUGMENT = AugmentConfig(image_size=16, use_blur=True)


def _source(n_train=40, n_test=37):
  """Labels are the example ids, so tests can tell examples apart."""
  rng = np.random.default_rng(0)
  images = {'train': rng.integers(0, 256, (n_train, 20, 20, 3), np.uint8),
            'test': rng.integers(0, 256, (n_test, 20, 20, 3), np.uint8)}
  labels = {'train': np.arange(n_train), 'test': np.arange(n_test)}
  return array_source.ArraySource('ids', images, labels, num_classes=None)


def _first_batches(dataset, n):
  return list(dataset.take(n).as_numpy_iterator())


def _ramp_source(count=16):
  """20 px horizontal ramps: a view's span of values is the width it was
  cropped from."""
  ramp = np.tile(np.linspace(0, 255, 20).astype(np.uint8)[None, :, None],
                 [20, 1, 3])
  return array_source.ArraySource(
      'ramp', {'train': np.stack([ramp] * count)},
      {'train': np.zeros(count, np.int64)}, num_classes=1)


def test_pretrain_batches_hold_two_different_views_in_range():
  source = _source()
  dataset = pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=8,
      augment_config=_AUGMENT, data=DataConfig(seed=1), views=2)
  batch = _first_batches(dataset, 1)[0]
  assert batch['view1'].shape == (8, 16, 16, 3)
  assert batch['view2'].shape == (8, 16, 16, 3)
  assert batch['label'].shape == (8,)
  for view in ('view1', 'view2'):
    assert batch[view].min() >= 0 and batch[view].max() <= 1
  assert np.abs(batch['view1'] - batch['view2']).max() > 0.05


def test_small_views_leave_the_two_views_as_they_were():
  source = _source()
  batches = lambda augment: _first_batches(pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=8,
      augment_config=augment, data=DataConfig(seed=1), views=2), 2)
  two_views = batches(_AUGMENT)
  multi_crop = batches(dataclasses.replace(_AUGMENT, num_small_crops=3))
  for plain, multi in zip(two_views, multi_crop):
    assert 'small_views' not in plain
    for key in ('view1', 'view2', 'label'):
      np.testing.assert_array_equal(plain[key], multi[key])
    small = multi['small_views']  # Half the side by default.
    assert small.shape == (8, 3, 8, 8, 3) and small.dtype == np.float32
    assert small.min() >= 0 and small.max() <= 1
    assert np.abs(small[:, 0] - small[:, 1]).max() > 0.05


def test_small_views_are_crops_of_their_area_range():
  # Areas up to 0.14 with aspect ratios up to 4/3 are at most
  # sqrt(0.14 * 4/3) = 0.43 of the width; the two views reach the whole.
  source = _ramp_source()
  augment = AugmentConfig(image_size=16, num_small_crops=4, small_crop_size=6,
                          jitter_prob=0.0, grayscale_prob=0.0,
                          use_blur=False, min_crop_area=0.2)
  batch = _first_batches(pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=16,
      augment_config=augment, data=DataConfig(seed=3), views=2), 1)[0]
  span = lambda views: views[..., 0].max(-1) - views[..., 0].min(-1)
  small_spans = span(batch['small_views'])
  assert batch['small_views'].shape == (16, 4, 6, 6, 3)
  assert small_spans.max() <= 0.45
  assert span(batch['view1']).max() > 0.8
  assert small_spans.mean() < span(batch['view1']).mean() - 0.2


def test_smaller_views_are_the_same_crops_at_view_size():
  # A view's span of values is the width of its crop at any --view_size.
  source = _ramp_source()
  augment = AugmentConfig(image_size=16, jitter_prob=0.0, grayscale_prob=0.0,
                          use_blur=False, min_crop_area=0.2)
  first = lambda config: _first_batches(pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=16,
      augment_config=config, data=DataConfig(seed=3), views=2,
      eval_view=True), 1)[0]
  full = first(augment)
  small = first(dataclasses.replace(augment, view_size=10))
  span = lambda views: views[..., 0].max(-1) - views[..., 0].min(-1)
  for view in ('view1', 'view2'):
    assert small[view].shape == (16, 10, 10, 3)
    np.testing.assert_allclose(span(small[view]).mean(1),
                               span(full[view]).mean(1), atol=0.06)
  # The supervised head's evaluation view stays at the image size.
  np.testing.assert_array_equal(small['eval_view'], full['eval_view'])
  assert full['eval_view'].shape == (16, 16, 16, 3)


def test_training_batches_repeat_for_the_same_seed_only():
  source = _source()

  def batches(seed):
    return _first_batches(pipeline.train_dataset(
        source, pipeline.Split('train'), global_batch_size=8,
        augment_config=_AUGMENT, data=DataConfig(seed=seed), views=2), 6)

  first, again, other = batches(5), batches(5), batches(6)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['view1'], b['view1'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert any(not np.array_equal(a['label'], c['label'])
             for a, c in zip(first, other))
  # Six batches of 8 span more than one epoch of 40 and every id shows up.
  ids = np.concatenate([b['label'] for b in first])
  assert set(ids[:40].tolist()) == set(range(40))


def test_finetune_batches_use_only_the_label_fraction_subset():
  source = _source()
  keep = np.array([1, 5, 9, 30])
  dataset = pipeline.train_dataset(
      source, pipeline.Split('train', keep), global_batch_size=4,
      augment_config=_AUGMENT, data=DataConfig(seed=0), views=1)
  batches = _first_batches(dataset, 5)
  assert batches[0]['image'].shape == (4, 16, 16, 3)
  seen = np.concatenate([b['label'] for b in batches])
  assert set(seen.tolist()) == {1, 5, 9, 30}


def test_distillation_batches_hide_every_label_outside_the_labeled_subset():
  source = _source()
  labeled = np.array([1, 5, 9, 30])

  def batches(split):
    return _first_batches(pipeline.train_dataset(
        source, split, global_batch_size=8, augment_config=_AUGMENT,
        data=DataConfig(seed=2), views=1), 5)

  # The same images in the same order as reading every label; an id (the
  # label) is kept only in the subset.
  hidden, plain = batches(pipeline.Split('train', labeled=labeled)), batches(
      pipeline.Split('train'))
  for h, p in zip(hidden, plain):
    np.testing.assert_array_equal(h['image'], p['image'])
    np.testing.assert_array_equal(
        h['label'], np.where(np.isin(p['label'], labeled), p['label'], -1))
  epoch = np.concatenate([b['label'] for b in hidden])[:40]
  assert sorted(epoch[epoch >= 0].tolist()) == [1, 5, 9, 30]


def _distributed_ids(strategy, make_dataset, steps):
  dist = strategy.distribute_datasets_from_function(make_dataset)
  seen = []
  for _, batch in zip(range(steps), dist):
    for part in strategy.experimental_local_results(batch):
      seen.append(part)
  return seen


def test_training_input_is_sharded_per_replica_batch():
  strategy = helpers.cpu_strategy(2)
  source = _source()
  parts = _distributed_ids(strategy, lambda ctx: pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=8,
      augment_config=_AUGMENT, data=DataConfig(seed=0), views=2,
      input_context=ctx), 2)
  assert len(parts) == 4
  assert all(p['view1'].shape == (4, 16, 16, 3) for p in parts)


@pytest.mark.parametrize('replicas,global_batch', [(1, 8), (2, 8), (4, 8),
                                                    (4, 12)])
def test_eval_pipeline_sees_every_example_exactly_once(replicas,
                                                       global_batch):
  source = _source(n_test=37)
  strategy = helpers.cpu_strategy(replicas)
  steps = pipeline.eval_num_steps(37, global_batch)
  parts = _distributed_ids(strategy, lambda ctx: pipeline.eval_dataset(
      source, pipeline.Split('test'), global_batch_size=global_batch,
      augment_config=_AUGMENT, input_context=ctx), steps + 1)
  # Exactly `steps` steps of full per-replica batches, nothing after.
  assert len(parts) == steps * replicas
  assert all(p['image'].shape[0] == global_batch // replicas for p in parts)
  labels = np.concatenate([p['label'].numpy() for p in parts])
  mask = np.concatenate([p['mask'].numpy() for p in parts])
  assert sorted(labels[mask == 1].tolist()) == list(range(37))
  assert (labels[mask == 0] == -1).all()
  assert mask.sum() == 37


def test_eval_images_are_the_deterministic_eval_view():
  source = _source(n_test=5)
  batch = _first_batches(pipeline.eval_dataset(
      source, pipeline.Split('test'), global_batch_size=8,
      augment_config=AugmentConfig(image_size=20)), 1)[0]
  images = source.load('test')
  expected = np.stack([e['image'] / 255.0 for e in
                       images.as_numpy_iterator()])
  np.testing.assert_allclose(batch['image'][:5], expected, atol=1e-6)
  assert (batch['image'][5:] == 0).all()


def test_folder_pipeline_skips_a_file_that_fails_to_decode(tmp_path, rng,
                                                           monkeypatch):
  root = helpers.make_class_folder(str(tmp_path / 'f'), rng, per_class=4)
  # A file that passes the cheap scan but does not decode: the pipeline must
  # skip it rather than crash mid-epoch.
  monkeypatch.setattr(image_files, 'header_pixels', lambda path: 1)
  helpers.write(f'{root}/cat/zz_broken.png', b'\x89PNG\r\n\x1a\n broken')
  source = folder_source.FolderSource(root)
  dataset = pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=2,
      augment_config=_AUGMENT, data=DataConfig(seed=0), views=2)
  batches = _first_batches(dataset, 12)
  assert len(batches) == 12
  assert all(b['view1'].shape == (2, 16, 16, 3) for b in batches)


@pytest.mark.parametrize('views', [1, 2])
def test_a_resumed_stream_continues_exactly_where_it_stopped(views):
  source = _source(n_train=13)

  def batches(start_step, count):
    return _first_batches(pipeline.train_dataset(
        source, pipeline.Split('train'), global_batch_size=4,
        augment_config=_AUGMENT, data=DataConfig(seed=7), views=views,
        start_step=start_step), count)

  # 9 steps of 4 cross two epoch boundaries of 13 examples.
  whole = batches(0, 9)
  for start in (1, 3, 4, 7):
    for a, b in zip(whole[start:], batches(start, 9 - start)):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])
  # Each epoch visits every example once, in a new order.
  ids = np.concatenate([b['label'] for b in whole])
  assert sorted(ids[:13]) == list(range(13))
  assert sorted(ids[13:26]) == list(range(13))
  assert list(ids[:13]) != list(ids[13:26])


def test_resuming_across_replicas_continues_each_replica_stream():
  source = _source(n_train=10)
  strategy = helpers.cpu_strategy(2)

  def ids(start_step, steps):
    parts = _distributed_ids(strategy, lambda ctx: pipeline.train_dataset(
        source, pipeline.Split('train'), global_batch_size=4,
        augment_config=_AUGMENT, data=DataConfig(seed=1), views=1,
        input_context=ctx, start_step=start_step), steps)
    return [p['label'].numpy().tolist() for p in parts]

  assert ids(0, 5)[4:] == ids(2, 3)


def _epochs_of(stream, num_examples, epochs):
  pairs = list(stream.take(num_examples * epochs).as_numpy_iterator())
  positions = np.array([p for p, _ in pairs])
  indices = np.array([i for _, i in pairs])
  return positions, indices.reshape(epochs, num_examples)


def test_every_epoch_is_a_new_permutation_of_the_whole_split():
  n = 1000
  positions, epochs = _epochs_of(pipeline.shuffled_positions(n, seed=3), n, 3)
  assert positions.tolist() == list(range(3 * n))
  for epoch in epochs:
    assert sorted(epoch.tolist()) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])
  # Neither sorted nor only locally mixed: the first 100 positions come
  # from all over the split.
  assert epochs[0][:100].min() < 100 and epochs[0][:100].max() > 900
  # Another seed, another order; a stream starting at 1234, every 3rd
  # position, is the same stream.
  _, other = _epochs_of(pipeline.shuffled_positions(n, seed=4), n, 1)
  assert not np.array_equal(other[0], epochs[0])
  resumed = list(pipeline.shuffled_positions(n, seed=3, start=1234, every=3)
                 .take(400).as_numpy_iterator())
  assert [p for p, _ in resumed] == list(range(1234, 1234 + 1200, 3))
  assert [i for _, i in resumed] == epochs.reshape(-1)[1234:2434:3].tolist()


def test_batches_of_a_class_sorted_folder_mix_all_classes(tmp_path, rng):
  """Folders list classes one after another (ImageNet's layout); batches
  must still look like uniform draws from the whole folder."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  classes = [f'c{i:02d}' for i in range(20)]
  root = helpers.make_class_folder(str(tmp_path / 'sorted'), rng, classes,
                                   per_class=45, size=(4, 4))
  source = folder_source.FolderSource(root)
  n = source.num_examples('train')
  assert n == 20 * 41  # 4 of each class held out as 'test'.
  batch_size = 41
  # shuffle_buffer is unused: a folder has random access.
  dataset = pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=batch_size,
      augment_config=AugmentConfig(image_size=4),
      data=DataConfig(seed=0, shuffle_buffer=64), views=1)
  labels = np.stack([b['label'] for b in _first_batches(dataset, 20)])
  # One epoch is exactly 20 batches of 41: every example once.
  assert np.bincount(labels.reshape(-1), minlength=20).tolist() == [41] * 20
  counts = np.stack([np.bincount(row, minlength=20) for row in labels])
  expected = batch_size / 20
  chi_square = ((counts - expected) ** 2 / expected).sum()
  # Drawing without replacement makes counts tighter than the chi-square
  # law with 19 degrees of freedom per batch: the upper tail is safe.
  p_value = stats.chi2.sf(chi_square, df=19 * len(counts))
  assert p_value > 1e-3, (chi_square, counts)
  assert (counts > 0).sum(axis=1).mean() > 14  # Uniform draws: ~17.5.


def test_resuming_a_random_access_source_reads_only_what_it_trains_on():
  reads = []

  class CountingSource(array_source.ArraySource):

    def decode(self, record):
      def count(row):
        reads.append(int(row))
        return row
      counted = tf.numpy_function(count, [record], tf.int64)
      counted.set_shape([])
      return super().decode(counted)

  images = np.random.default_rng(0).integers(0, 256, (13, 8, 8, 3), np.uint8)
  source = CountingSource('ids', {'train': images},
                          {'train': np.arange(13)}, num_classes=None)
  whole = _first_batches(pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=4,
      augment_config=AugmentConfig(image_size=8), data=DataConfig(seed=2),
      views=1), 30)
  reads.clear()
  resumed = pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=4,
      augment_config=AugmentConfig(image_size=8), data=DataConfig(seed=2),
      views=1, start_step=10_000_000)
  assert len(_first_batches(resumed, 1)) == 1
  assert 4 <= len(reads) < 1000  # Not 40 million.
  # ... and where it is cheap to compare, the stream is the same one.
  reads.clear()
  for a, b in zip(whole[25:], _first_batches(pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=4,
      augment_config=AugmentConfig(image_size=8), data=DataConfig(seed=2),
      views=1, start_step=25), 5)):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_input_pipelines_take_turns_along_one_stream():
  source = _source(n_train=10)

  def labels(pipeline_id, steps, start_step=0):
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=pipeline_id,
        num_replicas_in_sync=2)
    return np.stack([b['label'] for b in _first_batches(
        pipeline.train_dataset(
            source, pipeline.Split('train'), global_batch_size=4,
            augment_config=_AUGMENT, data=DataConfig(seed=1), views=1,
            input_context=context, start_step=start_step), steps)])

  single = np.concatenate([b['label'] for b in _first_batches(
      pipeline.train_dataset(
          source, pipeline.Split('train'), global_batch_size=1,
          augment_config=_AUGMENT, data=DataConfig(seed=1), views=1), 20)])
  first, second = labels(0, 5), labels(1, 5)
  # Per-replica batches of 2; pipeline p has the stream's positions p, p+2...
  np.testing.assert_array_equal(first.reshape(-1), single[0::2])
  np.testing.assert_array_equal(second.reshape(-1), single[1::2])
  np.testing.assert_array_equal(labels(1, 2, start_step=3), second[3:])
