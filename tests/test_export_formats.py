"""--export_formats (docs/serving.md): ONNX, TFLite and PyTorch exports, each
run by its own runtime on real images and compared with the SavedModel's
serving_default; torchvision's ResNets load the PyTorch encoders; failed and
bad requests leave earlier exports alone."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
import torch
from torch import nn

from simclr_tf.config import (EncoderConfig, ModelConfig, ProjectionHeadConfig,
                              SupervisedHeadConfig)
from simclr_tf.inputs import idx
from simclr_tf.network import original
from simclr_tf.network import original_variables
from simclr_tf.network.model import SimCLRModel
from simclr_tf.serving import format_names
from simclr_tf.serving import formats
from simclr_tf.serving import onnx_format
from simclr_tf.serving import tflite_format
from simclr_tf.serving import torch_format
from simclr_tf.settings import checks
from simclr_tf.settings import registry
from simclr_tf.training import task
from tests import helpers
from tests.helpers import run

TOLERANCE = 1e-4  # Relative to each output's largest magnitude.
FIXTURES = helpers.ORIGINAL_FIXTURES
# name -> (encoder, image size, head layers, classes, standardised head).
# Selective kernels: the original code's ResNet-50 fixture, below.
ARCHITECTURES = {
    'resnet18_cifar_stem': (EncoderConfig(resnet_depth=18, cifar_stem=True,
                                          width_multiplier=0.25), 16, 2, 4,
                            True),
    'resnet50_standard_stem_se': (EncoderConfig(
        resnet_depth=50, width_multiplier=0.25, se_ratio=0.25), 40, 3, None,
                                  False),
}


def fashion_mnist_images(size: int, count: int = 6) -> np.ndarray:
  """The first test images of Fashion-MNIST (the tests' sample), resized,
  as RGB in [0, 1]."""
  images, _ = idx.load_fashion_mnist_split(helpers.FASHION_MNIST_SAMPLE,
                                           'test')
  images = tf.image.resize(images[:count, :, :, None].astype(np.float32) /
                           255.0, [size, size])
  return np.repeat(np.clip(images.numpy(), 0, 1), 3, axis=-1)


def build(encoder, size, head_layers=2, num_classes=None, standardize=False):
  config = ModelConfig(
      encoder=encoder,
      projection_head=ProjectionHeadConfig(proj_out_dim=8,
                                           num_proj_layers=head_layers),
      supervised_head=SupervisedHeadConfig(
          num_classes=num_classes, ft_proj_selector=1,
          lineareval_standardize=standardize))
  model = SimCLRModel(config)
  model(tf.zeros([1, size, size, 3]))
  return helpers.randomize_batch_norm(model)


def _export_all(model, size, model_dir, step, names, keep=1):
  """formats.export_all with a run's settings: `names` under `model_dir`."""
  config = registry.build({'model_dir': model_dir, 'image_size': size,
                           'export_formats': ','.join(names),
                           'keep_hub_module_max': keep})
  return formats.export_all(model, config, step)


def relative_error(ours, reference):
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def served(path, images) -> dict:
  signature = tf.saved_model.load(path).signatures['serving_default']
  return {k: v.numpy() for k, v in
          signature(images=tf.constant(images)).items()}


@pytest.fixture(scope='module', params=list(ARCHITECTURES))
def exported(request, tmp_path_factory):
  encoder, size, layers, classes, standardize = ARCHITECTURES[request.param]
  model = build(encoder, size, layers, classes, standardize)
  model_dir = str(tmp_path_factory.mktemp(request.param))
  paths = _export_all(model, size, model_dir, 5,
                      ('saved_model', 'onnx', 'tflite', 'torch'))
  images = fashion_mnist_images(size)
  return paths, images, served(paths['saved_model'], images)


@pytest.mark.parametrize('name, run_format', [
    ('onnx', onnx_format.infer), ('tflite', tflite_format.infer),
    ('torch', torch_format.infer)])
def test_each_format_computes_what_the_saved_model_does(exported, name,
                                                        run_format):
  paths, images, reference = exported
  assert paths[name].endswith(os.path.join(name, '5'))
  outputs = run_format(paths[name], images)
  assert set(outputs) == set(reference)
  for output, expected in reference.items():
    assert outputs[output].shape == expected.shape, output
    assert relative_error(outputs[output], expected) < TOLERANCE, output
  record = json.loads(pathlib.Path(paths[name], 'export.json').read_text())
  assert record['format'] == name and record['global_step'] == 5
  assert max(record['check']['max_relative_difference'].values()) < TOLERANCE


def test_the_pytorch_export_loads_without_simclr_tf(exported, tmp_path):
  """simclr_torch.py is copied beside the weights: a fresh Python with only
  torch loads it (no simclr_tf, no TensorFlow)."""
  paths, images, reference = exported
  np.save(tmp_path / 'images.npy', images)
  script = (
      'import sys, numpy as np, torch\n'
      f'sys.path.insert(0, {paths["torch"]!r})\n'
      'import simclr_torch\n'
      f'model = simclr_torch.load({paths["torch"]!r})\n'
      f'x = torch.from_numpy(np.load({str(tmp_path / "images.npy")!r}))\n'
      'with torch.no_grad():\n'
      '  out = model(x.permute(0, 3, 1, 2))\n'
      f'np.save({str(tmp_path / "features.npy")!r}, '
      'out["final_avg_pool"].numpy())\n'
      'assert "tensorflow" not in sys.modules and '
      '"simclr_tf" not in sys.modules\n')
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  features = np.load(tmp_path / 'features.npy')
  assert relative_error(features, reference['final_avg_pool']) < TOLERANCE


def torchvision_encoder(depth: int, cifar_stem: bool) -> nn.Module:
  """torchvision's ResNet with the changes docs/serving.md lists."""
  net = getattr(helpers.torchvision_models(), f'resnet{depth}')()
  if cifar_stem:
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
  else:
    from simclr_tf.serving import simclr_torch  # pylint: disable=g-import-not-at-top
    net.maxpool = simclr_torch.SameMaxPool()
  if depth in (18, 34):
    net.layer1[0].downsample = nn.Sequential(nn.Conv2d(64, 64, 1, bias=False),
                                             nn.BatchNorm2d(64))
  net.fc = nn.Identity()
  return net.eval()


@pytest.mark.parametrize('depth, size, cifar_stem', [
    (18, 16, True), (50, 32, False)])
def test_width_one_encoders_load_into_torchvision(tmp_path, depth, size,
                                                  cifar_stem):
  model = build(EncoderConfig(resnet_depth=depth, cifar_stem=cifar_stem),
                size)
  paths = _export_all(model, size, str(tmp_path), 1, ('saved_model', 'torch'))
  config = json.loads(pathlib.Path(paths['torch'], 'config.json')
                      .read_text())
  assert config['torchvision'] == f'resnet{depth}'
  net = torchvision_encoder(depth, cifar_stem)
  net.load_state_dict(torch.load(os.path.join(paths['torch'], 'encoder.pt'),
                                 weights_only=True))  # Strict: every name.
  images = fashion_mnist_images(size)
  with torch.no_grad():
    features = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  reference = served(paths['saved_model'], images)['final_avg_pool']
  assert relative_error(features, reference) < TOLERANCE
  if not cifar_stem:
    # torchvision's own max pool pads both sides: not the same features,
    # which is why docs/serving.md replaces it.
    net.maxpool = nn.MaxPool2d(3, 2, 1)
    with torch.no_grad():
      stock = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    assert relative_error(stock, reference) > 100 * TOLERANCE


def test_the_pytorch_module_knows_the_same_depths():
  """simclr_torch.py imports only torch, so it keeps its own table."""
  from simclr_tf.network import layers  # pylint: disable=g-import-not-at-top
  from simclr_tf.network import resnet  # pylint: disable=g-import-not-at-top
  from simclr_tf.serving import simclr_torch  # pylint: disable=g-import-not-at-top
  assert simclr_torch.DEPTHS == resnet.DEPTHS
  assert simclr_torch.BATCH_NORM_EPSILON == layers.BATCH_NORM_EPSILON


def test_other_architectures_name_why_torchvision_cannot_load_them():
  name, note = torch_format.torchvision_model(
      EncoderConfig(resnet_depth=50, width_multiplier=2, sk_ratio=0.0625))
  assert name is None
  assert 'width multiplier 2 and selective kernels' in note
  assert 'simclr_torch.py' in note


def test_int8_tflite_is_smaller_and_close(tmp_path):
  encoder, size, layers, classes, standardize = ARCHITECTURES[
      'resnet18_cifar_stem']
  model = build(encoder, size, layers, classes, standardize)
  paths = _export_all(model, size, str(tmp_path), 2,
                      ('saved_model', 'tflite', 'tflite_int8'))
  sizes = {name: os.path.getsize(os.path.join(paths[name], 'model.tflite'))
           for name in ('tflite', 'tflite_int8')}
  assert sizes['tflite_int8'] < 0.5 * sizes['tflite']
  images = fashion_mnist_images(size)
  features = tflite_format.infer(paths['tflite_int8'], images)['final_avg_pool']
  reference = served(paths['saved_model'], images)['final_avg_pool']
  # Quantised weights: close, not within the float32 formats' tolerance.
  assert TOLERANCE < relative_error(features, reference) < 0.1
  record = json.loads(pathlib.Path(paths['tflite_int8'], 'export.json')
                      .read_text())
  assert record['check']['tolerance'] == formats.INT8_TOLERANCE == 0.25
  assert 0 < max(record['check']['max_relative_difference'].values()) <= 0.25


def test_the_relative_difference_is_per_output_scale():
  reference = {'a': np.array([[1.0, -4.0]]), 'b': np.array([[0.01, 0.02]])}
  outputs = {'a': np.array([[1.0, -3.9996]]), 'b': np.array([[0.01, 0.0202]])}
  differences = formats.relative_differences(outputs, reference)
  assert differences == pytest.approx({'a': 1e-4, 'b': 1e-2})
  with pytest.raises(formats.ExportError, match="output 'b' is missing"):
    formats.relative_differences({'a': outputs['a']}, reference)


def test_a_failed_export_leaves_earlier_exports_alone(tmp_path, monkeypatch):
  encoder, size, layers, classes, standardize = ARCHITECTURES[
      'resnet18_cifar_stem']
  model = build(encoder, size, layers, classes, standardize)
  first = _export_all(model, size, str(tmp_path), 1,
                      ('saved_model', 'onnx', 'torch'), keep=2)
  before = {name: sorted(os.listdir(path)) for name, path in first.items()}
  contents = pathlib.Path(first['onnx'], 'model.onnx').read_bytes()

  def wrong_outputs(directory, images):
    outputs = onnx_format.infer(directory, images)
    outputs['final_avg_pool'] = outputs['final_avg_pool'] * 1.001
    return outputs

  monkeypatch.setitem(formats.FORMATS, 'onnx', formats.Format(
      formats.FORMATS['onnx'].write, wrong_outputs))
  with pytest.raises(formats.ExportError,
                     match=r'onnx export computes final_avg_pool 1\.0e-03'):
    _export_all(model, size, str(tmp_path), 2, ('onnx',))
  assert sorted(os.listdir(tmp_path / 'onnx')) == ['1']  # No temporary.
  assert pathlib.Path(first['onnx'], 'model.onnx').read_bytes() == contents
  for name, path in first.items():
    assert sorted(os.listdir(path)) == before[name]


def test_each_format_keeps_its_newest_exports(tmp_path):
  encoder, size, layers, classes, standardize = ARCHITECTURES[
      'resnet18_cifar_stem']
  model = build(encoder, size, layers, classes, standardize)
  for step in (1, 2, 3):  # test_export.py keeps the SavedModels.
    _export_all(model, size, str(tmp_path), step, ('torch',), keep=2)
  assert sorted(os.listdir(tmp_path / 'torch')) == ['2', '3']


@pytest.mark.parametrize('value, message', [
    ('onnx,pdf', "--export_formats: unknown format 'pdf'; the formats are "
     'saved_model,onnx,tflite,tflite_int8,torch (or none).'),
    ('torch,torch', '--export_formats names torch twice; name it once.'),
    (',', "--export_formats=',' names no format; give some of "
     'saved_model,onnx,tflite,tflite_int8,torch, or none.'),
    ('none,onnx', '--export_formats=none,onnx: none stands alone; drop it '
     'or the formats.'),
])
def test_bad_format_lists_say_what_is_wrong(value, message):
  with pytest.raises(checks.UsageError) as error:
    checks.check_export_formats(value, 'float32')
  assert message in str(error.value)


def test_none_alone_asks_for_no_export():
  assert format_names.export_formats('none') == ()
  assert format_names.export_formats(' saved_model, onnx ') == (
      'saved_model', 'onnx')
  checks.check_export_formats('none', 'bfloat16')  # Nothing to refuse.


def test_formats_that_compute_in_float32_refuse_other_precisions():
  with pytest.raises(checks.UsageError, match=(
      r'--export_formats=onnx cannot compute in --export_precision='
      r'bfloat16')):
    checks.check_export_formats('saved_model,onnx', 'bfloat16')
  checks.check_export_formats('saved_model', 'bfloat16')  # Its own choice.


def test_a_missing_converter_names_the_package(monkeypatch):
  real = checks.importlib.util.find_spec
  monkeypatch.setattr(checks.importlib.util, 'find_spec',
                      lambda name: None if name == 'tf2onnx' else real(name))
  with pytest.raises(checks.UsageError) as error:
    checks.check_export_formats('saved_model,onnx', 'float32')
  assert str(error.value) == (
      '--export_formats=onnx needs the tf2onnx package, which is not '
      'installed: pip install -r requirements-export.txt.')


def test_export_mode_writes_the_formats_asked_for(tiny_run, tmp_path):
  """From the command line, without data: an unknown format fails with one
  line before anything is written, then the formats land side by side."""
  model_dir = pathlib.Path(tiny_run.copy_to(tmp_path / 'run'))  # Step 4.
  bad = run('--mode=export', f'--model_dir={model_dir}',
            '--export_formats=saved_model,onnx,gif')
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      "run.py: error: --export_formats: unknown format 'gif'; the formats "
      'are saved_model,onnx,tflite,tflite_int8,torch (or none).')
  assert not (model_dir / 'onnx').exists()
  good = run('--mode=export', f'--model_dir={model_dir}',
             '--export_formats=onnx,torch')
  assert good.returncode == 0, good.stderr
  for name in ('onnx', 'torch'):
    assert f'to {model_dir}/{name}/4' in good.stdout
  images = fashion_mnist_images(16)
  reference = served(str(model_dir / 'saved_model' / '4'), images)
  for name, run_format in (('onnx', onnx_format.infer),
                           ('torch', torch_format.infer)):
    outputs = run_format(str(model_dir / name / '4'), images)
    assert relative_error(outputs['final_avg_pool'],
                          reference['final_avg_pool']) < TOLERANCE

  # Without flags.json, flags that build another model: one line, exit 2.
  (model_dir / 'flags.json').unlink()
  wrong = run('--mode=export', f'--model_dir={model_dir}',
              f'--dataset=folder:{tiny_run.folder}', '--image_size=16',
              '--width_multiplier=0.25')
  assert wrong.returncode == 2
  assert wrong.stderr.strip().splitlines()[-1].startswith(
      f'run.py: error: {model_dir}/ckpt-4 does not hold the model these '
      'settings build (')
  assert sorted(os.listdir(model_dir / 'torch')) == ['4']

  # A directory without a checkpoint: said as --mode=eval says it, before
  # any dataset (the default, cifar10, is not prepared here) is looked at.
  empty = tmp_path / 'empty'
  for mode, what in (('export', 'to export; give --checkpoint=PATH or train '
                      'first.'),
                     ('eval', 'to evaluate; train first (--mode=train) or '
                      'point --model_dir at a training run.')):
    result = run(f'--mode={mode}', f'--model_dir={empty}')
    assert helpers.one_error_line(result) == (
        f'run.py: error: --model_dir={empty} holds no checkpoint {what}')
    assert 'cifar10' not in result.stderr


