"""Does pretraining on a small image folder beat random weights? A folder
of Fashion-MNIST images at a small size, as a user with a few thousand
images of their own would train on it.

  python -m benchmarks.small_folder --output=benchmarks/results/small_folder

1. Writes a folder of PNG files, one sub-folder a class: a seeded,
   class-balanced `--train_per_class` images of each class from
   Fashion-MNIST's training split and the whole test split (10,000 images,
   so that test accuracy is known to about 0.4 points), resized to
   `--image_size` px.
2. For each of `--settings` (SETTINGS below) and each of `--seeds`, pretrains
   `--train_steps` steps at `--train_batch_size` (ResNet-18 at
   `--width_multiplier`, `--precision`) on the training folder, labels
   unused, and evaluates the frozen encoder as run.py does: the converged
   linear probe and kNN with k chosen leave-one-out, both fitted on every
   training image (docs/evaluation.md). The same encoder at standard
   initialisation with the same seed is evaluated the same way, and raw
   pixels once.

Writes result.json: every run, and per setting the mean and spread over
seeds of trained minus random weights under both protocols.
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
from PIL import Image
import tensorflow as tf

from benchmarks import machine
from simclr_tf.evaluation import evaluators
from simclr_tf.inputs import catalog
from simclr_tf.inputs import idx
from simclr_tf.inputs import subsets
from simclr_tf.inputs.sources import FASHION_MNIST_SYSTEM_DIR
from simclr_tf.run_context import RunContext
from simclr_tf.settings import resolver
from simclr_tf.settings import setting_flags
from simclr_tf.storage import records
from simclr_tf.training.train import train

# What each setting gives run.py besides the folder and the budget: the
# project's defaults, presets by name, and the small_folder preset as it
# was before it took milder crops, a lower temperature and stronger colour
# jitter (the change measured on and off).
SETTINGS = {
    'defaults': {},
    'small_folder preset': {'preset': 'small_folder'},
    'earlier small_folder preset': {
        'preset': 'small_folder', 'min_crop_area': 0.2, 'temperature': 0.3,
        'color_jitter_strength': 0.5},
}

flags.DEFINE_string('output', 'benchmarks/results/small_folder',
                    'Directory for result.json.')
flags.DEFINE_string('work_dir', '/tmp/simclr_small_folder', 'Where the '
                    'folder is written and the runs train.')
# The settings this benchmark takes, defined as run.py defines them
# (--data_dir: where else to look for Fashion-MNIST's IDX files).
setting_flags.define(
    flags.FLAGS, ['data_dir', 'image_size', 'train_steps', 'train_batch_size',
                  'width_multiplier'],
    defaults={'image_size': 16, 'train_steps': 200, 'train_batch_size': 64,
              'width_multiplier': 0.25})
flags.DEFINE_integer('train_per_class', 180, 'Training images a class.')
flags.DEFINE_list('settings', list(SETTINGS), 'Settings compared.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of each setting: the '
                  'initial (and random-baseline) weights and the '
                  'augmentations.')
flags.DEFINE_enum('precision', 'float32', ['auto', 'float32', 'bfloat16'],
                  'Compute precision (float32: what a CPU without '
                  'bfloat16 units runs).')
FLAGS = flags.FLAGS


def write_folder(root: str, images, labels, size: int):
  """`root`/<class>/<index>.png for each image, resized to `size` px."""
  for index, (image, label) in enumerate(zip(images, labels)):
    os.makedirs(os.path.join(root, str(label)), exist_ok=True)
    Image.fromarray(image).resize((size, size), Image.BILINEAR).save(
        os.path.join(root, str(label), f'{index}.png'))


def build_folder(root: str, per_class: int, size: int, seed: int = 0):
  """A class-balanced seeded subset of the training split and the whole
  test split, as `root`/train and `root`/test (kept when already there)."""
  if os.path.exists(os.path.join(root, 'done')):
    return
  directory = idx.find_fashion_mnist([FLAGS.data_dir,
                                      FASHION_MNIST_SYSTEM_DIR])
  if directory is None:
    raise SystemExit('Fashion-MNIST\'s IDX files are neither in '
                     f'{FLAGS.data_dir} nor in {FASHION_MNIST_SYSTEM_DIR}; '
                     'apt-get install dataset-fashion-mnist.')
  images, labels = idx.load_fashion_mnist_split(directory, 'train')
  chosen, _ = subsets.sample_per_class(labels, lambda _: per_class, seed)
  write_folder(os.path.join(root, 'train'), images[chosen], labels[chosen],
               size)
  write_folder(os.path.join(root, 'test'),
               *idx.load_fashion_mnist_split(directory, 'test'), size)
  open(os.path.join(root, 'done'), 'w').close()


def config_of(setting: str, seed: int, folder: str):
  """The run's configuration, as run.py would resolve these flags."""
  given = dict(SETTINGS[setting])
  preset = given.pop('preset', None)
  given.update(
      dataset=f'folder:{folder}', image_size=FLAGS.image_size,
      resnet_depth=18, width_multiplier=FLAGS.width_multiplier,
      train_steps=FLAGS.train_steps,
      train_batch_size=FLAGS.train_batch_size, seed=seed,
      model_dir=os.path.join(FLAGS.work_dir, 'runs', setting.split()[0],
                             str(seed)),
      knn_train_examples=0, probe_train_examples=0, log_every_seconds=30)
  return resolver.resolve(given, preset=preset,
                          mixed_precision=FLAGS.precision)


