"""SimCLR command line: `python run.py --mode=MODE [flags]`.

Flags are read here and nowhere else: they become frozen config objects that
are passed down to `simclr_tf`. Flag names follow the original SimCLR code;
the flags that set a configuration field take their defaults from
`simclr_tf/config.py`, the one place where defaults live.
"""

import contextlib
import os
import re
import sys
import typing

from absl import app
from absl import flags
from absl import logging

from simclr_tf.settings import config as c
from simclr_tf.settings import recipes

MODES = ('train', 'eval', 'train_then_eval', 'export', 'preview', 'embed',
         'import')
# Flags of settings that follow from the data and devices unless given
# (recipes.resolve); their flag default is None.
DERIVED = ('image_size', 'use_blur', 'jit_compile')
# Settings that fix a model's variables and inputs. Unless given, a run on a
# model_dir that holds checkpoints takes them from its flags.json, and a new
# run from --checkpoint (fine-tuning) from the flags.json beside it.
ARCHITECTURE = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                'proj_head_mode', 'proj_out_dim', 'num_proj_layers',
                'image_size')
SAME_RUN = ARCHITECTURE + ('ft_proj_selector', 'lineareval_while_pretraining',
                           'train_mode', 'fine_tune_after_block')


def _setting_flag(name, help_text, choices=None):
  """A flag for the setting `name`, with the setting's default."""
  setting = c.SETTINGS[name]
  default = None if name in DERIVED or setting.required else setting.default
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
                  '(simclr_tf/recipes.py) whose settings replace the '
                  'defaults; flags given explicitly still win.')
_setting_flag('train_mode', 'Contrastive pretraining, or supervised '
              'fine-tuning.', c.TRAIN_MODES)
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

# --- Model ----------------------------------------------------------------------
_setting_flag('resnet_depth', 'ResNet depth: 18, 34, 50, 101, 152 or 200.')
_setting_flag('width_multiplier', 'ResNet width multiplier.')
_setting_flag('sk_ratio', 'Selective-kernel ratio (SimCLRv2: 0.0625); 0 turns '
              'selective kernels off.')
_setting_flag('se_ratio', 'Squeeze-excitation ratio; 0 turns it off.')
_setting_flag('global_bn', 'Batch-norm statistics over the global batch.')
_setting_flag('batch_norm_decay', 'Batch-norm moving-average momentum.')
_setting_flag('proj_head_mode', 'Projection head.', c.PROJ_HEAD_MODES)
_setting_flag('proj_out_dim', 'Projection output width.')
_setting_flag('num_proj_layers', 'Layers of the nonlinear projection head.')
_setting_flag('ft_proj_selector', 'Projection layer feeding the supervised '
              'head (0: the encoder output).')
_setting_flag('zero_init_logits_layer', 'Start the supervised head at zero.')
_setting_flag('fine_tune_after_block', 'Fine-tuning freezes the stem (0) or '
              'up to block group 1-4; -1 trains everything.')
_setting_flag('lineareval_while_pretraining', 'Train a linear head on '
              'stop_gradient(features) while pretraining.')

# --- Loss and optimisation ------------------------------------------------------
_setting_flag('temperature', 'NT-Xent temperature.')
_setting_flag('hidden_norm', 'L2-normalise projections before the loss.')
_setting_flag('optimizer', 'Optimizer.', c.OPTIMIZERS)
_setting_flag('learning_rate', 'Base learning rate (scaled by '
              '--learning_rate_scaling).')
_setting_flag('learning_rate_scaling', 'lr x batch/256 (linear) or lr x '
              'sqrt(batch).', c.LEARNING_RATE_SCALINGS)
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
_setting_flag('keep_hub_module_max', 'SavedModel exports kept.')
_setting_flag('export_precision', 'What SavedModel exports compute in, '
              'whatever the training precision. float32 serves the same '
              'features on any machine; bfloat16 / float16 are faster only '
              'where the serving device computes in them natively.',
              c.PRECISIONS)
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
flags.DEFINE_integer('neighbors', 0, '--mode=embed: also store each image\'s '
                     'K nearest neighbours by cosine similarity.')

FLAGS = flags.FLAGS


