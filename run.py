"""SimCLR command line: `python run.py --mode=MODE [flags]`.

Flags are read here and nowhere else: they become frozen config objects that
are passed down to `simclr_tf`. Flag names follow the original SimCLR code.
"""

import contextlib
import dataclasses
import json
import math
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging

# Keep TensorFlow's C++ start-up chatter out of the way unless asked for.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

MODES = ('train', 'eval', 'train_then_eval', 'export', 'preview', 'embed')

# --- What to run ----------------------------------------------------------------
flags.DEFINE_enum('mode', None, MODES, 'What to run.')
flags.DEFINE_enum('train_mode', 'pretrain', ['pretrain', 'finetune'],
                  'Contrastive pretraining, or supervised fine-tuning.')
flags.DEFINE_string('model_dir', None,
                    'Checkpoints, summaries, result.json and exports; '
                    'default: models/<dataset>-<train_mode>.')
flags.DEFINE_string('checkpoint', None,
                    'Initial encoder weights for a new run (fine-tuning): a '
                    'checkpoint prefix or a directory; for --mode=export, '
                    'the checkpoint to export.')

# --- Data -----------------------------------------------------------------------
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
                     'Read the training records of a TFDS TFRecord dataset '
                     'into memory once (then shuffled as a whole).')
flags.DEFINE_integer('shuffle_buffer', 8192, 'TFDS TFRecord datasets: '
                     'records permuted together (memory: about twice this '
                     'many encoded images); other sources shuffle globally.')
flags.DEFINE_integer('seed', 0, 'Seed of weights, augmentations, shuffling '
                     'and label-fraction subsets.')

# --- Augmentation ---------------------------------------------------------------
flags.DEFINE_integer('image_size', None,
                     'Input side in pixels; default: the dataset\'s own size '
                     'for square images of 32 px or less, else 224.')
flags.DEFINE_float('color_jitter_strength', 0.5,
                   'Strength s of colour jitter (brightness, contrast, '
                   'saturation 0.8 s; hue 0.2 s); 1.0 for ImageNet.')
flags.DEFINE_integer('max_image_pixels', 40_000_000, 'Image-folder files and '
                     'serving_bytes requests above this many pixels are '
                     'refused from their headers, before decoding.')
flags.DEFINE_float('min_crop_area', 0.08, 'Smallest area of a random crop, '
                   'as a fraction of the image (the paper: 0.08).')
flags.DEFINE_boolean('use_blur', None,
                     'Gaussian blur in pretraining; default: on above 32 px.')

# --- Model ----------------------------------------------------------------------
flags.DEFINE_integer('resnet_depth', 18, 'ResNet depth: 18, 34, 50, 101, '
                     '152 or 200.')
flags.DEFINE_float('width_multiplier', 1.0, 'ResNet width multiplier.')
flags.DEFINE_float('sk_ratio', 0.0, 'Selective-kernel ratio (SimCLRv2: '
                   '0.0625); 0 turns selective kernels off.')
flags.DEFINE_float('se_ratio', 0.0, 'Squeeze-excitation ratio; 0 turns it '
                   'off.')
flags.DEFINE_boolean('global_bn', True,
                     'Batch-norm statistics over the global batch.')
flags.DEFINE_float('batch_norm_decay', 0.9, 'Batch-norm moving-average '
                   'momentum.')
flags.DEFINE_enum('proj_head_mode', 'nonlinear',
                  ['none', 'linear', 'nonlinear'], 'Projection head.')
flags.DEFINE_integer('proj_out_dim', 128, 'Projection output width.')
flags.DEFINE_integer('num_proj_layers', 3,
                     'Layers of the nonlinear projection head.')
flags.DEFINE_integer('ft_proj_selector', 0,
                     'Projection layer feeding the supervised head (0: the '
                     'encoder output).')
flags.DEFINE_boolean('zero_init_logits_layer', False,
                     'Start the supervised head at zero.')
