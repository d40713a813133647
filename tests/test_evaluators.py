"""The evaluators: seeded training subsets, kNN and probe on them, the
evaluators a configuration names, and the report built from their metrics."""

import dataclasses
import json
import os
import time
import types

import numpy as np
import tensorflow as tf

from simclr_tf.evaluation import baseline_cache
from simclr_tf.evaluation import evaluators
from simclr_tf.evaluation import features
from simclr_tf.evaluation import knn
from simclr_tf.evaluation import report
from simclr_tf.evaluation.evaluators import Metric
from simclr_tf.evaluation.probe import linear_probe
from simclr_tf.inputs import array_source
from simclr_tf.inputs import folder_source
from simclr_tf.inputs import subsets
from simclr_tf.run_context import RunContext
from simclr_tf.settings import registry
from simclr_tf.settings import resolver
from tests import helpers


def _toy(seed, num_train):
  """(images, labels, source): random 8 px RGB images of 3 classes."""
  rng = np.random.default_rng(seed)
  images = {'train': rng.integers(0, 256, (num_train, 8, 8, 3), np.uint8),
            'test': rng.integers(0, 256, (20, 8, 8, 3), np.uint8)}
  labels = {'train': rng.integers(0, 3, num_train),
            'test': rng.integers(0, 3, 20)}
  return images, labels, array_source.ArraySource('toy', images, labels,
                                                  num_classes=3)


def test_train_subsets_are_seeded_random_and_nested():
  whole = subsets.TrainSubset.of(np.arange(10), 0, seed=0)
  assert whole.indices is None and whole.ranks.tolist() == list(range(10))
  assert subsets.TrainSubset.of(np.arange(10), 10, seed=0).indices is None
  subset = subsets.TrainSubset.of(np.arange(1000), 300, seed=3)
  assert len(set(subset.indices.tolist())) == 300
  assert subset.indices.tolist() == sorted(subset.indices.tolist())
  assert sorted(subset.ranks.tolist()) == list(range(300))
  # The 100 lowest ranks are the first 100 of the same seeded order: a
  # smaller subset (the kNN bank) nested in the larger (the probe's).
  order = np.random.default_rng(3).permutation(1000)
  assert set(subset.indices[subset.ranks < 100].tolist()) == set(
      order[:100].tolist())
  assert subset.indices.min() < 100 and subset.indices.max() > 900


def test_feature_metrics_use_the_seeded_subsets_of_training_features():
  images, labels, source = _toy(4, 90)
  config = registry.build({
      'dataset': 'toy', 'seed': 6, 'image_size': 8, 'model_dir': 'unused',
      'eval_batch_size': 16, 'knn_k': 5, 'knn_temperature': 0.1,
      'knn_train_examples': 30,
      'probe_train_examples': 60})
  run = RunContext(config, helpers.cpu_strategy(1), source)

  def model(images, training=False):
    del training  # Features: the first 12 centred pixel values.
    return {'final_avg_pool': tf.reshape(images, [-1, 192])[:, :12] - 0.5}
  result = evaluators.feature_metrics(run, model, knn=True, probe=False)

  order = np.random.default_rng(6).permutation(90)
  bank_rows = order[:30]
  pixel_features = lambda x: (x / 255.0).reshape(len(x), -1)[:, :12] - 0.5
  train_x = pixel_features(images['train'][bank_rows])
  test_x = pixel_features(images['test'])
  scores = helpers.knn_numpy(train_x, labels['train'][bank_rows], test_x, 3,
                             5, 0.1)
  assert result['knn_top_1_accuracy'] == features.accuracy(scores,
                                                           labels['test'])
  # k and temperature 0: chosen on the bank (rows in index order).
  chosen = evaluators.feature_metrics(
      RunContext(dataclasses.replace(config, eval=dataclasses.replace(
          config.eval, knn_k=0, knn_temperature=0.0)),
                 helpers.cpu_strategy(1), source), model, knn=True)
  sorted_rows = np.sort(bank_rows)
  choice = knn.choose_k_and_temperature(
      knn.feature_bank(pixel_features(images['train'][sorted_rows])),
      labels['train'][sorted_rows], 3, seed=6)
  assert (chosen['knn_k'], chosen['knn_temperature'],
          chosen['knn_validation_accuracy']) == (
              choice.k, choice.temperature, choice.validation_accuracy)
  scores = helpers.knn_numpy(train_x, labels['train'][bank_rows], test_x, 3,
                             choice.k, choice.temperature)
  assert chosen['knn_top_1_accuracy'] == features.accuracy(scores,
                                                           labels['test'])
  # The probe fits on 60: the same order's first 60.
  probe_rows = np.sort(order[:60])
  expected = linear_probe(
      pixel_features(images['train'][probe_rows]), labels['train'][probe_rows],
      test_x, 3, seed=6).metrics(labels['test'])
  both = evaluators.feature_metrics(run, model, knn=True, probe=True)
  assert both['knn_top_1_accuracy'] == result['knn_top_1_accuracy']
  assert both['linear_probe_top_1_accuracy'] == expected[
      'linear_probe_top_1_accuracy']
  assert both['linear_probe_c'] == expected['linear_probe_c']