def test_a_failed_export_check_after_training_still_evaluates(
    tiny_run, tmp_path, monkeypatch):
  """The export check fails at the end of train_then_eval: the checkpoint
  stays, the evaluation runs, one line says what failed, exit code 3."""
  model_dir = pathlib.Path(tiny_run.copy_to(tmp_path / 'run'))  # Step 4.
  for name in ('saved_model', 'onnx'):
    shutil.rmtree(model_dir / name, ignore_errors=True)

  def wrong_outputs(directory, images):
    outputs = onnx_format.infer(directory, images)
    outputs['final_avg_pool'] = outputs['final_avg_pool'] * 1.01
    return outputs

  monkeypatch.setitem(formats.FORMATS, 'onnx', formats.Format(
      formats.FORMATS['onnx'].write, wrong_outputs))
  flags = [f for f in tiny_run.flags if not f.startswith('--mode=')]
  result = run(*flags, '--mode=train_then_eval', f'--model_dir={model_dir}',
               f'--train_steps={helpers.TINY_RUN_STEPS}',
               '--export_formats=saved_model,onnx')
  assert result.returncode == 3, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('run.py:')]
  assert errors == [
      'run.py: error: the onnx export computes final_avg_pool 1.0e-02 '
      '(relative) away from the SavedModel, more than 0.0001; nothing was '
      'written. Please report it with the model\'s flags.json. The '
      'checkpoint of step 4 is kept and was evaluated; --mode=export writes '
      'the other formats from it.']
  assert 'Traceback' not in result.stderr
  assert helpers.latest_step(str(model_dir)) == 4
  assert os.listdir(model_dir / 'saved_model') == ['4']
  assert not os.listdir(model_dir / 'onnx')  # Not even a temporary.
  evaluated = json.loads((model_dir / 'result.json').read_text())
  assert evaluated['global_step'] == 4
  # --mode=export fails the same way, with the same code.
  again = run('--mode=export', f'--model_dir={model_dir}',
              '--export_formats=onnx')
  assert again.returncode == 3
  assert [l for l in again.stderr.splitlines() if l.startswith('run.py:')
          ] == [errors[0].split(' The checkpoint')[0]]