flags.DEFINE_integer('fine_tune_after_block', -1,
                     'Fine-tuning freezes the stem (0) or up to block group '
                     '1-4; -1 trains everything.')
flags.DEFINE_boolean('lineareval_while_pretraining', True,
                     'Train a linear head on stop_gradient(features) while '
                     'pretraining.')

# --- Loss and optimisation ------------------------------------------------------
flags.DEFINE_float('temperature', 0.5, 'NT-Xent temperature.')
flags.DEFINE_boolean('hidden_norm', True,
                     'L2-normalise projections before the loss.')
flags.DEFINE_enum('optimizer', 'lars', ['lars', 'momentum', 'adam'],
                  'Optimizer.')
flags.DEFINE_float('learning_rate', 1.0, 'Base learning rate (scaled by '
                   '--learning_rate_scaling).')
flags.DEFINE_enum('learning_rate_scaling', 'linear', ['linear', 'sqrt'],
                  'lr x batch/256 (linear) or lr x sqrt(batch).')
flags.DEFINE_float('warmup_epochs', 10, 'Linear warmup length in epochs.')
flags.DEFINE_float('weight_decay', 1e-4, 'Weight decay.')
flags.DEFINE_float('momentum', 0.9, 'Momentum.')

# --- Training loop --------------------------------------------------------------
flags.DEFINE_integer('train_batch_size', 512, 'Global training batch size.')
flags.DEFINE_float('train_epochs', 1000, 'Training epochs.')
flags.DEFINE_integer('train_steps', 0, 'Training steps; > 0 overrides '
                     '--train_epochs.')
flags.DEFINE_float('checkpoint_epochs', 1, 'Epochs between checkpoints.')
flags.DEFINE_integer('checkpoint_steps', 0, 'Steps between checkpoints; > 0 '
                     'overrides --checkpoint_epochs.')
flags.DEFINE_integer('keep_checkpoint_max', 5, 'Checkpoints kept.')
flags.DEFINE_integer('keep_hub_module_max', 1, 'SavedModel exports kept.')
flags.DEFINE_integer('summary_steps', 100, 'Steps between TensorBoard '
                     'summaries.')
flags.DEFINE_integer('steps_per_loop', 10, 'Steps per tf.function call.')

# --- Evaluation -----------------------------------------------------------------
flags.DEFINE_integer('eval_batch_size', 256, 'Global evaluation batch size.')
flags.DEFINE_integer('eval_steps', 0, 'Evaluation batches; 0: the whole '
                     'split, each example exactly once.')
flags.DEFINE_boolean('knn', True, 'Run the kNN monitor (k-NN on '
                     'final_avg_pool features) when labels exist.')
flags.DEFINE_integer('knn_k', 200, 'Neighbours of the kNN monitor.')
flags.DEFINE_float('knn_temperature', 0.1, 'Temperature of the kNN '
                   'monitor\'s vote weights.')
flags.DEFINE_integer('knn_train_examples', 100_000, 'Training examples '
                     '(a seeded random subset of larger splits) whose '
                     'features form the kNN bank (float16); 0: all.')
flags.DEFINE_integer('probe_train_examples', 100_000, 'Training examples '
                     '(the same seeded order) the linear probe and the '
                     'raw-pixel baseline fit on; 0: all.')
flags.DEFINE_integer('knn_every_n_checkpoints', 0, 'Also run the kNN monitor '
                     'at every N-th checkpoint; 0: only at the end.')
flags.DEFINE_boolean('linear_probe', False, 'Also fit a logistic-regression '
                     'probe (L-BFGS to convergence, L2 chosen on held-out '
                     'training data) on frozen features.')
flags.DEFINE_boolean('random_baseline', False, 'Also evaluate the baselines '
                     'with the same kNN and probe: raw pixels, and the same '
                     'encoder with random weights at standard '
                     'initialisation.')
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
                  'Compute precision (variables, loss and softmax stay '
                  'float32; float16 adds loss scaling). auto: float32 on '
                  'CPU, bfloat16 on TPUs and GPUs of compute capability 8+, '
                  'float16 on 7.x GPUs.')
