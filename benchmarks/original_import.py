"""--mode=import checked against the original SimCLR code on many
architectures: worst relative error per output, and import time.

  python -m benchmarks.original_import --original_code=PATH/simclr/tf2 \
      --output=benchmarks/results/original_import.json

For each configuration the original's own model.py (from google-research/
simclr's tf2/ folder, run with tf_keras as it expects) builds its model,
whose variables are then all set to random values (batch-norm statistics
and gammas too, so no branch hides behind a zero), saves it with
`tf.train.Checkpoint(model=..., global_step=...)` as its run.py does, and
computes its outputs in inference mode on random images. The checkpoint is
then imported here (`run.py --mode=import`) and our model's outputs are
compared, each relative to its reference's largest magnitude. The original's
code is only run, in its own process; nothing of it is copied here.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TensorFlow.

flags.DEFINE_string('original_code', None, 'The tf2/ folder of a '
                    'google-research/simclr checkout.')
flags.DEFINE_string('output', 'benchmarks/results/original_import.json',
                    'JSON written with every configuration\'s errors.')
flags.DEFINE_string('only', None, 'Run only the configuration of this name.')
flags.DEFINE_string('fixtures', '../shared/fixtures/original_simclr',
                    'Checkpoints written by the original code with its '
                    'outputs (every block group, every projection layer): '
                    'each output\'s error is reported too.')
FLAGS = flags.FLAGS

# name -> original flags (absl flags of its run.py). Chosen to cover every
# depth, the three stems, selective kernels with and without a visible
# ratio, squeeze-excitation in both block kinds, widths, and head shapes.
CONFIGS = {
    'r18_w1_cifar': dict(resnet_depth=18, width_multiplier=1, image_size=32),
    'r18_se_head3': dict(resnet_depth=18, width_multiplier=0.25,
                         image_size=32, se_ratio=0.25, num_proj_layers=3,
                         proj_out_dim=64),
    'r18_sk_resnet_d': dict(resnet_depth=18, width_multiplier=0.25,
                            image_size=64, sk_ratio=0.0625),
    'r34_imagenet_stem_head1': dict(resnet_depth=34, width_multiplier=0.25,
                                    image_size=64, num_proj_layers=1),
    'r50_w05_finetune_selector1': dict(
        resnet_depth=50, width_multiplier=0.5, image_size=64,
        num_proj_layers=2, proj_out_dim=32, train_mode='finetune',
        ft_proj_selector=1, num_classes=5),
    'r50_sk05_visible_ratio': dict(resnet_depth=50, width_multiplier=0.25,
                                   image_size=32, sk_ratio=0.5),
    'r50_sk_se': dict(resnet_depth=50, width_multiplier=0.25, image_size=64,
                      sk_ratio=0.0625, se_ratio=0.0625),
    # (The original cannot run proj_head_mode='none' or 'linear': its
    # ProjectionHead.call returns one value or None there.)
    'r50_se_no_supervised_head': dict(resnet_depth=50, width_multiplier=0.25,
                                      image_size=64, se_ratio=0.25,
                                      lineareval_while_pretraining=False),
    'r101_sk': dict(resnet_depth=101, width_multiplier=0.25, image_size=32,
                    sk_ratio=0.0625),
    'r152_sk': dict(resnet_depth=152, width_multiplier=0.25, image_size=32,
                    sk_ratio=0.0625),
    'r200': dict(resnet_depth=200, width_multiplier=0.25, image_size=32),
}
IMAGES = 4
# Our settings that each original flag becomes (the rest are checked as
# they are).
_EXPECTED = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
             'proj_head_mode', 'num_proj_layers', 'proj_out_dim',
             'ft_proj_selector', 'num_classes')

# Runs in the original's process (TF_USE_LEGACY_KERAS=1): builds, randomises
# and saves the original model and its outputs. Reads sys.argv: code dir,
# output dir, JSON flags.
_ORIGINAL_SIDE = r'''
import json, os, sys
import numpy as np
import tensorflow as tf
code, out, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, code)
sys.argv = sys.argv[:1]
import run as original_run  # Defines the original's absl flags.
import model as model_lib
from absl import flags
FLAGS = flags.FLAGS
FLAGS(['original'])
num_classes = spec.pop('num_classes', 10)
for name, value in spec.items():
  FLAGS[name].value = value
model = model_lib.Model(num_classes)
size = FLAGS.image_size
rng = np.random.default_rng(0)
images = rng.random((%(images)d, size, size, 3), dtype=np.float32)
model(tf.zeros([1, size, size, 3]), training=False)
for v in model.variables:
  name, shape = v.name, v.shape
  if 'moving_variance' in name:
    value = rng.uniform(0.5, 1.5, shape)
  elif 'moving_mean' in name or 'beta' in name or 'bias' in name:
    value = rng.normal(0, 0.1, shape)
  elif 'gamma' in name:
    value = rng.uniform(0.5, 1.5, shape)
  else:  # Kernels: the initialiser's scale, freshly drawn.
    value = rng.normal(0, 1, shape) * max(float(np.std(v.numpy())), 1e-3)
  v.assign(value.astype(np.float32))
step = tf.Variable(1234, dtype=tf.int64)
tf.train.CheckpointManager(tf.train.Checkpoint(model=model, global_step=step),
                           os.path.join(out, 'ckpt'), 1).save(1234)
projection, supervised = model(images, training=False)
hidden = model.resnet_model(images, training=False)
outputs = {'images': images, 'hidden': hidden.numpy()}
if projection is not None:
  outputs['proj_head_output'] = projection.numpy()
if supervised is not None:
  outputs['logits_sup'] = supervised.numpy()
np.savez(os.path.join(out, 'outputs.npz'), **outputs)
'''


def _original_outputs(name, spec, directory):
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='3',
             CUDA_VISIBLE_DEVICES='')
  script = _ORIGINAL_SIDE % {'images': IMAGES}
  result = subprocess.run(
      [sys.executable, '-c', script, FLAGS.original_code, directory,
       json.dumps(spec)], env=env, capture_output=True, text=True,
      check=False)
  if result.returncode:
    raise RuntimeError(f'{name}: the original code failed:\n'
                       f'{result.stderr[-3000:]}')


def _import(directory):
  model_dir = os.path.join(directory, 'imported')
  started = time.perf_counter()
  result = subprocess.run(
      [sys.executable, 'run.py', '--mode=import',
       f'--checkpoint={os.path.join(directory, "ckpt")}',
       f'--model_dir={model_dir}', *_import_flags(directory)],
      capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - started
  if result.returncode:
    raise RuntimeError(f'import failed:\n{result.stderr[-3000:]}')
  return model_dir, seconds, result.stdout.strip()


def _import_flags(directory):
  with open(os.path.join(directory, 'spec.json')) as f:
    spec = json.load(f)
  extra = [f'--image_size={spec["image_size"]}']
  if 'ft_proj_selector' in spec:  # Not visible in the variables.
    extra.append(f'--ft_proj_selector={spec["ft_proj_selector"]}')
  return extra


def _compare(model_dir, directory, spec):
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import tensorflow as tf
  from simclr_tf.settings import resolver
  reference = np.load(os.path.join(directory, 'outputs.npz'))
  served = tf.saved_model.load(os.path.join(model_dir, 'saved_model', '1234'))
  outputs = served.signatures['serving_default'](
      images=tf.constant(reference['images']))
  names = {'hidden': 'final_avg_pool', 'proj_head_output': 'proj_head_output',
           'logits_sup': 'logits_sup'}
  errors = {}
  for name, ours in names.items():
    if name in reference.files:
      ref = reference[name]
      errors[name] = float(np.abs(outputs[ours].numpy() - ref).max() /
                           np.abs(ref).max())
  recorded = resolver.read_settings(model_dir)
  wrong = {k: (recorded.get(k), v) for k, v in _expected(spec).items()
           if recorded.get(k) != v}
  return errors, wrong


def _expected(spec):
  expected = {'resnet_depth': spec['resnet_depth'],
              'width_multiplier': float(spec['width_multiplier']),
              'sk_ratio': spec.get('sk_ratio', 0.0),
              'se_ratio': spec.get('se_ratio', 0.0),
              'proj_head_mode': spec.get('proj_head_mode', 'nonlinear')}
  if expected['proj_head_mode'] != 'none':
    expected['num_proj_layers'] = spec.get('num_proj_layers', 3)
    expected['proj_out_dim'] = spec.get('proj_out_dim', 128)
  if spec.get('lineareval_while_pretraining', True):
    expected['num_classes'] = spec.get('num_classes', 10)
    expected['ft_proj_selector'] = spec.get('ft_proj_selector', 0)
  return expected


# fixture -> image size.
FIXTURES = {'r18_w025_32px': 32, 'r50_sk_w025_64px': 64}


def _fixture_errors(folder, image_size):
  """Each output the fixture holds: our relative error after the import."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from simclr_tf.network import original
  from simclr_tf.network import original_variables
  from simclr_tf.network.model import create_model
  from simclr_tf.settings import resolver
  weights = original.read(folder)
  settings = original.infer_settings(weights)
  config = resolver.resolve({**settings, 'image_size': image_size,
                             'model_dir': 'unused'}, mode='import',
                            mixed_precision='float32')
  model = create_model(config.model, image_size)
  original_variables.load(model, weights)
  images = np.load(os.path.join(folder, 'images.npy'))
  ours = dict(model.encoder(images, training=False))
  ours['hidden'] = ours.pop('final_avg_pool')
  ours['proj_head_output'], hiddens = model.projection_head(ours['hidden'],
                                                           training=False)
  ours.update({f'proj_hiddens_{j}': h for j, h in enumerate(hiddens)})
  ours['logits_sup'] = model(images, training=False)['logits_sup']
  errors = {}
  for name, value in ours.items():
    reference = np.load(os.path.join(folder, f'{name}.npy'))
    errors[name] = float(np.abs(np.asarray(value) - reference).max() /
                         np.abs(reference).max())
  return errors


