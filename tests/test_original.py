"""Importing checkpoints of the original google-research/simclr TF2 code.

The fixtures in ../shared/fixtures/original_simclr/ (beside the repository)
were written by the original code itself, with its model's outputs in
inference mode; tests that need them skip, saying so, where that folder is
absent. benchmarks/original_import.py checks more architectures against the
original code.
"""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.network import original
from simclr_tf.network import original_variables
from simclr_tf.serving import torch_format
from simclr_tf.settings import registry
from simclr_tf.storage.checkpoints import CheckpointError
from simclr_tf.training import task
from tests import helpers
from tests.helpers import run

FIXTURES = helpers.ORIGINAL_FIXTURES
needs_fixtures = helpers.needs_original_fixtures
# fixture -> (image size, its proj_hiddens count)
SPECS = {'r18_w025_32px': (32, 3), 'r50_sk_w025_64px': (64, 4)}
TOLERANCE = 1e-4  # Relative to each reference tensor's largest magnitude.


def _build(settings, image_size):
  return task.build_model(registry.build({**settings, 'image_size': image_size,
                                          'model_dir': 'unused'}))


def _imported(path, image_size, **infer_options):
  weights = original.read(str(path))
  settings = original.infer_settings(weights, **infer_options)
  model = _build(settings, image_size)
  original_variables.load(model, weights)
  return model, settings, weights


def _outputs(model, images) -> dict:
  """Every output the fixtures hold, by their names."""
  outputs = dict(model.encoder(images, training=False))
  outputs['hidden'] = outputs.pop('final_avg_pool')
  projection, hiddens = model.projection_head(outputs['hidden'],
                                              training=False)
  outputs['proj_head_output'] = projection
  outputs.update({f'proj_hiddens_{j}': h for j, h in enumerate(hiddens)})
  outputs['logits_sup'] = model(images, training=False)['logits_sup']
  return {k: np.asarray(v) for k, v in outputs.items()}


def _relative_error(ours, reference):
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


@needs_fixtures
@pytest.mark.parametrize('name', list(SPECS))
def test_fixture_imports_exactly(name):
  folder = FIXTURES / name
  image_size, num_hiddens = SPECS[name]
  model, settings, weights = _imported(folder, image_size)
  recorded = json.loads((folder / 'flags.json').read_text())
  for setting in ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                  'proj_head_mode', 'num_proj_layers', 'proj_out_dim',
                  'ft_proj_selector'):
    assert settings[setting] == recorded[setting], setting
  assert settings['cifar_stem'] == (recorded['image_size'] <= 32)
  assert settings['num_classes'] == 10
  assert weights.global_step == 3
  outputs = _outputs(model, np.load(folder / 'images.npy'))
  names = ['initial_conv', 'initial_max_pool', 'block_group1',
           'block_group2', 'block_group3', 'block_group4', 'hidden',
           'proj_head_output', 'logits_sup'] + [
               f'proj_hiddens_{j}' for j in range(num_hiddens)]
  assert len(outputs) == len(names)
  for output in names:
    reference = np.load(folder / f'{output}.npy')
    assert outputs[output].shape == reference.shape, output
    assert _relative_error(outputs[output], reference) < TOLERANCE, output


@needs_fixtures
def test_the_originals_saved_model_holds_the_same_variables(tmp_path):
  folder = FIXTURES / 'r18_w025_32px'
  from_checkpoint = original.read(str(folder))
  # The released models' layout: <name>/saved_model/{saved_model.pb, ...}.
  released = tmp_path / 'r18' / 'saved_model'
  shutil.copytree(folder / 'saved_model' / '3', released)
  for path in (folder / 'saved_model', folder / 'saved_model' / '3',
               released.parent):
    exported = original.read(str(path))
    # From the export's folder name (the released layout has none).
    assert exported.global_step == (0 if path == released.parent else 3)
    assert exported.shapes == from_checkpoint.shapes
    for name in from_checkpoint.shapes:
      np.testing.assert_array_equal(exported.tensor(name),
                                    from_checkpoint.tensor(name))


# --- Checkpoints that are not (complete) original ones ----------------------


def _write_raw(prefix, tensors: dict):
  """A checkpoint of exactly these {key: array} (no object graph)."""
  names = list(tensors)
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return str(prefix)


def _fixture_tensors():
  weights = original.read(str(FIXTURES / 'r18_w025_32px'))
  return {f'{name}{original.VALUE_SUFFIX}': weights.tensor(name)
          for name in weights.shapes}


def _import_error(tmp_path, tensors) -> str:
  prefix = _write_raw(tmp_path / 'ckpt', tensors)
  with pytest.raises(CheckpointError) as error:
    weights = original.read(prefix)
    original_variables.load(_build(original.infer_settings(weights), 32), weights)
  message = str(error.value)
  assert '\n' not in message
  return message


@needs_fixtures
def test_a_missing_variable_is_named(tmp_path):
  tensors = _fixture_tensors()
  missing = ('model/resnet_model/block_groups/2/layers/1/conv2d_bn_layers/3/'
             'bn/moving_variance')
  del tensors[missing + original.VALUE_SUFFIX]
  assert missing in _import_error(tmp_path, tensors)


