"""One source of truth: config defaults, flags derived from them, presets."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from simclr_tf.inputs import augment
from simclr_tf.settings import recipes
from simclr_tf.settings import registry
from simclr_tf.settings import resolver
from simclr_tf.storage import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh interpreter: run.py defines its flags on absl's global
# FLAGS, which other test modules (the benchmarks) also define flags on.
_FLAGS_SCRIPT = '''
import json, sys
from absl import flags
import run
from simclr_tf.settings import registry
from simclr_tf.settings import resolver
FLAGS = flags.FLAGS
defaults = {name: [FLAGS[name].default, type(FLAGS[name].default).__name__]
            for name in run.SETTING_FLAGS}
parsed = []
for argv in json.loads(sys.argv[1]):
  FLAGS.unparse_flags()
  FLAGS(['run.py', '--mode=train', *argv])
  parsed.append(resolver.layered(run.command().given, preset=FLAGS.preset))
print(json.dumps({'defaults': defaults, 'derived': list(registry.DERIVED),
                  'parsed': parsed}))
'''


def _run_py_flags(*argvs):
  result = subprocess.run(
      [sys.executable, '-c', _FLAGS_SCRIPT, json.dumps(argvs)],
      capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def run_py():
  return _run_py_flags([], ['--preset=imagenet2012', '--learning_rate=0.5',
                            '--train_batch_size=256'],
                       ['--preset=imagenet2012', '--temperature=0.5'])


def test_every_setting_flag_has_its_config_default(run_py):
  assert len(run_py['defaults']) > 50
  for name, (default, type_name) in run_py['defaults'].items():
    setting = registry.SETTINGS[name]
    if name in run_py['derived'] or setting.required:
      # Derived from the data or devices (resolver.derive) unless given.
      assert default is None, name
    else:
      assert default == setting.default, name
      assert type_name == type(setting.default).__name__, name


def test_the_command_line_and_the_library_get_the_same_recipe(run_py):
  # The paper's CIFAR-10 recipe (appendix B.9) either way.
  defaults = registry.build({'model_dir': 'm', 'image_size': 32})
  assert defaults.optim.learning_rate == 1.0
  assert defaults.optim.weight_decay == 1e-4
  assert defaults.train.temperature == 0.5
  assert defaults.model.encoder.resnet_depth == 18
  assert defaults.augment.color_jitter_strength == 0.5
  assert defaults.train.train_epochs == 1000
  assert (recipes.PRESETS['cifar10'].items() <=
          registry.flatten(defaults).items())
  plain = run_py['parsed'][0]
  # JSON gives tuples back as lists.
  flat = {k: list(v) if isinstance(v, tuple) else v
          for k, v in registry.flatten(defaults).items()}
  assert plain.items() <= flat.items()
  assert 'image_size' not in plain  # Derived when not given.


def test_a_preset_replaces_defaults_and_explicit_flags_win(run_py):
  _, imagenet, default_valued = run_py['parsed']
  assert imagenet['resnet_depth'] == 50 and imagenet['temperature'] == 0.1
  assert imagenet['image_size'] == 224
  assert imagenet['learning_rate'] == 0.5
  assert imagenet['train_batch_size'] == 256
  # A flag given with its default value still wins over the preset.
  assert default_valued['temperature'] == 0.5


def test_build_and_flatten_are_inverse():
  values = {'model_dir': 'm', 'image_size': 24, 'resnet_depth': 50,
            'proj_out_dim': 64, 'knn_k': 7, 'train_mode': 'finetune',
            'min_crop_area': 0.3}
  config = registry.build(values)
  assert config.model.encoder.resnet_depth == 50
  assert config.model.projection_head.proj_out_dim == 64
  assert augment.crop_area_range(config.augment) == (0.3, 1.0)
  assert registry.build(registry.flatten(config)) == config
  assert values.items() <= registry.flatten(config).items()


def test_settings_of_reads_a_config_as_flags_json_stores_it(tmp_path):
  config = registry.build({'model_dir': str(tmp_path), 'image_size': 24,
                           'resnet_depth': 50, 'sk_ratio': 0.0625,
                           'ft_proj_selector': 2})
  records.write_json(str(tmp_path / records.FLAGS_FILE),
                     {'config': dataclasses.asdict(config)})
  recorded = resolver.read_settings(str(tmp_path))
  flat = registry.flatten(config)
  # Tuples come back from JSON as lists; everything else as it was.
  assert recorded == {k: list(v) if isinstance(v, tuple) else v
                      for k, v in flat.items()}
  assert registry.settings_of({'model': {'encoder': {'resnet_depth': 34}}}) == {
      'resnet_depth': 34}
  assert resolver.read_settings(str(tmp_path / 'absent')) == {}


def test_a_record_from_before_the_supervised_head_had_its_section():
  # flags.json of earlier runs kept the supervised head's settings in the
  # model, head, optim and train sections: they read as the same settings.
  old = {'model': {'num_classes': 10, 'lineareval_while_pretraining': True,
                   'lineareval_standardize': False,
                   'encoder': {'resnet_depth': 34},
                   'head': {'proj_out_dim': 64, 'ft_proj_selector': 1}},
         'optim': {'lineareval_learning_rate_scale': 0.5},
         'train': {'lineareval_view': 'pretrain', 'model_dir': 'm'}}
  settings = registry.settings_of(old)
  assert settings == {'num_classes': 10, 'lineareval_while_pretraining': True,
                      'lineareval_standardize': False, 'resnet_depth': 34,
                      'proj_out_dim': 64, 'ft_proj_selector': 1,
                      'lineareval_learning_rate_scale': 0.5,
                      'lineareval_view': 'pretrain', 'model_dir': 'm'}
  head = registry.build({**settings, 'image_size': 8}).model.supervised_head
  assert (head.num_classes, head.ft_proj_selector, head.lineareval_view,
          head.lineareval_learning_rate_scale) == (10, 1, 'pretrain', 0.5)


def test_build_refuses_unknown_and_missing_settings():
  with pytest.raises(ValueError, match='Unknown settings: learning_rat'):
    registry.build({'model_dir': 'm', 'image_size': 8, 'learning_rat': 1})
  with pytest.raises(ValueError, match="'image_size' has no default"):
    registry.build({'model_dir': 'm'})


@pytest.mark.parametrize('name', list(recipes.PRESETS))
def test_presets_are_plain_settings(name):
  preset = recipes.PRESETS[name]
  assert set(preset) <= set(registry.SETTINGS)
  values = {'model_dir': 'm', 'image_size': 32, **preset}
  config = registry.build(values)
  assert values.items() <= registry.flatten(config).items()


def test_derived_settings_follow_the_data_and_devices():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  strategy = tf.distribute.get_strategy()
  small = resolver.derive({}, native_image_size=28, num_classes=10,
                          strategy=strategy)
  assert small['image_size'] == 28 and small['cifar_stem']
  assert not small['use_blur'] and small['num_classes'] == 10
  assert not small['jit_compile']  # On CPU.
  # auto: float32, or bfloat16 on CPUs with bfloat16 units; asked: as asked.
  assert small['precision'] in ('float32', 'bfloat16')
  assert resolver.derive({}, native_image_size=28, num_classes=None,
                         strategy=strategy, mixed_precision='float16'
                         )['precision'] == 'float16'
  large = resolver.derive({'use_blur': None}, native_image_size=None,
                          num_classes=None, strategy=strategy)
  assert large['image_size'] == 224 and large['use_blur']
  assert not large['cifar_stem'] and 'num_classes' not in large


def test_configs_are_frozen():
  config = registry.build({'model_dir': 'm', 'image_size': 8})
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.train.train_epochs = 1