flags.DEFINE_boolean('jit_compile', None, 'Compile the training step with '
                     'XLA. Default: on for a single GPU, off otherwise (it '
                     'is slower on CPU).')
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


class UsageError(ValueError):
  """Invalid flags; the message is one line for the user."""


def _check(condition, message):
  if not condition:
    raise UsageError(message)


def _default_model_dir():
  name = FLAGS.dataset
  if name.startswith('folder:'):
    name = os.path.basename(os.path.normpath(name[len('folder:'):]))
  return os.path.join('models', re.sub(r'[^\w.-]+', '_', name) +
                      f'-{FLAGS.train_mode}')


def check_flags():
  """Fails before any work on values that cannot work."""
  positive = ['train_batch_size', 'eval_batch_size', 'proj_out_dim',
              'max_image_pixels', 'shuffle_buffer',
              'num_proj_layers', 'summary_steps', 'steps_per_loop',
              'keep_checkpoint_max', 'keep_hub_module_max', 'cpu_replicas',
              'knn_k', 'preview_images', 'preview_pairs']
  for name in positive:
    _check(FLAGS[name].value > 0, f'--{name}={FLAGS[name].value} must be > 0.')
  for name in ('knn_train_examples', 'probe_train_examples'):
    _check(FLAGS[name].value >= 0,
           f'--{name}={FLAGS[name].value} must be >= 0 (0: all).')
  _check(0 < FLAGS.label_fraction <= 1,
         f'--label_fraction={FLAGS.label_fraction} must be in (0, 1].')
  _check(math.isfinite(FLAGS.temperature) and FLAGS.temperature > 0,
         f'--temperature={FLAGS.temperature} must be a number > 0.')
  _check(math.isfinite(FLAGS.learning_rate) and FLAGS.learning_rate > 0,
         f'--learning_rate={FLAGS.learning_rate} must be a number > 0.')
  _check(math.isfinite(FLAGS.weight_decay) and FLAGS.weight_decay >= 0,
         f'--weight_decay={FLAGS.weight_decay} must be a number >= 0.')
  _check(0 <= FLAGS.momentum < 1, f'--momentum={FLAGS.momentum} must be in '
         '[0, 1).')
  _check(FLAGS.width_multiplier > 0 and round(64 * FLAGS.width_multiplier) >= 1,
         f'--width_multiplier={FLAGS.width_multiplier} leaves the first '
         'layers without channels (64 x width rounds to 0); use 1/64 or '
         'more.')
  _check(FLAGS.color_jitter_strength >= 0,
         '--color_jitter_strength must be >= 0.')
  _check(0 < FLAGS.min_crop_area <= 1, '--min_crop_area must be in (0, 1].')
  _check(FLAGS.train_epochs > 0 or FLAGS.train_steps > 0,
         'Give --train_epochs or --train_steps > 0.')
  _check(-1 <= FLAGS.fine_tune_after_block <= 4,
         '--fine_tune_after_block must be in [-1, 4].')
  if FLAGS.fine_tune_after_block >= 0:
    _check(FLAGS.train_mode == 'finetune',
           '--fine_tune_after_block needs --train_mode=finetune.')
  head_layers = {'none': 0, 'linear': 1}.get(FLAGS.proj_head_mode,
                                             FLAGS.num_proj_layers)
  _check(0 <= FLAGS.ft_proj_selector <= head_layers,
         f'--ft_proj_selector={FLAGS.ft_proj_selector} needs a projection '
         f'head with that many layers; --proj_head_mode='
         f'{FLAGS.proj_head_mode} has {head_layers}.')
  from simclr_tf import resnet  # pylint: disable=g-import-not-at-top
  _check(FLAGS.resnet_depth in resnet.SUPPORTED_DEPTHS,
         f'--resnet_depth={FLAGS.resnet_depth} is not one of '
         f'{resnet.SUPPORTED_DEPTHS}.')
  if FLAGS.image_size is not None:
    _check(FLAGS.image_size >= 8, f'--image_size={FLAGS.image_size} is too '
           'small for the CIFAR stem: use 8 or more.')