def test_fine_tuning_on_a_label_fraction_evaluates_on_that_subset_only():
  images, labels, source = _toy(5, 300)
  pixel_features = lambda x: (x / 255.0).reshape(len(x), -1)[:, :12] - 0.5

  def model(images, training=False):
    del training
    return {'final_avg_pool': tf.reshape(images, [-1, 192])[:, :12] - 0.5}

  # 10% of the labels: 10 per class, the subset fine-tuning trains on.
  labeled = subsets.label_fraction_indices(labels['train'], 0.1, 2)
  assert len(labeled) == 30
  for bank_size, bank_rows in ((0, labeled), (12, None)):
    config = registry.build({
        'dataset': 'toy', 'seed': 2, 'image_size': 8, 'model_dir': 'unused',
        'eval_batch_size': 16, 'knn_k': 5, 'knn_temperature': 0.1,
        'train_mode': 'finetune',
        'label_fraction': 0.1, 'knn_train_examples': bank_size,
        'probe_train_examples': 0})
    run = RunContext(config, helpers.cpu_strategy(1), source)
    if bank_rows is None:  # A seeded random 12 of the 30 labeled.
      bank_rows = labeled[np.random.default_rng(2).permutation(30)[:12]]
    result = evaluators.feature_metrics(run, model, knn=True, probe=True)
    scores = helpers.knn_numpy(pixel_features(images['train'][bank_rows]),
                               labels['train'][bank_rows],
                               pixel_features(images['test']), 3, 5, 0.1)
    assert result['knn_top_1_accuracy'] == features.accuracy(
        scores, labels['test'])
    assert result['knn_train_labels'] == len(bank_rows)
    assert result['linear_probe_train_labels'] == 30


class _PixelFeatures:
  """A model without a supervised head whose features are pixel values."""

  supervised_head = None

  def __call__(self, images, training=False):
    del training
    return {'final_avg_pool': tf.reshape(images, [-1, 192])[:, :12] - 0.5}


def test_the_named_evaluators_yield_result_json_and_the_table(tmp_path):
  images, labels, source = _toy(4, 90)
  settings = {'seed': 6, 'model_dir': 'unused', 'eval_batch_size': 16,
              'data_dir': str(tmp_path),
              'knn_k': 5, 'knn_temperature': 0.1, 'knn_train_examples': 30,
              'probe_train_examples': 60,
              'resnet_depth': 18, 'width_multiplier': 0.125,
              'lineareval_while_pretraining': False}
  config = resolver.resolve({**settings, 'random_baseline': True},
                            source=source, mixed_precision='float32')
  # No supervised head: the probe is the linear evaluation.
  assert config.eval.evaluators == ('knn', 'linear_probe', 'random_init',
                                    'raw_pixels')
  run = RunContext(config, helpers.cpu_strategy(1), source)
  metrics = evaluators.evaluate(run, _PixelFeatures(), 7)
  result = report.as_result(metrics)
  # The pixel baseline ran side by side with the rest (ALONGSIDE); alone
  # in this thread (no baseline cache to read back) it gives the same.
  alone = RunContext(resolver.resolve(
      {**settings, 'evaluators': ('knn', 'raw_pixels'), 'data_dir': str(
          tmp_path / 'b')}, source=source, mixed_precision='float32'),
                     helpers.cpu_strategy(1), source)
  pixels = lambda r: {k: v for k, v in r.items() if k.startswith(
      'raw_pixels') and k != 'raw_pixels_evaluation_seconds'}
  assert pixels(report.as_result(evaluators.evaluate(
      alone, _PixelFeatures(), 7, alongside=()))) == pixels(result) != {}
  assert result['global_step'] == 7 and result['eval_split'] == 'test'
  assert result['label_top_1_accuracy'] == result[
      'linear_probe_top_1_accuracy']
  # The pixel baseline: kNN over the probe's 60 seeded examples' pixels.
  rows = np.sort(np.random.default_rng(6).permutation(90)[:60])
  pixels = lambda x: (x / 255.0).reshape(len(x), -1)
  scores = helpers.knn_numpy(pixels(images['train'][rows]),
                             labels['train'][rows], pixels(images['test']),
                             3, 5, 0.1)
  assert result['raw_pixels_knn_top_1_accuracy'] == features.accuracy(
      scores, labels['test'])
  assert result['raw_pixels_linear_probe_train_labels'] == 60
  assert {'random_init_knn_top_1_accuracy',
          'random_init_linear_probe_top_1_accuracy'} <= set(result)
  # Every column has the few-label rows (1% and 10% by default).
  for column in ('', 'random_init_', 'raw_pixels_'):
    for prefix in ('linear_probe_1pct', 'linear_probe_10pct'):
      assert len(result[f'{column}{prefix}_top_1_accuracies']) == 3
  lines = report.table(metrics).splitlines()
  assert lines[0] == 'Results at step 7 on  test images:'
  assert lines[1].split() == ['learned', 'random', 'pixels']
  probe_row = lines[3]
  assert [line[:40].strip() for line in lines[4:6]] == [
      'linear probe top-1, 1% of labels', 'linear probe top-1, 10% of labels']
  assert probe_row.startswith('linear probe top-1 (frozen features)')
  assert probe_row.split()[-3:] == [
      f'{result[key]:.4f}' for key in (
          'linear_probe_top_1_accuracy',
          'random_init_linear_probe_top_1_accuracy',
          'raw_pixels_linear_probe_top_1_accuracy')]

  # Only what the configuration names runs.
  only_knn = resolver.resolve({**settings, 'evaluators': ('knn',)},
                              source=source, mixed_precision='float32')
  result = report.as_result(evaluators.evaluate(
      RunContext(only_knn, helpers.cpu_strategy(1), source), _PixelFeatures(),
      7))
  assert set(result) == {'global_step', 'eval_split', 'knn_top_1_accuracy',
                         'knn_top_5_accuracy', 'knn_train_labels', 'knn_k',
                         'knn_temperature', 'evaluation_seconds'}