@needs_fixtures
def test_an_unknown_variable_is_named(tmp_path):
  tensors = _fixture_tensors()
  extra = 'model/resnet_model/block_groups/0/layers/0/extra/kernel'
  tensors[extra + original.VALUE_SUFFIX] = np.zeros([3], np.float32)
  assert extra in _import_error(tmp_path, tensors)


@needs_fixtures
def test_a_wrong_shape_is_named(tmp_path):
  tensors = _fixture_tensors()
  name = 'model/_projection_head/linear_layers/0/bn_relu/bn/gamma'
  tensors[name + original.VALUE_SUFFIX] = np.ones([7], np.float32)
  message = _import_error(tmp_path, tensors)
  assert name in message and '[7]' in message and '[128]' in message


@pytest.mark.parametrize('key, expected', [
    ('dense/kernel/.ATTRIBUTES/VARIABLE_VALUE',
     'is not a checkpoint of the original SimCLR TF2 code'),
    ('base_model/conv2d/kernel', 'TF1 checkpoint of the original code'),
    ('model/encoder/stem/conv1/conv/kernel/.ATTRIBUTES/VARIABLE_VALUE',
     'checkpoint of simclr_tf itself'),
])
def test_other_checkpoints_say_what_they_are(tmp_path, key, expected):
  prefix = _write_raw(tmp_path / 'ckpt', {key: np.zeros([2], np.float32)})
  with pytest.raises(CheckpointError, match=expected):
    original.read(prefix)


def test_paths_that_hold_no_checkpoint_say_so(tmp_path):
  with pytest.raises(CheckpointError, match='neither a checkpoint'):
    original.read(str(tmp_path))
  with pytest.raises(CheckpointError, match='no .index file'):
    original.read(str(tmp_path / 'nothing'))


# --- Inference over architectures: our model written in the original's
# layout (variable_pairs) must be read back as the same architecture. ------


@pytest.mark.parametrize('settings', [
    dict(resnet_depth=18, se_ratio=0.25, cifar_stem=True, num_proj_layers=1),
    dict(resnet_depth=18, sk_ratio=0.0625, cifar_stem=False,
         proj_out_dim=16),
    dict(resnet_depth=34, cifar_stem=False, proj_head_mode='none',
         lineareval_while_pretraining=False),
    # The ratio shows in block group 4's mixing layer (64 > 32 channels).
    dict(resnet_depth=50, sk_ratio=1.0, se_ratio=0.0625, cifar_stem=True,
         num_proj_layers=2, ft_proj_selector=2, num_classes=3),
    dict(resnet_depth=50, se_ratio=0.25, cifar_stem=False, num_classes=4,
         num_proj_layers=2, proj_out_dim=8),
], ids=['r18_se_head1', 'r18_resnet_d', 'r34_no_heads', 'r50_sk_se',
        'r50_se_imagenet_stem'])
def test_architecture_is_read_back_from_the_original_layout(tmp_path,
                                                            settings):
  # The original layout has no standardising batch norm in the head.
  settings = {'width_multiplier': 0.125, 'num_classes': 5,
              'lineareval_standardize': False, **settings}
  image_size = 8 if settings['cifar_stem'] else 32
  model = _build(settings, image_size)
  rng = np.random.default_rng(0)
  for variable in model.weights:  # No zero gamma, no unit statistics.
    shape = variable.shape
    value = (rng.normal(0, np.prod(shape[:-1])**-0.5, shape) if len(shape) > 1
             else rng.uniform(0.5, 1.5, shape))
    variable.assign(value.astype(np.float32))
  prefix = _write_raw(tmp_path / 'ckpt', {
      f'{name}{original.VALUE_SUFFIX}': variable.numpy()
      for variable, name in original_variables.variable_pairs(model)})
  weights = original.read(prefix)
  inferred = original.infer_settings(
      weights, ft_proj_selector=settings.get('ft_proj_selector'))
  expected = registry.build({**settings, 'image_size': image_size,
                             'model_dir': 'unused'}).model
  assert inferred['resnet_depth'] == expected.encoder.resnet_depth
  assert inferred['width_multiplier'] == expected.encoder.width_multiplier
  assert inferred['sk_ratio'] == expected.encoder.sk_ratio
  assert inferred['se_ratio'] == expected.encoder.se_ratio
  assert inferred['cifar_stem'] == expected.encoder.cifar_stem
  assert inferred['proj_head_mode'] == expected.projection_head.proj_head_mode
  if expected.projection_head.proj_head_mode != 'none':
    head = expected.projection_head
    assert inferred['num_proj_layers'] == head.num_proj_layers
    assert inferred['proj_out_dim'] == head.proj_out_dim
  has_head = expected.supervised_head.lineareval_while_pretraining
  assert inferred['num_classes'] == (
      expected.supervised_head.num_classes if has_head else None)
  copy = _build(inferred, image_size)
  original_variables.load(copy, weights)
  images = rng.random((2, image_size, image_size, 3), dtype=np.float32)
  copied = copy(images, training=False)
  for name, value in model(images, training=False).items():
    np.testing.assert_array_equal(copied[name], value)


