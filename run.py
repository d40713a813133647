"""SimCLR command line: `python run.py --mode=MODE [flags]`.

Flags are defined and read here and nowhere else: they become a frozen
`Command` (the settings given, and the choices that are not settings) that
`simclr_tf.modes.execute` carries out; settings/resolver.py turns the settings
into the run's configuration. Flag names follow the original SimCLR code;
the flags that set a configuration field take their defaults from
simclr_tf/config.py, the one place where defaults live
(docs/command_line.md).
"""

import dataclasses
import sys
import typing

from absl import app
from absl import flags
from absl import logging

# TensorFlow-free imports: the console is set up before TensorFlow starts.
from simclr_tf.config import (LEARNING_RATE_SCALINGS, LINEAREVAL_VIEWS,
                              OPTIMIZERS, PRECISIONS, TRAIN_MODES)
from simclr_tf.inputs import augmentation_names
from simclr_tf.network import architectures
from simclr_tf.settings import recipes
from simclr_tf.settings import registry
from simclr_tf.settings.command import MODES, Command


def _setting_flag(name, help_text, choices=None):
  """A flag for the setting `name`, with the setting's default (None for
  settings derived from the data and devices unless given)."""
  setting = registry.SETTINGS[name]
  default = (None if name in registry.DERIVED or setting.required
             else setting.default)
  kind = next((t for t in (typing.get_args(setting.type) or (setting.type,))
               if t is not type(None)))
  if choices:
    flags.DEFINE_enum(name, default, choices, help_text)
  elif kind is bool:
    flags.DEFINE_boolean(name, default, help_text)
  elif kind is int:
    flags.DEFINE_integer(name, default, help_text)
  elif kind is float:
    flags.DEFINE_float(name, default, help_text)
  else:
    flags.DEFINE_string(name, default, help_text)
  SETTING_FLAGS.append(name)


SETTING_FLAGS = []

# --- What to run ----------------------------------------------------------------
flags.DEFINE_enum('mode', None, MODES, 'What to run.')
flags.DEFINE_enum('preset', None, list(recipes.PRESETS), 'A recipe '
                  '(simclr_tf/settings/recipes.py) whose settings replace the '
                  'defaults; flags given explicitly still win.')
_setting_flag('train_mode', 'Contrastive pretraining, or supervised '
              'fine-tuning.', TRAIN_MODES)
_setting_flag('model_dir', 'Checkpoints, summaries, result.json and exports; '
              'default: models/<dataset>-<train_mode>.')
_setting_flag('checkpoint', 'Initial encoder weights for a new run '
              '(fine-tuning): a checkpoint prefix or a directory; for '
              '--mode=export, the checkpoint to export; for --mode=import, '
              'a checkpoint or SavedModel of the original SimCLR TF2 code.')

# --- Data -----------------------------------------------------------------------
_setting_flag('dataset', 'A TFDS name (cifar10, imagenet2012, fashion_mnist, '
              '...) or folder:PATH (one sub-folder per class, or flat for '
              'unlabeled pretraining).')
_setting_flag('data_dir', 'TFDS data directory; also searched for '
              'Fashion-MNIST IDX files.')
_setting_flag('train_split', 'Training split, in TFDS syntax (train, '
              'train[:10%], ...).')
_setting_flag('eval_split', 'Evaluation split; default: the dataset\'s test '
              'split (val/ or test/ for folders).')
_setting_flag('label_fraction', 'Class-balanced fraction of training labels '
              'used for fine-tuning (0.01 and 0.1 in the paper).')
_setting_flag('cache_dataset', 'Read the training records of a TFDS TFRecord '
              'dataset into memory once (then shuffled as a whole).')
_setting_flag('shuffle_buffer', 'TFDS TFRecord datasets: records permuted '
              'together (memory: about twice this many encoded images); '
              'other sources shuffle globally.')
_setting_flag('seed', 'Seed of weights, augmentations, shuffling and '
              'label-fraction subsets.')
_setting_flag('max_image_pixels', 'Image-folder files and serving_bytes '
              'requests above this many pixels are refused from their '
              'headers, before decoding.')