def test_each_column_reports_the_seconds_its_evaluators_took(monkeypatch):
  # Evaluators that each take a known time on a hand-driven clock.
  now = [100.0]

  def taking(seconds, baseline=None):
    def evaluator(context, model, names):
      del context, model, names
      now[0] += seconds
      yield Metric('knn_top_1_accuracy', 0.5, baseline)
    return evaluator

  frozen_features = taking(30.4)  # One call serves knn and linear_probe.
  monkeypatch.setattr(evaluators, 'EVALUATORS', {
      'supervised_head': taking(2.0), 'knn': frozen_features,
      'linear_probe': frozen_features,
      'random_init': taking(0.2, 'random_init'),  # Read back.
      'raw_pixels': taking(98.6, 'raw_pixels')})
  monkeypatch.setattr(evaluators.sources, 'require_labels',
                      lambda *args: None)
  context = types.SimpleNamespace(
      config=types.SimpleNamespace(eval=types.SimpleNamespace(
          evaluators=('supervised_head', 'knn', 'linear_probe',
                      'random_init', 'raw_pixels'))),
      source=None, eval_split='test')
  # One at a time: side by side, both threads would move the one clock.
  metrics = evaluators.evaluate(context, None, 5, clock=lambda: now[0],
                                alongside=())
  result = report.as_result(metrics)
  assert (result['evaluation_seconds'],
          result['random_init_evaluation_seconds'],
          result['raw_pixels_evaluation_seconds']) == (32, 0, 99)
  assert report.table(metrics).splitlines()[-1].split() == [
      'evaluation', 'seconds', '32', '0', '99']


def _baseline_run(source, data_dir, **changes):
  settings = {'seed': 6, 'model_dir': 'unused', 'eval_batch_size': 16,
              'data_dir': str(data_dir), 'knn_k': 5, 'knn_temperature': 0.1,
              'resnet_depth': 18,
              'width_multiplier': 0.125, 'lineareval_while_pretraining': False,
              'evaluators': ('knn', 'random_init', 'raw_pixels'), **changes}
  config = resolver.resolve(settings, source=source, mixed_precision='float32')
  return RunContext(config, helpers.cpu_strategy(1), source)


def _baselines(run):
  """The baselines' figures (not the time they took)."""
  return {m.key: m.value for m in evaluators.evaluate(run, _PixelFeatures(), 1)
          if m.baseline and m.name != 'evaluation_seconds'}