def top_1_percent(results: dict) -> dict:
  """Linear-probe and kNN top-1 (%) of an evaluator's metrics, and kNN's k."""
  return {'linear_probe': round(100 * results['linear_probe_top_1_accuracy'],
                                2),
          'knn': round(100 * results['knn_top_1_accuracy'], 2),
          'knn_k': results['knn_k']}


def frozen_metrics(run: RunContext, model) -> dict:
  """Linear probe and kNN of `model`'s frozen features, as run.py's."""
  return top_1_percent(evaluators.feature_metrics(run, model, knn=True,
                                                  probe=True))


def one_run(setting: str, seed: int, folder: str, source) -> dict:
  """Pretrains one seed of a setting; its and its random weights' metrics."""
  config = config_of(setting, seed, folder)
  if os.path.exists(config.train.model_dir):
    tf.io.gfile.rmtree(config.train.model_dir)
  keras.utils.set_random_seed(seed)  # The initial weights, as run.py.
  run = RunContext(config, tf.distribute.get_strategy(), source)
  started = time.monotonic()
  trained = train(run)
  seconds = time.monotonic() - started
  result = {'setting': setting, 'seed': seed,
            'train_seconds': round(seconds, 1),
            'trained': frozen_metrics(run, trained.model),
            'random_weights': frozen_metrics(
                run, evaluators.standard_init_model(config))}
  logging.info('%s', result)
  return result


def summary(runs: list[dict]) -> dict:
  """Per setting: trained minus random weights, mean and spread (sample
  standard deviation) over seeds, per protocol."""
  result = {}
  for setting in dict.fromkeys(run['setting'] for run in runs):
    mine = [run for run in runs if run['setting'] == setting]
    result[setting] = {}
    for protocol in ('linear_probe', 'knn'):
      trained = np.array([run['trained'][protocol] for run in mine])
      gain = trained - [run['random_weights'][protocol] for run in mine]
      result[setting][protocol] = {
          'trained_mean': round(float(trained.mean()), 2),
          'gain_over_random_mean': round(float(gain.mean()), 2),
          'gain_over_random_std': round(float(gain.std(ddof=1)), 2)
                                  if len(gain) > 1 else None}
  return result


def main(_):
  unknown = [name for name in FLAGS.settings if name not in SETTINGS]
  if unknown:
    raise SystemExit(f'Unknown --settings {unknown}; use some of '
                     f'{list(SETTINGS)}.')
  folder = os.path.join(FLAGS.work_dir, 'folder')
  build_folder(folder, FLAGS.train_per_class, FLAGS.image_size)
  started = time.monotonic()
  base = config_of(FLAGS.settings[0], 0, folder)
  source = catalog.make_source(base.data)
  run = RunContext(base, tf.distribute.get_strategy(), source)
  result = {'pixels': top_1_percent(evaluators.pixel_metrics(run)),
            'runs': []}
  for setting in FLAGS.settings:
    for seed in map(int, FLAGS.seeds):
      result['runs'].append(one_run(setting, seed, folder, source))
  result.update(
      summary=summary(result['runs']),
      minutes=round((time.monotonic() - started) / 60, 1),
      settings={'train_per_class': FLAGS.train_per_class,
                'image_size': FLAGS.image_size,
                'train_steps': FLAGS.train_steps,
                'train_batch_size': FLAGS.train_batch_size,
                'width_multiplier': FLAGS.width_multiplier,
                'precision': FLAGS.precision,
                'test_images': source.num_examples('test')},
      machine=machine.description(), date=time.strftime('%Y-%m-%d'))
  records.write_json(os.path.join(FLAGS.output, 'result.json'), result)
  print(json.dumps(result['summary'], indent=1))


if __name__ == '__main__':
  app.run(main)