needs_fixtures = helpers.needs_original_fixtures


@needs_fixtures
@pytest.mark.parametrize('name, size', [('r18_w025_32px', 32),
                                        ('r50_sk_w025_64px', 64)])
def test_imported_original_models_reproduce_the_originals_outputs(
    tmp_path, name, size):
  """The original code's recorded outputs, from ONNX, TFLite and PyTorch
  exports of its imported checkpoint (ResNet-50: selective kernels)."""
  folder = FIXTURES / name
  weights = original.read(str(folder))
  settings = original.infer_settings(weights)
  model = task.build_model(registry.build({**settings, 'image_size': size,
                                           'model_dir': 'unused'}))
  original_variables.load(model, weights)
  paths = _export_all(model, size, str(tmp_path), 3,
                      ('onnx', 'tflite', 'torch'))
  images = np.load(folder / 'images.npy')
  for fmt, run_format in (('onnx', onnx_format.infer),
                          ('tflite', tflite_format.infer),
                          ('torch', torch_format.infer)):
    outputs = run_format(paths[fmt], images)
    for ours, theirs in (('final_avg_pool', 'hidden'),
                         ('proj_head_output', 'proj_head_output'),
                         ('logits_sup', 'logits_sup')):
      reference = np.load(folder / f'{theirs}.npy')
      assert relative_error(outputs[ours], reference) < TOLERANCE, (fmt,
                                                                    ours)