def setting_values() -> dict:
  """{setting: value}: flags given explicitly, over the preset, over what
  the run's flags.json recorded (`recorded_settings`), over the defaults of
  config.py. Unset derived settings are left out."""
  given = recipes.with_preset(FLAGS.preset, {
      name: FLAGS[name].value for name in SETTING_FLAGS
      if FLAGS[name].present})
  defaults = {name: FLAGS[name].value for name in SETTING_FLAGS
              if FLAGS[name].value is not None}
  values = {**defaults, **given}
  if FLAGS.mode in ('train', 'eval', 'train_then_eval', 'export'):
    recorded = recorded_settings(values)
    values = {**defaults, **{k: v for k, v in recorded.items()
                             if k not in given}, **given}
  return values


def recorded_settings(values: dict) -> dict:
  """The settings recorded for the model this run continues, evaluates or
  exports: from --model_dir's flags.json when it holds checkpoints (all of
  SAME_RUN), else from the one beside --checkpoint (the ARCHITECTURE of a
  run started from it). An export of --checkpoint takes SAME_RUN from
  beside it, and an export takes num_classes (so it needs no data) and the
  training precision too."""
  # pylint: disable=g-import-not-at-top
  from simclr_tf.storage import checkpoints
  from simclr_tf.storage import records
  model_dir = values.get('model_dir') or _default_model_dir(values)
  checkpoint = values.get('checkpoint')
  beside_checkpoint = checkpoint and (
      checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint))
  resumes = os.path.isdir(model_dir) and checkpoints.candidates(model_dir)
  if FLAGS.mode == 'export' and checkpoint:
    directory, names = beside_checkpoint, SAME_RUN
  elif resumes:
    directory, names = model_dir, SAME_RUN
  elif checkpoint:
    directory, names = beside_checkpoint, ARCHITECTURE
  else:
    return {}
  if FLAGS.mode == 'export':
    # The precision it trained in, which export.json records (the export
    # itself computes in --export_precision).
    names += ('num_classes', 'precision')
  recorded = records.read_settings(directory)
  # num_classes None is recorded information: the model has no head.
  return {name: recorded[name] for name in names if name in recorded and (
      recorded[name] is not None or name == 'num_classes')}


def _check(condition, message):
  from simclr_tf.settings import checks  # pylint: disable=g-import-not-at-top
  checks.check(condition, message)


def check_flags(values: dict):
  """Fails before any work on values that cannot work."""
  from simclr_tf.settings import checks  # pylint: disable=g-import-not-at-top
  for name in ('cpu_replicas', 'preview_images', 'preview_pairs'):
    _check(FLAGS[name].value > 0, f'--{name}={FLAGS[name].value} must be > 0.')
  checks.check_settings(values)


def _default_model_dir(values):
  name = values['dataset']
  if name.startswith('folder:'):
    name = os.path.basename(os.path.normpath(name[len('folder:'):]))
  return os.path.join('models', re.sub(r'[^\w.-]+', '_', name) +
                      f'-{values["train_mode"]}')


def build_config(values: dict, source, strategy):
  """Settings (and what the dataset and devices tell) -> RunConfig."""
  # pylint: disable=g-import-not-at-top
  from simclr_tf.inputs import sources
  from simclr_tf.settings import checks
  values = recipes.resolve(
      values, native_image_size=source and source.native_image_size,
      num_classes=source and source.num_classes, strategy=strategy,
      mixed_precision=FLAGS.mixed_precision)
  values.setdefault('model_dir', _default_model_dir(values))
  _check(values['image_size'] >= 8, f'--image_size={values["image_size"]} '
         'is too small for the CIFAR stem: use 8 or more.')
  config = c.build(values)
  replicas = strategy.num_replicas_in_sync
  checks.check_batches(config, replicas)
  checks.check_activation_memory(config, replicas)
  if config.model.train_mode == 'finetune' and source is not None:
    sources.require_labels(source, 'fine-tuning')
  return config