def test_baselines_are_computed_once_per_key_and_reused_exactly(
    tmp_path, monkeypatch):
  _, _, source = _toy(4, 60)
  first = _baselines(_baseline_run(source, tmp_path))
  stored = sorted(os.listdir(tmp_path / 'baselines'))
  assert [name.split('-')[0] for name in stored] == ['random_init',
                                                     'raw_pixels']

  # The same key: read back, equal to the last bit, nothing recomputed.
  def fail(*args, **kwargs):
    raise AssertionError('recomputed a stored baseline')
  compute_random_init = evaluators.standard_init_model
  with monkeypatch.context() as patch:
    patch.setattr(evaluators, 'pixel_metrics', fail)
    patch.setattr(evaluators, 'standard_init_model', fail)
    assert _baselines(_baseline_run(source, tmp_path)) == first
    # Another architecture: random weights computed again, pixels reused.
    patch.setattr(evaluators, 'standard_init_model', compute_random_init)
    wider = _baselines(_baseline_run(source, tmp_path, width_multiplier=0.25))
    assert {k: v for k, v in wider.items() if k.startswith('raw_pixels')} == {
        k: v for k, v in first.items() if k.startswith('raw_pixels')}
  # Another seed or other images: both computed again, and stored apart.
  reseeded = _baselines(_baseline_run(source, tmp_path, seed=7))
  assert reseeded != first
  _, _, other_images = _toy(5, 60)
  _baselines(_baseline_run(other_images, tmp_path))
  assert len(os.listdir(tmp_path / 'baselines')) == 2 + 1 + 2 + 2


def test_an_unreadable_baseline_file_is_computed_again(tmp_path):
  _, _, source = _toy(4, 60)
  run = _baseline_run(source, tmp_path, evaluators=('knn', 'raw_pixels'))
  first = _baselines(run)
  [name] = os.listdir(tmp_path / 'baselines')
  path = tmp_path / 'baselines' / name
  path.write_text('{"key": ')  # Cut short.
  assert _baselines(run) == first
  assert json.loads(path.read_text())['metrics'] == {
      key.removeprefix('raw_pixels_'): value for key, value in first.items()}
  # A file whose key is not the run's is not trusted.
  stored = json.loads(path.read_text())
  stored['key']['seed'] = 99
  stored['metrics']['knn_top_1_accuracy'] = -1.0
  path.write_text(json.dumps(stored))
  assert _baselines(run) == first


def test_source_fingerprints_change_with_the_data(tmp_path):
  images, labels, source = _toy(4, 10)
  again = array_source.ArraySource('toy', images, labels, num_classes=3)
  assert source.fingerprint() == again.fingerprint()
  images['test'][0, 0, 0, 0] ^= 1
  changed = array_source.ArraySource('toy', images, labels, num_classes=3)
  assert changed.fingerprint() != source.fingerprint()
  labels['test'] = labels['test'].copy()
  labels['test'][0] = (labels['test'][0] + 1) % 3
  relabeled = array_source.ArraySource('toy', images, labels, num_classes=3)
  assert relabeled.fingerprint() != changed.fingerprint()

  rng = np.random.default_rng(0)
  for name in ('cat/a.png', 'cat/b.png', 'dog/c.png'):
    helpers.write(str(tmp_path / 'f' / name),
                  helpers.encode(helpers.random_rgb(rng), 'PNG'))
  folder = lambda: folder_source.FolderSource(str(tmp_path / 'f'))
  before = folder().fingerprint()
  assert folder().fingerprint() == before
  # Rewritten in place with as many bytes, its modification time restored
  # (as copies and `touch -d` do): the status-change time still tells.
  path = tmp_path / 'f' / 'dog/c.png'
  stat = os.stat(path)
  time.sleep(0.05)  # File times tick with the kernel's coarse clock (~4 ms).
  content = bytearray(path.read_bytes())
  content[-1] ^= 1
  path.write_bytes(content)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert os.stat(path).st_size == stat.st_size
  assert folder().fingerprint() != before