def test_an_ambiguous_supervised_head_input_takes_the_given_selector(
    tmp_path):
  # A 2-layer head keeps the encoder's width in its middle layer, so a
  # supervised head reading that width could read hiddens 0 or 1.
  settings = dict(resnet_depth=18, width_multiplier=0.125, cifar_stem=True,
                  num_proj_layers=2, num_classes=3)
  model = _build(settings, 16)
  prefix = _write_raw(tmp_path / 'ckpt', {
      f'{name}{original.VALUE_SUFFIX}': variable.numpy()
      for variable, name in original_variables.variable_pairs(model)})
  weights = original.read(prefix)
  assert original.infer_settings(weights)['ft_proj_selector'] == 0
  assert original.infer_settings(weights, 1)['ft_proj_selector'] == 1
  with pytest.raises(CheckpointError, match='does not fit'):
    original.infer_settings(weights, 2)  # 16 features there, not 64.


# --- The command line -----------------------------------------------------------


@needs_fixtures
def test_import_then_export_eval_and_fine_tune_as_any_run(tmp_path):
  folder = FIXTURES / 'r18_w025_32px'
  model_dir = tmp_path / 'imported'
  # bfloat16 as `auto` picks on CPUs with bfloat16 units: the export still
  # computes in float32, so it serves the original's outputs.
  result = run('--mode=import', f'--checkpoint={folder}',
               f'--model_dir={model_dir}', '--mixed_precision=bfloat16')
  assert result.returncode == 0, result.stderr
  assert 'ResNet-18 x0.25, CIFAR stem, 2-layer projection head' in (
      result.stdout)
  recorded = json.loads((model_dir / 'flags.json').read_text())['config']
  assert recorded['model']['encoder']['resnet_depth'] == 18
  assert recorded['augment']['image_size'] == 32
  assert (model_dir / 'ckpt-3.index').exists()

  # The export serves the original's outputs.
  images = np.load(folder / 'images.npy')
  served = tf.saved_model.load(str(model_dir / 'saved_model' / '3'))
  outputs = served.signatures['serving_default'](images=tf.constant(images))
  for ours, theirs in (('final_avg_pool', 'hidden'),
                       ('proj_head_output', 'proj_head_output'),
                       ('logits_sup', 'logits_sup')):
    assert _relative_error(outputs[ours].numpy(),
                           np.load(folder / f'{theirs}.npy')) < TOLERANCE
  record = json.loads(
      (model_dir / 'saved_model' / '3' / 'export.json').read_text())
  assert (record['compute_precision'], record['trained_precision']) == (
      'float32', 'bfloat16')

  # Nothing is overwritten; conflicting flags and resuming say why.
  again = run('--mode=import', f'--checkpoint={folder}',
              f'--model_dir={model_dir}')
  assert again.returncode == 2 and 'already holds checkpoints' in (
      again.stderr)
  conflict = run('--mode=import', f'--checkpoint={folder}',
                 f'--model_dir={tmp_path / "other"}', '--resnet_depth=50')
  assert conflict.returncode == 2
  assert '--resnet_depth=50 (the checkpoint has 18)' in conflict.stderr

  # Evaluation takes the architecture from flags.json.
  data_dir = helpers.fashion_mnist_data_dir(tmp_path / 'data')
  evaluated = run('--mode=eval', f'--model_dir={model_dir}',
                  '--dataset=fashion_mnist', f'--data_dir={data_dir}',
                  '--eval_steps=2',
                  '--eval_batch_size=50', '--knn=false')
  assert evaluated.returncode == 0, evaluated.stderr
  result_json = json.loads((model_dir / 'result.json').read_text())
  assert result_json['global_step'] == 3

  # Exporting again needs neither architecture flags nor a dataset, and
  # other formats serve the original's outputs too.
  exported = run('--mode=export', f'--model_dir={model_dir}',
                 '--export_formats=saved_model,torch')
  assert exported.returncode == 0, exported.stderr
  for fmt in ('saved_model', 'torch'):
    assert f'Exported {model_dir}/ckpt-3 to {model_dir}/{fmt}/3' in (
        exported.stdout)
  outputs = torch_format.infer(str(model_dir / 'torch' / '3'), images)
  assert _relative_error(outputs['final_avg_pool'],
                         np.load(folder / 'hidden.npy')) < TOLERANCE

  # Fine-tuning starts from the imported encoder.
  tuned_dir = tmp_path / 'tuned'
  tuned = run('--mode=train', '--train_mode=finetune',
              f'--checkpoint={model_dir}', f'--model_dir={tuned_dir}',
              '--dataset=fashion_mnist', f'--data_dir={data_dir}',
              '--label_fraction=0.1',
              '--train_steps=2', '--train_batch_size=16', '--knn=false',
              '--optimizer=momentum', '--learning_rate=0.01')
  assert tuned.returncode == 0, tuned.stderr
  assert 'Restored the encoder and projection head' in tuned.stderr
  assert (tuned_dir / 'saved_model' / '2' / 'saved_model.pb').exists()