def write_flags(config):
  """flags.json: every flag of this run and the configuration it became."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from simclr_tf.storage import records  # pylint: disable=g-import-not-at-top
  values = {f.name: f.value
            for f in FLAGS.get_flags_for_module(sys.modules['__main__'])}
  records.write_json(os.path.join(config.train.model_dir, 'flags.json'),
                     {'flags': values, 'config': dataclasses.asdict(config)},
                     default=str)


def _make_source(values):
  from simclr_tf.inputs import catalog  # pylint: disable=g-import-not-at-top
  return catalog.make_source(c.DataConfig(
      dataset=values['dataset'], data_dir=values['data_dir'],
      max_image_pixels=values['max_image_pixels']))


def run_preview(values):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from simclr_tf.inputs import preview  # pylint: disable=g-import-not-at-top
  source = _make_source(values)
  config = build_config(values, source, tf.distribute.get_strategy())
  grid = preview.preview_grid(source, config.data.train_split, config.augment,
                              FLAGS.preview_images, FLAGS.preview_pairs,
                              config.data.seed)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.preview_path)),
              exist_ok=True)
  preview.write_png(grid, FLAGS.preview_path)
  print(f'Wrote {FLAGS.preview_path}: {FLAGS.preview_images} images of '
        f'{source.name} at {config.augment.image_size} px, each followed by '
        f'{FLAGS.preview_pairs} pairs of SimCLR views.')


def run_embed(values):
  # pylint: disable=g-import-not-at-top
  from simclr_tf.inputs import catalog
  from simclr_tf.serving import embed
  _check(FLAGS.saved_model, '--mode=embed needs --saved_model=DIR '
         '(a model_dir\'s saved_model/<step>).')
  _check(os.path.exists(os.path.join(FLAGS.saved_model, 'saved_model.pb')),
         f'--saved_model={FLAGS.saved_model} holds no saved_model.pb.')
  _check(values['dataset'].startswith(catalog.FOLDER_PREFIX),
         '--mode=embed takes --dataset=folder:PATH.')
  _check(FLAGS.neighbors >= 0, '--neighbors must be >= 0.')
  arrays = embed.embed_folder(
      FLAGS.saved_model, values['dataset'][len(catalog.FOLDER_PREFIX):],
      FLAGS.output, FLAGS.neighbors, values['eval_batch_size'],
      values['max_image_pixels'])
  print(f'Wrote {FLAGS.output}: {arrays["embeddings"].shape[0]} embeddings '
        f'of size {arrays["embeddings"].shape[1]}.')


def run_import(values):
  """--mode=import: a checkpoint of the original SimCLR code -> a run of
  ours in --model_dir (checkpoint, flags.json, SavedModel)."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from simclr_tf.storage import checkpoints
  from simclr_tf.storage import lock
  from simclr_tf.network import original
  from simclr_tf.settings import checks
  from simclr_tf import modes
  from simclr_tf.run_context import Run
  _check(values.get('checkpoint'), '--mode=import needs --checkpoint=PATH: '
         'a checkpoint (prefix or directory) or SavedModel directory written '
         'by the original SimCLR TF2 code.')
  _check(FLAGS['model_dir'].present, '--mode=import needs --model_dir=DIR, '
         'the new run directory to write.')
  model_dir = values['model_dir']
  checks.check_writable(model_dir)
  _check(not checkpoints.candidates(model_dir), f'--model_dir={model_dir} '
         'already holds checkpoints; import into a new directory.')
  weights = original.read(values['checkpoint'])
  selector = (values['ft_proj_selector'] if FLAGS['ft_proj_selector'].present
              else None)
  inferred = original.infer_settings(weights, selector)
  conflicts = [f'--{name}={FLAGS[name].value} (the checkpoint has {value})'
               for name, value in inferred.items()
               if name in SETTING_FLAGS and FLAGS[name].present
               and FLAGS[name].value != value]
  _check(not conflicts, f'{weights.path} does not fit '
         f'{"; ".join(conflicts)}: leave these flags out, the architecture '
         'is read from the checkpoint.')
  # The original picks the CIFAR stem for images of 32 px and below.
  image_size = values.get('image_size') or (
      c.SMALL_IMAGE_MAX_SIZE if inferred['cifar_stem'] else 224)
  _check(inferred['cifar_stem'] == (image_size <= c.SMALL_IMAGE_MAX_SIZE),
         f'--image_size={image_size} does not suit the checkpoint\'s '
         f'{"CIFAR" if inferred["cifar_stem"] else "ImageNet"} stem, which the '
         f'original uses for images of {c.SMALL_IMAGE_MAX_SIZE} px and '
         f'{"below" if inferred["cifar_stem"] else "above"}.')
  values = recipes.resolve(
      {**values, **inferred, 'image_size': image_size},
      native_image_size=None, num_classes=inferred['num_classes'],
      strategy=tf.distribute.get_strategy(),
      mixed_precision=FLAGS.mixed_precision)
  config = c.build(values)
  with lock.exclusive(model_dir):
    write_flags(config)
    done = modes.run_import(Run(config, tf.distribute.get_strategy(), None),
                             weights)
  print(f'Imported {weights.path} (global step {done["global_step"]}): '
        f'{original.describe(inferred)}, at {image_size} px.\n'
        f'Wrote {done["checkpoint"]} and {done["saved_model"]} in '
        f'{done["seconds"]:.1f} s.', flush=True)