# --- Augmentation ---------------------------------------------------------------
_setting_flag('image_size', 'Input side in pixels; default: the dataset\'s '
              'own size for square images of 32 px or less, else 224.')
_setting_flag('color_jitter_strength', 'Strength s of colour jitter '
              '(brightness, contrast, saturation 0.8 s; hue 0.2 s); 1.0 for '
              'ImageNet.')
_setting_flag('min_crop_area', 'Smallest area of a random crop, as a '
              'fraction of the image (the paper: 0.08).')
_setting_flag('use_blur', 'Gaussian blur in pretraining; default: on above '
              '32 px.')
_setting_flag('augmentations', 'What makes a pretraining view, comma-'
              'separated, applied in this order whatever the order given: '
              f'{",".join(augmentation_names.AUGMENTATIONS)}; none: the '
              'image alone. Default: crop,flip,color,gray, and blur where '
              '--use_blur.')
_setting_flag('second_view_augmentations', 'The second view\'s, when it '
              'differs (none: the unaugmented image, the paper\'s Figure 5 '
              'setting); default: the same as --augmentations.')
_setting_flag('cutout_fraction', 'Side of the cutout square, as a fraction '
              'of the image side.')
_setting_flag('noise_stddev', 'Standard deviation of the Gaussian noise, on '
              'images in [0, 1].')
_setting_flag('num_small_crops', 'Multi-crop (SwAV): small views per image '
              'besides the two, each a positive of both in the contrastive '
              'loss; 0: the two views only.')
_setting_flag('small_crop_size', 'Side of the small views in pixels; 0: half '
              'of --image_size.')
_setting_flag('small_crop_min_area', 'Smallest area of a small view\'s crop, '
              'as a fraction of the image.')
_setting_flag('small_crop_max_area', 'Largest area of a small view\'s crop, '
              'as a fraction of the image.')

# --- Model ----------------------------------------------------------------------
_setting_flag('resnet_depth', 'ResNet depth: 18, 34, 50, 101, 152 or 200.')
_setting_flag('width_multiplier', 'ResNet width multiplier.')
_setting_flag('sk_ratio', 'Selective-kernel ratio (SimCLRv2: 0.0625); 0 turns '
              'selective kernels off.')
_setting_flag('se_ratio', 'Squeeze-excitation ratio; 0 turns it off.')
_setting_flag('global_bn', 'Batch-norm statistics over the global batch.')
_setting_flag('batch_norm_decay', 'Batch-norm moving-average momentum.')
_setting_flag('proj_head_mode', 'Projection head.',
              architectures.PROJ_HEAD_MODES)
_setting_flag('proj_out_dim', 'Projection output width.')
_setting_flag('num_proj_layers', 'Layers of the nonlinear projection head.')
_setting_flag('ft_proj_selector', 'Projection layer feeding the supervised '
              'head (0: the encoder output).')
_setting_flag('zero_init_logits_layer', 'Start the supervised head at zero.')
_setting_flag('fine_tune_after_block', 'Fine-tuning freezes the stem (0) or '
              'up to block group 1-4; -1 trains everything.')
_setting_flag('lineareval_while_pretraining', 'Train a linear head on '
              'stop_gradient(features) while pretraining.')
_setting_flag('lineareval_standardize', 'That head standardises its '
              'features with a batch norm without scale or offset (the '
              'SimCLR code: no).')
_setting_flag('lineareval_view', 'That head learns from each image\'s '
              'evaluation view (eval: one more forward pass, in inference '
              'mode) or from the two pretraining views (pretrain: the SimCLR '
              'code).', LINEAREVAL_VIEWS)

# --- Loss and optimisation ------------------------------------------------------
_setting_flag('temperature', 'NT-Xent temperature.')
_setting_flag('hidden_norm', 'L2-normalise projections before the loss.')
_setting_flag('optimizer', 'Optimizer.', OPTIMIZERS)
_setting_flag('learning_rate', 'Base learning rate (scaled by '
              '--learning_rate_scaling).')
_setting_flag('learning_rate_scaling', 'lr x batch/256 (linear) or lr x '
              'sqrt(batch).', LEARNING_RATE_SCALINGS)