def build_config(source, strategy):
  """Flags (and what the dataset tells) -> RunConfig."""
  # pylint: disable=g-import-not-at-top
  from simclr_tf import config as c
  from simclr_tf import precision
  native = source.native_image_size
  image_size = FLAGS.image_size or (
      native if native and native <= c.SMALL_IMAGE_MAX_SIZE else 224)
  _check(image_size >= 8, f'--image_size={image_size} is too small for the '
         'CIFAR stem: use 8 or more.')
  use_blur = FLAGS.use_blur
  if use_blur is None:
    use_blur = c.default_use_blur(image_size)
  replicas = strategy.num_replicas_in_sync
  for name in ('train_batch_size', 'eval_batch_size'):
    _check(FLAGS[name].value % replicas == 0,
           f'--{name}={FLAGS[name].value} is not divisible by the '
           f'{replicas} replicas; use a multiple of {replicas}.')
  if FLAGS.train_mode == 'pretrain':
    # An image's negatives are the other images of the batch.
    _check(FLAGS.train_batch_size >= 2,
           f'--train_batch_size={FLAGS.train_batch_size} leaves no negatives '
           'for the contrastive loss; use 2 or more (SimCLR uses hundreds).')
  _check_activation_memory(image_size, FLAGS.train_batch_size // replicas)
  num_classes = source.num_classes
  if FLAGS.train_mode == 'finetune':
    from simclr_tf import datasets  # pylint: disable=g-import-not-at-top
    datasets.require_labels(source, 'fine-tuning')
  return c.RunConfig(
      data=c.DataConfig(
          dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
          train_split=FLAGS.train_split, eval_split=FLAGS.eval_split,
          label_fraction=FLAGS.label_fraction,
          cache_dataset=FLAGS.cache_dataset,
          shuffle_buffer=FLAGS.shuffle_buffer, seed=FLAGS.seed,
          max_image_pixels=FLAGS.max_image_pixels),
      augment=c.AugmentConfig(
          image_size=image_size,
          color_jitter_strength=FLAGS.color_jitter_strength,
          crop_area_range=(FLAGS.min_crop_area, 1.0),
          use_blur=use_blur),
      model=c.ModelConfig(
          encoder=c.EncoderConfig(
              depth=FLAGS.resnet_depth,
              width_multiplier=FLAGS.width_multiplier,
              sk_ratio=FLAGS.sk_ratio, se_ratio=FLAGS.se_ratio,
              cifar_stem=image_size <= c.SMALL_IMAGE_MAX_SIZE,
              global_bn=FLAGS.global_bn,
              batch_norm_decay=FLAGS.batch_norm_decay),
          head=c.HeadConfig(
              proj_head_mode=FLAGS.proj_head_mode,
              proj_out_dim=FLAGS.proj_out_dim,
              num_proj_layers=FLAGS.num_proj_layers,
              ft_proj_selector=FLAGS.ft_proj_selector,
              zero_init_logits_layer=FLAGS.zero_init_logits_layer),
          num_classes=num_classes, train_mode=FLAGS.train_mode,
          lineareval_while_pretraining=FLAGS.lineareval_while_pretraining,
          fine_tune_after_block=FLAGS.fine_tune_after_block,
          precision=precision.resolve_precision(FLAGS.mixed_precision,
                                                strategy)),
      optim=c.OptimConfig(
          optimizer=FLAGS.optimizer, learning_rate=FLAGS.learning_rate,
          learning_rate_scaling=FLAGS.learning_rate_scaling,
          warmup_epochs=FLAGS.warmup_epochs,
          weight_decay=FLAGS.weight_decay, momentum=FLAGS.momentum),
      train=c.TrainConfig(
          model_dir=FLAGS.model_dir or _default_model_dir(),
          train_mode=FLAGS.train_mode,
          train_batch_size=FLAGS.train_batch_size,
          train_epochs=FLAGS.train_epochs, train_steps=FLAGS.train_steps,
          checkpoint_epochs=FLAGS.checkpoint_epochs,
          checkpoint_steps=FLAGS.checkpoint_steps,
          summary_steps=FLAGS.summary_steps,
          steps_per_loop=FLAGS.steps_per_loop,
          keep_checkpoint_max=FLAGS.keep_checkpoint_max,
          keep_hub_module_max=FLAGS.keep_hub_module_max,
          checkpoint=FLAGS.checkpoint, temperature=FLAGS.temperature,
          hidden_norm=FLAGS.hidden_norm,
          jit_compile=(FLAGS.jit_compile if FLAGS.jit_compile is not None
                       else precision.default_jit_compile(
                           precision.device_type(strategy), replicas))),
      eval=c.EvalConfig(
          eval_batch_size=FLAGS.eval_batch_size,
          eval_steps=FLAGS.eval_steps, knn=FLAGS.knn, knn_k=FLAGS.knn_k,
          knn_temperature=FLAGS.knn_temperature,
          knn_every_n_checkpoints=FLAGS.knn_every_n_checkpoints,
          knn_train_examples=FLAGS.knn_train_examples,
          probe_train_examples=FLAGS.probe_train_examples,
          linear_probe=FLAGS.linear_probe,
          random_baseline=FLAGS.random_baseline))


def _check_writable(model_dir):
  """Fails before any work when --model_dir cannot be written."""
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise UsageError(f'--model_dir={model_dir} is a file, not a directory.')
  probe = os.path.join(model_dir, f'.write-test-{os.getpid()}')
  try:
    os.makedirs(model_dir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UsageError(f'--model_dir={model_dir} is not writable: '
                     f'{e.strerror or e}.') from None


# What a failed write says, whichever layer (Python or TensorFlow) raised it.
_STORAGE_ERRORS = ('No space left on device', 'File too large',
                   'Permission denied', 'Operation not permitted',
                   'Read-only file system', 'Disk quota exceeded')


def _storage_error(error) -> str | None:
  text = str(error)
  for reason in _STORAGE_ERRORS:
    if reason in text:
      return (f'could not write to --model_dir ({reason}). What was already '
              'written there (checkpoints, exports) is intact: free space or '
              'fix permissions and run the same command to resume.')
  return None


def _check_activation_memory(image_size: int, per_replica_batch: int):
  """Fails on image sizes whose activations cannot fit: the stem's output
  alone (two views, float32) is a lower bound on what training keeps."""
  stride = 1 if image_size <= 32 else 4  # CIFAR stem, or conv + max pool.
  channels = max(1, round(64 * FLAGS.width_multiplier))
  lower_bound = 2 * per_replica_batch * (image_size // stride)**2 * channels * 4
  try:
    memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return
  _check(lower_bound < memory,
         f'--image_size={image_size} with {per_replica_batch} images per '
         f'replica needs at least {lower_bound / 2**30:.0f} GiB for the first '
         f'layer\'s activations alone, more than this machine\'s '
         f'{memory / 2**30:.0f} GiB; use a smaller --image_size or batch.')


def _check_dataset_fits_a_batch(config, source):
  """A training split smaller than one batch gives no step at all."""
  from simclr_tf import train  # pylint: disable=g-import-not-at-top
  examples = train.training_split(config, source).num_examples(source)
  _check(examples >= config.train.train_batch_size,
         f'--train_batch_size={config.train.train_batch_size} is larger than '
         f'the {examples} training examples: no full batch, so no step; use '
         'a smaller batch.')


# What fixes the model's variables: config field -> the flag that sets it.
_ARCHITECTURE = {('encoder', 'depth'): 'resnet_depth',
                 ('encoder', 'width_multiplier'): 'width_multiplier',
                 ('encoder', 'sk_ratio'): 'sk_ratio',
                 ('encoder', 'se_ratio'): 'se_ratio',
                 ('encoder', 'cifar_stem'): 'image_size',
                 ('head', 'proj_head_mode'): 'proj_head_mode',
                 ('head', 'proj_out_dim'): 'proj_out_dim',
                 ('head', 'num_proj_layers'): 'num_proj_layers'}


def _check_same_architecture(config):
  """A resumed run whose architecture differs from the one in flags.json
  would fail to restore; say which flags differ instead."""
  from simclr_tf import checkpoints  # pylint: disable=g-import-not-at-top
  model_dir = config.train.model_dir
  path = os.path.join(model_dir, 'flags.json')
  if not (os.path.exists(path) and checkpoints.candidates(model_dir)):
    return
  try:
    with open(path) as f:
      before = json.load(f)['config']['model']
  except (OSError, ValueError, KeyError):
    return  # Unreadable: restoring will check the variables themselves.
  now = dataclasses.asdict(config.model)
  differ = [f'--{flag} ({part}.{field}: {before[part][field]} before, '
            f'{now[part][field]} now)'
            for (part, field), flag in _ARCHITECTURE.items()
            if field in before.get(part, {})
            and before[part][field] != now[part][field]]
  _check(not differ, f'{model_dir} holds a run with another architecture: '
         f'{"; ".join(differ)}. Resume with the same flags, or use another '
         '--model_dir.')


def write_flags(config):
  """flags.json: every flag of this run and the configuration it became."""
  values = {f.name: f.value
            for f in FLAGS.get_flags_for_module(sys.modules['__main__'])}
  path = os.path.join(config.train.model_dir, 'flags.json')
  os.makedirs(config.train.model_dir, exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump({'flags': values, 'config': dataclasses.asdict(config)}, f,
              indent=2, sort_keys=True, default=str)
  os.replace(path + '.tmp', path)


def run_preview():
  from simclr_tf import preview  # pylint: disable=g-import-not-at-top
  source = _make_source()
  config = build_config(source, _single_device())
  grid = preview.preview_grid(source, FLAGS.train_split, config.augment,
                              FLAGS.preview_images, FLAGS.preview_pairs,
                              FLAGS.seed)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.preview_path)),
              exist_ok=True)
  preview.write_png(grid, FLAGS.preview_path)
  print(f'Wrote {FLAGS.preview_path}: {FLAGS.preview_images} images of '
        f'{source.name} at {config.augment.image_size} px, each followed by '
        f'{FLAGS.preview_pairs} pairs of SimCLR views.')


def run_embed():
  # pylint: disable=g-import-not-at-top
  from simclr_tf import datasets
  from simclr_tf import embed
  _check(FLAGS.saved_model, '--mode=embed needs --saved_model=DIR '
         '(a model_dir\'s saved_model/<step>).')
  _check(os.path.exists(os.path.join(FLAGS.saved_model, 'saved_model.pb')),
         f'--saved_model={FLAGS.saved_model} holds no saved_model.pb.')
  _check(FLAGS.dataset.startswith(datasets.FOLDER_PREFIX),
         '--mode=embed takes --dataset=folder:PATH.')
  _check(FLAGS.neighbors >= 0, '--neighbors must be >= 0.')
  arrays = embed.embed_folder(
      FLAGS.saved_model, FLAGS.dataset[len(datasets.FOLDER_PREFIX):],
      FLAGS.output, FLAGS.neighbors, FLAGS.eval_batch_size,
      FLAGS.max_image_pixels)
  print(f'Wrote {FLAGS.output}: {arrays["embeddings"].shape[0]} embeddings '
        f'of size {arrays["embeddings"].shape[1]}.')


def _make_source():
  # pylint: disable=g-import-not-at-top
  from simclr_tf import config as c
  from simclr_tf import datasets
  return datasets.make_source(c.DataConfig(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      max_image_pixels=FLAGS.max_image_pixels))


def precision_device(strategy):
  from simclr_tf import precision  # pylint: disable=g-import-not-at-top
  return (f'{strategy.num_replicas_in_sync} '
          f'{precision.device_type(strategy)} replica(s)')


def _single_device():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.distribute.get_strategy()


def run_mode():
  # pylint: disable=g-import-not-at-top
  import keras
  from simclr_tf import datasets
  from simclr_tf import distribute
  from simclr_tf import lock
  from simclr_tf import runner
  import tensorflow as tf
  if FLAGS.deterministic:
    tf.config.experimental.enable_op_determinism()
  if FLAGS.cpu_replicas > 1:
    distribute.split_cpu(FLAGS.cpu_replicas)
  strategy = distribute.make_strategy(FLAGS.cpu_replicas, FLAGS.use_tpu,
                                      FLAGS.tpu_name)
  source = _make_source()
  config = build_config(source, strategy)
  logging.info('Computing in %s%s on %s.', config.model.precision,
               ' with XLA' if config.train.jit_compile else '',
               precision_device(strategy))
  if FLAGS.mode in ('eval', 'train_then_eval'):
    datasets.require_labels(source, 'evaluation')
  if FLAGS.mode in ('train', 'train_then_eval') and FLAGS.checkpoint:
    from simclr_tf import checkpoints
    checkpoints.resolve(FLAGS.checkpoint)  # Fails now if it is missing.
  run = runner.Run(config, strategy, source)
  if run.chief:
    _check_writable(config.train.model_dir)
  # One training process per model_dir (the chief's); evaluators and
  # exports may run beside it.
  trains = FLAGS.mode in ('train', 'train_then_eval')
  if trains:
    _check_dataset_fits_a_batch(config, source)
    _check_same_architecture(config)
  with (lock.exclusive(config.train.model_dir) if run.chief and trains
        else contextlib.nullcontext()):
    keras.utils.set_random_seed(FLAGS.seed)
    if run.chief and FLAGS.mode != 'export':
      write_flags(config)
    logging.info('Model directory: %s', config.train.model_dir)
    if FLAGS.mode == 'train':
      runner.run_train(run, then_eval=False)
    elif FLAGS.mode == 'train_then_eval':
      runner.run_train(run, then_eval=True)
    elif FLAGS.mode == 'eval':
      runner.run_eval(run, FLAGS.eval_watch, FLAGS.eval_timeout)
    elif FLAGS.mode == 'export':
      runner.run_export(run, FLAGS.checkpoint)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.mode is None:
    raise app.UsageError(f'--mode is required: one of {", ".join(MODES)}.')
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from simclr_tf.checkpoints import CheckpointError
  from simclr_tf.datasets import DatasetError
  from simclr_tf.embed import EmbedError
  from simclr_tf.lock import LockError
  from simclr_tf.train import Preempted
  try:
    check_flags()
    if FLAGS.mode == 'preview':
      run_preview()
    elif FLAGS.mode == 'embed':
      run_embed()
    else:
      run_mode()
  except (UsageError, DatasetError, CheckpointError, LockError, EmbedError,
          FloatingPointError) as e:
    _fail(str(e), 2)
  except Preempted as e:
    # 128 + the signal: 143 for SIGTERM, 130 for Ctrl-C, as shells report.
    logging.warning('%s', e)
    sys.exit(e.exit_code)
  except (OSError, tf.errors.OpError) as e:
    message = _storage_error(e)
    if message is None:
      raise
    _fail(message, 1)


def _fail(message, code):
  logging.flush()
  print(f'run.py: error: {message}', file=sys.stderr)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main)
