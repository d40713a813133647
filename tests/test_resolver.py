"""settings/resolver.py: the order of precedence, the derived settings, the
checks that fail before work, and which flags.json a run reads, as a table
of cases (given, recorded, preset -> config or the error line)."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.inputs import array_source
from simclr_tf.settings import checks
from simclr_tf.settings import recipes
from simclr_tf.settings import registry
from simclr_tf.settings import resolver
from simclr_tf.settings.command import Command
from simclr_tf.storage import records
from tests import helpers


def _source(side=28):
  images = {'train': np.zeros((4, side, side, 3), np.uint8),
            'test': np.zeros((2, side, side, 3), np.uint8)}
  labels = {'train': np.array([0, 1, 0, 1]), 'test': np.array([0, 1])}
  return array_source.ArraySource('toy', images, labels, num_classes=2)


def _record(settings, taken=resolver.SAME_RUN, resumes=False):
  return resolver.Record(settings, taken, resumes)


_ALL_EVALUATORS = ('supervised_head', 'knn', 'linear_probe', 'random_init',
                   'raw_pixels')
# (case, given, preset, record, mode, source, expected settings)
CASES = [
    ('defaults, derived from the dataset', {}, None, resolver.Record(),
     'train', _source(),
     {'temperature': 0.5, 'resnet_depth': 18, 'image_size': 28,
      'cifar_stem': True, 'use_blur': False, 'num_classes': 2,
      'model_dir': os.path.join('models', 'cifar10-pretrain'),
      'evaluators': ('supervised_head', 'knn')}),
    ('a preset replaces the defaults', {}, 'imagenet2012', resolver.Record(),
     'train', _source(),
     {'temperature': 0.1, 'resnet_depth': 50, 'image_size': 224,
      'cifar_stem': False, 'use_blur': True, 'train_batch_size': 4096,
      'model_dir': os.path.join('models', 'imagenet2012-pretrain')}),
    ('given flags win over the preset, even at their default value',
     {'temperature': 0.5, 'train_batch_size': 256}, 'imagenet2012',
     resolver.Record(), 'train', _source(),
     {'temperature': 0.5, 'train_batch_size': 256, 'resnet_depth': 50}),
    ('the record fills what is not given; it names what it hands on',
     {'dataset': 'folder:/data/My Photos/'}, None,
     _record({'resnet_depth': 34, 'image_size': 16, 'temperature': 0.2}),
     'eval', _source(),
     {'resnet_depth': 34, 'image_size': 16, 'temperature': 0.5,
      'model_dir': os.path.join('models', 'My_Photos-pretrain')}),
    ('a continued run reads the data it was trained on',
     {}, None, _record({'dataset': 'fashion_mnist', 'data_dir': '/images',
                        'train_split': 'train[:100]'}, resumes=True),
     'eval', _source(),
     {'dataset': 'fashion_mnist', 'data_dir': '/images',
      'train_split': 'train[:100]', 'eval_split': None}),
    ('a given --dataset evaluates a run on other data',
     {'dataset': 'cifar10'}, None,
     _record({'dataset': 'fashion_mnist', 'train_split': 'train[:100]'},
             resumes=True), 'eval', _source(),
     {'dataset': 'cifar10', 'train_split': 'train[:100]'}),
    ('the preset and given flags win over the record',
     {'width_multiplier': 0.5}, 'imagenet2012',
     _record({'resnet_depth': 34, 'width_multiplier': 2.0}), 'eval',
     _source(), {'resnet_depth': 50, 'width_multiplier': 0.5}),
    ('a new run from --checkpoint takes its architecture only',
     {'train_mode': 'finetune'}, None,
     _record({'resnet_depth': 34, 'train_mode': 'pretrain'},
             taken=resolver.ARCHITECTURE), 'train', _source(),
     {'resnet_depth': 34, 'train_mode': 'finetune'}),
    ('a recorded num_classes None means no head: the probe evaluates',
     {}, None, _record({'num_classes': None, 'image_size': 24},
                       taken=resolver.SAME_RUN + ('num_classes',)),
     'export', None,
     {'num_classes': None, 'image_size': 24,
      'evaluators': ('knn', 'linear_probe')}),
    ('without data, the image size defaults to 224', {}, None,
     resolver.Record(), 'train', None,
     {'image_size': 224, 'cifar_stem': False, 'use_blur': True}),
    ('explicit derived settings are kept', {'image_size': 64,
                                           'use_blur': False}, None,
     resolver.Record(), 'train', _source(),
     {'image_size': 64, 'cifar_stem': False, 'use_blur': False}),
    ('the baselines add their evaluators', {'random_baseline': True,
                                           'knn': False}, None,
     resolver.Record(), 'train', _source(),
     {'evaluators': ('supervised_head', 'linear_probe', 'random_init',
                     'raw_pixels')}),
    ('evaluators named explicitly', {'evaluators': ('knn',)}, None,
     resolver.Record(), 'train', _source(), {'evaluators': ('knn',)}),
    ('a new run standardises its supervised head and trains it on eval views',
     {}, None, resolver.Record(), 'train', _source(),
     {'lineareval_standardize': True, 'lineareval_view': 'eval'}),
    ('a run recorded before lineareval_standardize existed had none', {},
     None, _record({'resnet_depth': 18}, resumes=True), 'train', _source(),
     {'lineareval_standardize': False}),
    ('a recorded lineareval_standardize is kept', {}, None,
     _record({'lineareval_standardize': True}, resumes=True), 'eval',
     _source(), {'lineareval_standardize': True}),
    ('evaluation of a resumed run with other flags is not refused here',
     {'resnet_depth': 50}, None,
     _record({'resnet_depth': 18, 'cifar_stem': True}, resumes=True), 'eval',
     _source(), {'resnet_depth': 50}),
]


@pytest.mark.parametrize('case,given,preset,record,mode,source,expected',
                         CASES, ids=[case[0] for case in CASES])
def test_resolve(case, given, preset, record, mode, source, expected):
  del case
  config = resolver.resolve(given, mode=mode, preset=preset, record=record,
                            source=source)
  flat = registry.flatten(config)
  assert {name: flat[name] for name in expected} == expected
  # Whatever no layer set keeps the default of config.py.
  chosen = set(given) | set(recipes.PRESETS.get(preset, {})) | set(
      record.values()) | set(registry.DERIVED) | {'model_dir', 'evaluators'}
  for name, setting in registry.SETTINGS.items():
    if name not in chosen:
      assert flat[name] == setting.default, name


ERRORS = [
    ('an image too small for the stem', {'image_size': 4}, resolver.Record(),
     'train', _source(),
     '--image_size=4 is too small for the CIFAR stem: use 8 or more.'),
    ('a recorded image too small', {}, _record({'image_size': 6}), 'eval',
     _source(), '--image_size=6 is too small'),
    ('a setting out of range', {'learning_rate': 0.0}, resolver.Record(),
     'train', _source(), '--learning_rate=0.0 must be a number > 0.'),
    ('a label fraction that is not one',
     {'label_fractions': '0.01,10%'}, resolver.Record(), 'train', _source(),
     "--label_fractions='0.01,10%' must be comma-separated fractions in "
     '(0, 1), e.g. 0.01,0.1 (empty: none).'),
    ('a label fraction of all labels', {'label_fractions': '1'},
     resolver.Record(), 'train', _source(), "--label_fractions='1' must be"),
    ('a negative kNN k', {'knn_k': -1}, resolver.Record(), 'train',
     _source(), '--knn_k=-1 must be >= 0 (0: chosen on held-out training '
     'features).'),
    ('a chunk that does not divide the batch',
     {'train_batch_size': 8, 'contrastive_chunk_size': 3},
     resolver.Record(), 'train', _source(),
     '--contrastive_chunk_size=3 does not divide the 8 examples per replica'),
    ('an unknown evaluator', {'evaluators': ('knn', 'linear_prob')},
     resolver.Record(), 'train', _source(),
     "Unknown evaluators ['linear_prob']"),
    ('resuming with another architecture',
     {'resnet_depth': 50, 'image_size': 64},
     _record({'resnet_depth': 18, 'width_multiplier': 1.0,
              'cifar_stem': True}, resumes=True), 'train', _source(),
     'holds a run with another architecture: --resnet_depth '
     '(encoder.resnet_depth: 18 before, 50 now); --image_size '
     '(encoder.cifar_stem: True before, False now).'),
]


@pytest.mark.parametrize('case,given,record,mode,source,message', ERRORS,
                         ids=[case[0] for case in ERRORS])
def test_resolve_refuses(case, given, record, mode, source, message):
  del case
  with pytest.raises(checks.UsageError) as error:
    resolver.resolve(given, mode=mode, record=record, source=source)
  assert message in str(error.value)
  assert '\n' not in str(error.value)


def test_batches_must_divide_over_replicas():
  strategy = helpers.cpu_strategy(2)
  with pytest.raises(checks.UsageError, match='--train_batch_size=7 is not '
                     'divisible by the 2 replicas; use a multiple of 2.'):
    resolver.resolve({'train_batch_size': 7}, source=_source(),
                     strategy=strategy)


def _write_run(directory, settings, checkpoint=True):
  config = registry.build({'model_dir': str(directory), 'image_size': 32,
                           **settings})
  records.write_json(os.path.join(directory, records.FLAGS_FILE),
                     {'config': dataclasses.asdict(config)})
  if checkpoint:
    with open(os.path.join(directory, 'ckpt-7.index'), 'w') as f:
      f.write('')


def test_read_record_picks_the_run_continued(tmp_path):
  model_dir, encoder = tmp_path / 'run', tmp_path / 'encoder'
  model_dir.mkdir()
  encoder.mkdir()
  _write_run(encoder, {'resnet_depth': 50, 'num_classes': 10,
                       'precision': 'bfloat16'})
  values = {'model_dir': str(model_dir), 'checkpoint': str(encoder)}
  # A new run from --checkpoint: the architecture beside it.
  new = resolver.read_record('train', values)
  assert new.taken == resolver.ARCHITECTURE and not new.resumes
  assert new.values()['resnet_depth'] == 50
  assert 'train_mode' not in new.values()
  # Once model_dir holds checkpoints, its own record, all of SAME_RUN.
  _write_run(model_dir, {'resnet_depth': 34, 'train_mode': 'finetune'})
  resumed = resolver.read_record('train', values)
  assert resumed.taken == resolver.SAME_RUN and resumed.resumes
  assert resumed.values()['resnet_depth'] == 34
  assert resumed.values()['train_mode'] == 'finetune'
  # An export of --checkpoint: SAME_RUN beside it, with num_classes and the
  # precision it trained in.
  export = resolver.read_record('export', values)
  assert not export.resumes
  assert {k: export.values()[k] for k in ('resnet_depth', 'num_classes',
                                          'precision')} == {
      'resnet_depth': 50, 'num_classes': 10, 'precision': 'bfloat16'}
  # Modes that start from nothing read no record.
  assert resolver.read_record('preview', values) == resolver.Record()
  assert resolver.read_record('train', {'model_dir': str(tmp_path / 'x'),
                                        'dataset': 'cifar10'}).taken == ()


def test_eval_of_a_run_opens_the_dataset_it_trained_on(tmp_path):
  # `run.py --mode=eval --model_dir=RUN` with nothing else: the source opened
  # is the recorded one, not config.py's default dataset.
  _write_run(tmp_path, {'dataset': 'fashion_mnist', 'data_dir': '/images',
                        'train_split': 'train[:100]'}, checkpoint=False)
  tf.train.Checkpoint(step=tf.Variable(7)).write(str(tmp_path / 'ckpt-7'))
  opened = []

  def open_source(data):
    opened.append(data)
    return _source(32)

  command = Command('eval', given={'model_dir': str(tmp_path)})
  resolved = resolver.resolve_command(command, open_source=open_source)
  assert [(d.dataset, d.data_dir, d.train_split) for d in opened] == [
      ('fashion_mnist', '/images', 'train[:100]')]
  assert resolved.data == opened[0]


def test_read_record_of_a_damaged_flags_json_is_empty(tmp_path):
  (tmp_path / records.FLAGS_FILE).write_text('{"config": ')
  (tmp_path / 'ckpt-1.index').write_text('')
  record = resolver.read_record('eval', {'model_dir': str(tmp_path)})
  assert record.resumes and record.values() == {}
  # What it recorded, read back: the file as JSON holds it.
  _write_run(tmp_path, {'resnet_depth': 101})
  with open(tmp_path / records.FLAGS_FILE) as f:
    stored = json.load(f)['config']['model']['encoder']['resnet_depth']
  assert resolver.read_record('eval', {'model_dir': str(tmp_path)}).values()[
      'resnet_depth'] == stored == 101