_setting_flag('lineareval_learning_rate_scale', 'The linear head trained '
              'while pretraining learns at this fraction of the learning '
              'rate (the SimCLR code: 1).')
_setting_flag('warmup_epochs', 'Linear warmup length in epochs.')
_setting_flag('weight_decay', 'Weight decay.')
_setting_flag('momentum', 'Momentum.')

# --- Training loop --------------------------------------------------------------
_setting_flag('train_batch_size', 'Global training batch size.')
_setting_flag('train_epochs', 'Training epochs.')
_setting_flag('train_steps', 'Training steps; > 0 overrides --train_epochs.')
_setting_flag('contrastive_chunk_size', 'Pretraining: compute each '
              'replica\'s batch in chunks of this many examples with gradient '
              'caching (same loss and negatives, a chunk\'s activation '
              'memory; batch norm per chunk); 0: off.')
_setting_flag('max_train_seconds', 'Stop training (checkpoint, export, '
              'evaluation as at its end) after this many seconds; 0: no '
              'limit.')
_setting_flag('checkpoint_epochs', 'Epochs between checkpoints.')
_setting_flag('checkpoint_steps', 'Steps between checkpoints; > 0 overrides '
              '--checkpoint_epochs.')
_setting_flag('keep_checkpoint_max', 'Checkpoints kept.')
_setting_flag('keep_hub_module_max', 'Exports kept, per format.')
_setting_flag('export_precision', 'What SavedModel exports compute in, '
              'whatever the training precision. float32 serves the same '
              'features on any machine; bfloat16 / float16 are faster only '
              'where the serving device computes in them natively.',
              PRECISIONS)
_setting_flag('export_formats', 'What each export writes, comma-separated: '
              'saved_model, onnx, tflite, tflite_int8, torch (each in '
              '<model_dir>/<format>/<step>/, checked against the SavedModel; '
              'all but saved_model need requirements-export.txt).')
_setting_flag('summary_steps', 'Steps between TensorBoard summaries.')
_setting_flag('steps_per_loop', 'Steps per tf.function call.')
_setting_flag('log_every_seconds', 'Seconds between progress lines.')

# --- Evaluation -----------------------------------------------------------------
_setting_flag('eval_batch_size', 'Global evaluation batch size.')
_setting_flag('eval_steps', 'Evaluation batches; 0: the whole split, each '
              'example exactly once.')
_setting_flag('knn', 'Run the kNN monitor (k-NN on final_avg_pool features) '
              'when labels exist.')
_setting_flag('knn_k', 'Neighbours of the kNN monitor.')
_setting_flag('knn_temperature', 'Temperature of the kNN monitor\'s vote '
              'weights.')
_setting_flag('knn_train_examples', 'Training examples (a seeded random '
              'subset of larger splits) whose features form the kNN bank '
              '(float16); 0: all.')
_setting_flag('probe_train_examples', 'Training examples (the same seeded '
              'order) the linear probe and the raw-pixel baseline fit on; '
              '0: all.')
_setting_flag('knn_every_n_checkpoints', 'Also run the kNN monitor at every '
              'N-th checkpoint; 0: only at the end.')
_setting_flag('linear_probe', 'Also fit a logistic-regression probe (L-BFGS '
              'to convergence, L2 chosen on held-out training data) on '
              'frozen features.')
_setting_flag('random_baseline', 'Also evaluate the baselines with the same '
              'kNN and probe: raw pixels, and the same encoder with random '
              'weights at standard initialisation.')
flags.DEFINE_boolean('eval_watch', False, '--mode=eval keeps evaluating new '
                     'checkpoints in --model_dir.')
flags.DEFINE_float('eval_timeout', 0, 'Seconds --eval_watch waits for a new '
                   'checkpoint before stopping; 0: forever.')
flags.DEFINE_boolean('deterministic', False, 'Deterministic TensorFlow ops, '
                     'so a run killed and resumed ends with the same weights '
                     'as an uninterrupted one (slower on GPUs).')