def test_a_baseline_key_changes_with_whatever_its_numbers_depend_on(
    tmp_path, monkeypatch):
  """Each change that could move a baseline's numbers is a cache miss: the
  Keras version (it draws the random weights), this package's code, the
  precision and the processor (random weights only)."""
  _, _, source = _toy(4, 60)
  run = _baseline_run(source, tmp_path)
  first = _baselines(run)
  stored = set(os.listdir(tmp_path / 'baselines'))
  keys = {kind: baseline_cache.key_of(kind, run, True)
          for kind in baseline_cache.KINDS}

  def misses(kinds, **changes):
    """The kinds whose key changed, after a run with `changes` stored
    files of their own."""
    changed = {kind for kind in baseline_cache.KINDS
               if baseline_cache.key_of(kind, run, True) != keys[kind]}
    assert changed == set(kinds), changes
    before = set(os.listdir(tmp_path / 'baselines'))
    assert _baselines(run) == first  # Same numbers, computed again.
    new = set(os.listdir(tmp_path / 'baselines')) - before
    assert sorted(name.split('-')[0] for name in new) == sorted(kinds)

  with monkeypatch.context() as patch:
    patch.setattr(baseline_cache.keras, '__version__', '3.0.0')
    misses(baseline_cache.KINDS)
  with monkeypatch.context() as patch:
    patch.setattr(baseline_cache, 'code_digest', lambda: 'another code')
    misses(baseline_cache.KINDS)
  with monkeypatch.context() as patch:
    patch.setattr(baseline_cache.precision, 'device_kind',
                  lambda strategy: 'CPU: another processor (no bfloat16)')
    misses(['random_init'])
  assert set(os.listdir(tmp_path / 'baselines')) > stored
  bfloat16 = _baseline_run(source, tmp_path, precision='bfloat16')
  assert baseline_cache.key_of('random_init', bfloat16, True) != keys[
      'random_init']
  assert baseline_cache.key_of('raw_pixels', bfloat16, True) == keys[
      'raw_pixels']


def test_the_code_digest_covers_every_python_file_of_the_package(tmp_path):
  package = tmp_path / 'simclr_tf'
  (package / 'evaluation').mkdir(parents=True)
  (package / 'evaluation' / 'probe.py').write_text('C = 1\n')
  (package / 'notes.txt').write_text('not code')
  digest = lambda: baseline_cache.code_digest.__wrapped__(package)
  first = digest()
  (package / 'notes.txt').write_text('still not code')
  assert digest() == first
  (package / 'evaluation' / 'probe.py').write_text('C = 2\n')
  assert digest() != first
  # The digest of the code as it is, read once per process.
  assert baseline_cache.code_digest() == baseline_cache.code_digest.__wrapped__()


def test_tfds_fingerprints_change_when_the_prepared_files_do(tmp_path):
  source = helpers.numbered_tfds(tmp_path, num_shards=1)
  folder = source._builder.data_dir  # pylint: disable=protected-access
  again = lambda: helpers.numbered_tfds(tmp_path, num_shards=1).fingerprint()
  before = source.fingerprint()
  assert again() == before
  # A shard rewritten in place, its size and modification time restored.
  [shard] = [name for name in os.listdir(folder) if 'train' in name]
  path = os.path.join(folder, shard)
  stat = os.stat(path)
  time.sleep(0.05)  # File times tick with the kernel's coarse clock.
  content = bytearray(open(path, 'rb').read())
  content[-1] ^= 1
  with open(path, 'wb') as f:
    f.write(content)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert again() != before


def test_the_table_has_a_column_per_baseline_that_yielded_metrics():
  metrics = [Metric('global_step', 3), Metric('eval_split', 'val'),
             Metric('num_eval_examples', 50),
             Metric('label_top_1_accuracy', 0.5),
             Metric('knn_top_1_accuracy', 0.25),
             Metric('knn_k', 20),
             Metric('knn_top_1_accuracy', 0.125, 'raw_pixels'),
             Metric('knn_k', 3, 'raw_pixels')]
  assert report.table(metrics) == '\n'.join([
      'Results at step 3 on 50 val images:',
      ' ' * 40 + '         learned          pixels',
      f'{"linear eval top-1 (supervised head)":40s}          0.5000' + ' ' * 16,
      f'{"kNN top-1 (frozen features)":40s}          0.2500          0.1250',
      f'{"kNN k":40s}              20               3'])
  # Few-label rows, smallest fraction first: the mean and its spread.
  few = [Metric('global_step', 3), Metric('eval_split', 'val'),
         Metric('linear_probe_top_1_accuracy', 0.75)]
  for prefix, fraction, mean in (('linear_probe_10pct', 0.1, 0.7),
                                 ('linear_probe_1pct', 0.01, 0.5)):
    few += [Metric(f'{prefix}_label_fraction', fraction),
            Metric(f'{prefix}_top_1_accuracy', mean),
            Metric(f'{prefix}_top_1_accuracy_std', 0.0125)]
  assert report.table(few).splitlines()[2:] == [
      f'{"linear probe top-1 (frozen features)":40s}          0.7500',
      f'{"linear probe top-1, 1% of labels":40s}  0.5000 ±0.0125',
      f'{"linear probe top-1, 10% of labels":40s}  0.7000 ±0.0125']
  assert report.as_result(metrics)['raw_pixels_knn_top_1_accuracy'] == 0.125