def run_mode(values):
  # pylint: disable=g-import-not-at-top
  import keras
  from simclr_tf.storage import checkpoints
  from simclr_tf.inputs import sources
  from simclr_tf.devices import distribute
  from simclr_tf.run_context import Run
  from simclr_tf.inputs import subsets
  from simclr_tf.storage import lock
  from simclr_tf.devices import precision
  from simclr_tf.settings import checks
  from simclr_tf import modes
  import tensorflow as tf
  if FLAGS.deterministic:
    tf.config.experimental.enable_op_determinism()
  if FLAGS.cpu_replicas > 1:
    distribute.split_cpu(FLAGS.cpu_replicas)
  strategy = distribute.make_strategy(FLAGS.cpu_replicas, FLAGS.use_tpu,
                                      FLAGS.tpu_name)
  # An export of a run whose flags.json recorded its settings needs no data.
  recorded = recorded_settings(values) if FLAGS.mode == 'export' else {}
  source = (None if 'image_size' in recorded and 'num_classes' in recorded
            else _make_source(values))
  config = build_config(values, source, strategy)
  logging.info('Computing in %s%s on %d %s replica(s).',
               config.model.precision,
               ' with XLA' if config.train.jit_compile else '',
               strategy.num_replicas_in_sync, precision.device_type(strategy))
  if FLAGS.mode in ('eval', 'train_then_eval'):
    sources.require_labels(source, 'evaluation')
  trains = FLAGS.mode in ('train', 'train_then_eval')
  if trains and config.train.checkpoint:
    checkpoints.resolve(config.train.checkpoint)  # Fails now if missing.
  run = Run(config, strategy, source)
  if run.chief:
    checks.check_writable(config.train.model_dir)
  if trains:
    checks.check_dataset_fits_a_batch(
        config, subsets.training_split(config, source).num_examples(source))
    checks.check_same_architecture(config)
  # One training process per model_dir (the chief's); evaluators and
  # exports may run beside it.
  with (lock.exclusive(config.train.model_dir) if run.chief and trains
        else contextlib.nullcontext()):
    keras.utils.set_random_seed(config.data.seed)
    if run.chief and FLAGS.mode != 'export':
      write_flags(config)
    logging.info('Model directory: %s', config.train.model_dir)
    if FLAGS.mode == 'train':
      modes.run_train(run, then_eval=False)
    elif FLAGS.mode == 'train_then_eval':
      modes.run_train(run, then_eval=True)
    elif FLAGS.mode == 'eval':
      modes.run_eval(run, FLAGS.eval_watch, FLAGS.eval_timeout)
    elif FLAGS.mode == 'export':
      modes.run_export(run, config.train.checkpoint)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.mode is None:
    raise app.UsageError(f'--mode is required: one of {", ".join(MODES)}.')
  from simclr_tf import console  # pylint: disable=g-import-not-at-top
  console.setup(FLAGS.verbosity)
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from simclr_tf.storage.checkpoints import CheckpointError
  from simclr_tf.inputs.sources import DatasetError
  from simclr_tf.devices.distribute import WorkerLost
  from simclr_tf.serving.embed import EmbedError
  from simclr_tf.training.hooks import Preempted
  from simclr_tf.storage.lock import LockError
  from simclr_tf.settings.checks import UsageError, storage_error
  try:
    values = setting_values()
    check_flags(values)
    if FLAGS.mode == 'preview':
      run_preview(values)
    elif FLAGS.mode == 'embed':
      run_embed(values)
    elif FLAGS.mode == 'import':
      run_import(values)
    else:
      run_mode(values)
  except (UsageError, DatasetError, CheckpointError, LockError, EmbedError,
          FloatingPointError) as e:
    _fail(str(e), 2)
  except WorkerLost as e:
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