# --- Devices --------------------------------------------------------------------
flags.DEFINE_enum('mixed_precision', 'auto',
                  ['auto', 'float32', 'bfloat16', 'float16'],
                  'Training and evaluation compute precision (variables, '
                  'loss and softmax stay float32; float16 adds loss '
                  'scaling; exports follow --export_precision). auto: '
                  'bfloat16 on TPUs, on GPUs of compute capability 8+ and on '
                  'CPUs with AVX512_BF16 or AMX; float16 on 7.x GPUs; '
                  'float32 elsewhere.')
_setting_flag('jit_compile', 'Compile the training step with XLA. Default: '
              'on for a single GPU, off otherwise (it is slower on CPU).')
flags.DEFINE_integer('cpu_replicas', 1, 'Split the CPU into this many '
                     'logical devices and train on all (MirroredStrategy).')
flags.DEFINE_boolean('use_tpu', False, 'Train on a Cloud TPU.')
flags.DEFINE_string('tpu_name', None, 'TPU name or address.')

# --- Preview --------------------------------------------------------------------
flags.DEFINE_string('preview_path', 'views.png',
                    'PNG written by --mode=preview.')
flags.DEFINE_integer('preview_images', 6, 'Rows (images) in the preview.')
flags.DEFINE_integer('preview_pairs', 3,
                     'Pairs of augmented views per preview row.')

# --- Embedding ------------------------------------------------------------------
flags.DEFINE_string('saved_model', None, '--mode=embed: the exported '
                    'SavedModel directory (saved_model/<step>).')
flags.DEFINE_string('output', 'embeddings.npz', '--mode=embed: the .npz '
                    'written (embeddings, paths, labels, neighbours).')
flags.DEFINE_string('projector_dir', None, '--mode=embed: also write a '
                    'TensorBoard Projector there (embeddings, a sprite of the '
                    'images, labels); tensorboard --logdir=DIR shows it.')
flags.DEFINE_string('retrievals', None, '--mode=embed: also write this PNG: '
                    'a row per query image of the evaluation split, then its '
                    'nearest training images.')
flags.DEFINE_integer('retrieval_queries', 8, '--retrievals: query images '
                     '(rows).')
flags.DEFINE_integer('retrieval_neighbors', 8, '--retrievals: neighbours per '
                     'query.')
flags.DEFINE_integer('neighbors', 0, '--mode=embed: also store each image\'s '
                     'K nearest neighbours by cosine similarity.')

FLAGS = flags.FLAGS


def command() -> Command:
  """The flags as a Command: the settings given explicitly, and the rest."""
  given = {name: FLAGS[name].value for name in SETTING_FLAGS
           if FLAGS[name].present}
  options = {field.name: FLAGS[field.name].value
             for field in dataclasses.fields(Command)
             if field.name not in ('given', 'flag_values')}
  flag_values = {flag.name: flag.value for flag in
                 FLAGS.get_flags_for_module(sys.modules[__name__])}
  return Command(given=given, flag_values=flag_values, **options)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.mode is None:
    raise app.UsageError(f'--mode is required: one of {", ".join(MODES)}.')
  from simclr_tf import console  # pylint: disable=g-import-not-at-top
  console.setup(FLAGS.verbosity)
  # TensorFlow starts here, after the console is set up.
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from simclr_tf import modes
  from simclr_tf.devices.distribute import WorkerLost
  from simclr_tf.settings.checks import storage_error
  from simclr_tf.training.hooks import Preempted
  try:
    modes.execute(command())
  except modes.USER_ERRORS as e:
    _fail(str(e), 2)
  except (WorkerLost, modes.ExportFailed) as e:
    _fail(str(e), e.exit_code)
  except Preempted as e:
    # 128 + the signal: 143 for SIGTERM, 130 for Ctrl-C, as shells report.
    logging.warning('%s', e)
    sys.exit(e.exit_code)
  except (OSError, tf.errors.OpError) as e:
    message = storage_error(e)
    if message is None:
      raise
    _fail(message, 1)


def _fail(message, code):
  logging.flush()
  print(f'run.py: error: {message}', file=sys.stderr)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main)
