"""SimCLR command line: `python run.py --mode=MODE [flags]`.

Flags are read here and nowhere else: they become frozen config objects that
are passed down to `simclr_tf`.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from simclr_tf import config as config_lib
from simclr_tf.datasets import DatasetError

MODES = ('preview',)

# --- Data ---------------------------------------------------------------------
flags.DEFINE_enum('mode', None, MODES, 'What to run.')
flags.DEFINE_string(
    'dataset', 'cifar10',
    'A TFDS name (cifar10, imagenet2012, fashion_mnist, ...) or folder:PATH '
    '(one sub-folder per class, or flat for unlabeled pretraining).')
flags.DEFINE_string('data_dir', 'data',
                    'TFDS data directory; also searched for Fashion-MNIST '
                    'IDX files.')
flags.DEFINE_string('train_split', 'train',
                    'Training split, in TFDS syntax (train, train[:10%], ...).')
flags.DEFINE_string('eval_split', None,
                    'Evaluation split; default: the dataset\'s test split '
                    '(val/ or test/ for folders).')
flags.DEFINE_float('label_fraction', 1.0,
                   'Class-balanced fraction of training labels used for '
                   'fine-tuning (0.01 and 0.1 in the paper).')
flags.DEFINE_boolean('cache_dataset', False,
                     'Cache the training records in memory.')
flags.DEFINE_integer('seed', 0, 'Seed of augmentations, shuffling and '
                     'label-fraction subsets.')

# --- Augmentation -------------------------------------------------------------
flags.DEFINE_integer('image_size', None,
                     'Input side in pixels; default: the dataset\'s own size '
                     'for small square images, else 224.')
flags.DEFINE_float('color_jitter_strength', 1.0,
                   'Strength s of colour jitter (brightness, contrast, '
                   'saturation 0.8 s; hue 0.2 s).')
flags.DEFINE_boolean('use_blur', None,
                     'Gaussian blur in pretraining; default: on above 32 px.')

# --- Preview ------------------------------------------------------------------
flags.DEFINE_string('preview_path', 'views.png',
                    'PNG written by --mode=preview.')
flags.DEFINE_integer('preview_images', 6, 'Rows (images) in the preview.')
flags.DEFINE_integer('preview_pairs', 3,
                     'Pairs of augmented views per preview row.')

FLAGS = flags.FLAGS


class UsageError(ValueError):
  """Invalid flags; the message is one line for the user."""


def _check(condition, message):
  if not condition:
    raise UsageError(message)


def data_config() -> config_lib.DataConfig:
  _check(0 < FLAGS.label_fraction <= 1,
         f'--label_fraction={FLAGS.label_fraction} must be in (0, 1].')
  return config_lib.DataConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      train_split=FLAGS.train_split, eval_split=FLAGS.eval_split,
      label_fraction=FLAGS.label_fraction, cache_dataset=FLAGS.cache_dataset,
      seed=FLAGS.seed)


def augment_config(native_image_size) -> config_lib.AugmentConfig:
  image_size = FLAGS.image_size or native_image_size or 224
  _check(image_size >= 8, f'--image_size={image_size} is too small: use 8 '
         'or more.')
  _check(FLAGS.color_jitter_strength >= 0,
         '--color_jitter_strength must be >= 0.')
  use_blur = FLAGS.use_blur
  if use_blur is None:
    use_blur = config_lib.default_use_blur(image_size)
  return config_lib.AugmentConfig(
      image_size=image_size, color_jitter_strength=FLAGS.color_jitter_strength,
      use_blur=use_blur)


def run_preview():
  # pylint: disable=g-import-not-at-top
  from simclr_tf import datasets
  from simclr_tf import preview
  _check(FLAGS.preview_images > 0 and FLAGS.preview_pairs > 0,
         '--preview_images and --preview_pairs must be positive.')
  data = data_config()
  source = datasets.make_source(data)
  augment = augment_config(source.native_image_size)
  grid = preview.preview_grid(source, FLAGS.train_split, augment,
                              FLAGS.preview_images, FLAGS.preview_pairs,
                              data.seed)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.preview_path)),
              exist_ok=True)
  preview.write_png(grid, FLAGS.preview_path)
  print(f'Wrote {FLAGS.preview_path}: {FLAGS.preview_images} images of '
        f'{source.name} at {augment.image_size} px, each followed by '
        f'{FLAGS.preview_pairs} pairs of SimCLR views.')


RUNNERS = {'preview': run_preview}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.mode is None:
    raise app.UsageError(f'--mode is required: one of {", ".join(MODES)}.')
  try:
    RUNNERS[FLAGS.mode]()
  except (UsageError, DatasetError) as e:
    logging.flush()
    print(f'run.py: error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