def _fixtures():
  results = {}
  for name, image_size in FIXTURES.items():
    folder = os.path.join(FLAGS.fixtures, name)
    if not os.path.isdir(folder):
      print(f'{folder} is missing: fixture {name} skipped.')
      continue
    with tempfile.TemporaryDirectory() as directory:
      started = time.perf_counter()
      result = subprocess.run(
          [sys.executable, 'run.py', '--mode=import', f'--checkpoint={folder}',
           f'--model_dir={os.path.join(directory, "m")}',
           f'--image_size={image_size}'],
          capture_output=True, text=True, check=False)
      seconds = time.perf_counter() - started
    if result.returncode:
      raise RuntimeError(f'import of {name} failed:\n{result.stderr[-3000:]}')
    errors = _fixture_errors(folder, image_size)
    results[name] = {'relative_errors': errors,
                     'import_seconds': round(seconds, 1),
                     'imported': result.stdout.strip().splitlines()}
    print(f'{name}: worst {max(errors.values()):.2e}; import {seconds:.1f} s',
          flush=True)
  return results


def main(argv):
  del argv
  if not FLAGS.original_code:
    raise app.UsageError('--original_code=PATH (the original\'s tf2/ '
                         'folder) is required.')
  fixtures = {} if FLAGS.only else _fixtures()
  results = {}
  for name, spec in CONFIGS.items():
    if FLAGS.only and name != FLAGS.only:
      continue
    with tempfile.TemporaryDirectory() as directory:
      with open(os.path.join(directory, 'spec.json'), 'w') as f:
        json.dump(spec, f)
      started = time.perf_counter()
      _original_outputs(name, dict(spec), directory)
      original_seconds = time.perf_counter() - started
      model_dir, seconds, line = _import(directory)
      errors, wrong = _compare(model_dir, directory, spec)
    results[name] = {'original_flags': spec, 'relative_errors': errors,
                     'wrong_settings': wrong,
                     'import_seconds': round(seconds, 1),
                     'original_build_seconds': round(original_seconds, 1),
                     'imported': line.splitlines()}
    print(f'{name}: {errors} wrong settings {wrong or "none"}; import '
          f'{seconds:.1f} s', flush=True)
  worst = max((e for r in results.values()
               for e in r['relative_errors'].values()
               if isinstance(e, float)), default=None)
  summary = {'fixtures': fixtures, 'configurations': results,
             'worst_relative_error': worst,
             'all_settings_right': not any(r['wrong_settings']
                                           for r in results.values())}
  if not FLAGS.only:
    os.makedirs(os.path.dirname(FLAGS.output) or '.', exist_ok=True)
    with open(FLAGS.output, 'w') as f:
      json.dump(summary, f, indent=2, sort_keys=True)
  print(f'worst relative error {worst}; settings all right: '
        f'{summary["all_settings_right"]}')


if __name__ == '__main__':
  app.run(main)
