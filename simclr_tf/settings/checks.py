"""Checks that fail before any work starts, with one line for the user."""

import importlib.util
import os

from simclr_tf.config import LINEAREVAL_VIEWS, RECOMPUTE_MODES, RunConfig
from simclr_tf.evaluation.evaluator_names import label_fractions
from simclr_tf.inputs.augmentation_names import AUGMENTATIONS
from simclr_tf.inputs.augmentation_names import NO_AUGMENTATION
from simclr_tf.network import architectures
from simclr_tf.serving.format_names import EXPORT_FORMATS
from simclr_tf.serving.format_names import export_formats
from simclr_tf.serving.format_names import EXPORT_PACKAGES
from simclr_tf.serving.format_names import NO_EXPORT


class UsageError(ValueError):
  """Invalid settings; the message is one line for the user."""


def check(condition, message):
  if not condition:
    raise UsageError(message)


def check_settings(values: dict):
  """Fails on setting values that cannot work (flag names in messages)."""
  positive = ['train_batch_size', 'eval_batch_size', 'proj_out_dim',
              'max_image_pixels', 'shuffle_buffer', 'num_proj_layers',
              'steps_per_loop', 'keep_checkpoint_max',
              'keep_hub_module_max']
  for name in positive:
    check(values[name] > 0, f'--{name}={values[name]} must be > 0.')
  check(values['summary_steps'] >= 0, f'--summary_steps='
        f'{values["summary_steps"]} must be >= 0 (0: every 100 steps, more '
        'often on a short run).')
  for name in ('knn_train_examples', 'probe_train_examples',
               'max_train_seconds'):
    check(values[name] >= 0, f'--{name}={values[name]} must be >= 0 (0: '
          'no limit).')
  check(values['knn_k'] >= 0, f'--knn_k={values["knn_k"]} must be >= 0 (0: '
        'chosen on held-out training features).')
  check(0 <= values['knn_temperature'] < float('inf'),
        f'--knn_temperature={values["knn_temperature"]} must be a number '
        '>= 0 (0: chosen on held-out training features).')
  check_label_fractions(values['label_fractions'])
  check(values['label_fraction_subsets'] > 0,
        f'--label_fraction_subsets={values["label_fraction_subsets"]} must '
        'be > 0.')
  check(values['contrastive_chunk_size'] >= 0, '--contrastive_chunk_size='
        f'{values["contrastive_chunk_size"]} must be >= 0 (0: off).')
  check(0 < values['label_fraction'] <= 1,
        f'--label_fraction={values["label_fraction"]} must be in (0, 1].')
  for name in ('temperature', 'learning_rate',
               'lineareval_learning_rate_scale'):
    check(0 < values[name] < float('inf'),
          f'--{name}={values[name]} must be a number > 0.')
  check(0 <= values['weight_decay'] < float('inf'),
        f'--weight_decay={values["weight_decay"]} must be a number >= 0.')
  check(0 <= values['momentum'] < 1,
        f'--momentum={values["momentum"]} must be in [0, 1).')
  width = values['width_multiplier']
  check(width > 0 and round(64 * width) >= 1,
        f'--width_multiplier={width} leaves the first layers without '
        'channels (64 x width rounds to 0); use 1/64 or more.')
  check(values['color_jitter_strength'] >= 0,
        '--color_jitter_strength must be >= 0.')
  check(values['view_size'] >= 0, '--view_size must be >= 0 (0: the '
        'image size).')
  check(0 < values['min_crop_area'] <= 1,
        '--min_crop_area must be in (0, 1].')
  check(values['recompute'] in RECOMPUTE_MODES,
        f'--recompute must be one of {", ".join(RECOMPUTE_MODES)}.')
  check(values['lineareval_view'] in LINEAREVAL_VIEWS,
        f'--lineareval_view must be one of {", ".join(LINEAREVAL_VIEWS)}.')
  check(values['num_small_crops'] >= 0 and values['small_crop_size'] >= 0,
        '--num_small_crops and --small_crop_size must be >= 0.')
  check(0 < values['small_crop_min_area'] <= values['small_crop_max_area']
        <= 1, '--small_crop_min_area and --small_crop_max_area must satisfy '
        '0 < min <= max <= 1.')
  check(values['num_small_crops'] == 0 or values['train_mode'] == 'pretrain',
        '--num_small_crops is for pretraining (--train_mode=pretrain).')
  check(values['train_epochs'] > 0 or values['train_steps'] > 0,
        'Give --train_epochs or --train_steps > 0.')
  check(-1 <= values['fine_tune_after_block'] <= 4,
        '--fine_tune_after_block must be in [-1, 4].')
  if values['fine_tune_after_block'] >= 0:
    check(values['train_mode'] != 'pretrain',
          '--fine_tune_after_block needs --train_mode=finetune or distill.')
  check_distillation(values)
  head_layers = architectures.projection_layers(values['proj_head_mode'],
                                                values['num_proj_layers'])
  check(0 <= values['ft_proj_selector'] <= head_layers,
        f'--ft_proj_selector={values["ft_proj_selector"]} needs a projection'
        f' head with that many layers; --proj_head_mode='
        f'{values["proj_head_mode"]} has {head_layers}.')
  check(values['resnet_depth'] in architectures.RESNET_DEPTHS,
        f'--resnet_depth={values["resnet_depth"]} is not one of '
        f'{architectures.RESNET_DEPTHS}.')
  check_export_formats(values['export_formats'], values['export_precision'])
  for name in ('augmentations', 'second_view_augmentations'):
    if values.get(name):
      check_augmentations(name, values[name])
  check(0 < values['cutout_fraction'] <= 1,
        '--cutout_fraction must be in (0, 1].')
  check(values['noise_stddev'] >= 0, '--noise_stddev must be >= 0.')


def check_distillation(values: dict):
  """--teacher and distillation's loss settings go with
  --train_mode=distill, and it needs them."""
  distill = values['train_mode'] == 'distill'
  check(distill == bool(values['teacher']),
        '--train_mode=distill needs --teacher=<a run directory or an exported '
        'SavedModel>.' if distill else
        '--teacher is for --train_mode=distill.')
  check(0 < values['distill_temperature'] < float('inf'),
        f'--distill_temperature={values["distill_temperature"]} must be a '
        'number > 0.')
  check(0 <= values['distill_label_weight'] < float('inf'),
        f'--distill_label_weight={values["distill_label_weight"]} must be a '
        'number >= 0.')
  check(not values['distill_label_weight'] or distill,
        '--distill_label_weight is for --train_mode=distill.')


def check_teacher_fits(num_classes: int, image_size: int, config: RunConfig):
  """A distillation run's teacher predicts the run's classes on the run's
  images."""
  path = config.model.distill.teacher
  classes = config.model.supervised_head.num_classes
  check(num_classes == classes,
        f'--teacher={path} predicts {num_classes} classes; this run\'s '
        f'dataset has {classes or "no labels (give --num_classes)"}.')
  size = config.augment.image_size
  check(image_size == size,
        f'--teacher={path} takes {image_size} px images; this run trains on '
        f'{size} px (--image_size={image_size}).')


def check_label_fractions(value: str):
  """Fails on a --label_fractions value that is not comma-separated
  fractions in (0, 1)."""
  try:
    fractions = label_fractions(value)
  except ValueError:
    fractions = None
  check(fractions is not None and all(0 < f < 1 for f in fractions),
        f'--label_fractions={value!r} must be comma-separated fractions in '
        '(0, 1), e.g. 0.01,0.1 (empty: none).')


def check_augmentations(flag: str, value: str):
  """Fails on an --augmentations value that names something unknown, a
  transformation twice, or 'none' beside others."""
  names = [name.strip() for name in value.split(',') if name.strip()]
  known = ', '.join(AUGMENTATIONS)
  check(names, f'--{flag}={value!r} names no transformation; give some of '
        f'{known}, or {NO_AUGMENTATION}.')
  if names != [NO_AUGMENTATION]:
    for name in names:
      check(name in AUGMENTATIONS, f'--{flag}: unknown transformation '
            f'{name!r}; use some of {known} (or {NO_AUGMENTATION} alone).')
      check(names.count(name) == 1,
            f'--{flag} names {name} twice; name it once.')


def check_export_formats(value: str, export_precision: str):
  """Known formats, each once, their converters and runtimes installed, and
  a precision every one of them can compute in."""
  formats = export_formats(value)
  if not formats:
    check(value.strip() == NO_EXPORT, f'--export_formats={value!r} names no '
          f'format; give some of {",".join(EXPORT_FORMATS)}, or '
          f'{NO_EXPORT}.')
  for name in formats:
    check(name != NO_EXPORT, f'--export_formats={value}: {NO_EXPORT} '
          'stands alone; drop it or the formats.')
    check(name in EXPORT_FORMATS, f'--export_formats: unknown format '
          f'{name!r}; the formats are {",".join(EXPORT_FORMATS)} (or '
          f'{NO_EXPORT}).')
    check(formats.count(name) == 1,
          f'--export_formats names {name} twice; name it once.')
  others = [name for name in formats if name != 'saved_model']
  check(export_precision == 'float32' or not others,
        f'--export_formats={",".join(others)} cannot compute in '
        f'--export_precision={export_precision} (these exports are float32; '
        'only saved_model computes in other precisions): export them with '
        '--export_precision=float32.')
  for name in others:
    for module, package in EXPORT_PACKAGES[name].items():
      check(importlib.util.find_spec(module) is not None,
            f'--export_formats={name} needs the {package} package, which is '
            'not installed: pip install -r requirements-export.txt.')


def check_writable(model_dir: str):
  """Fails when --model_dir cannot be written."""
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


def storage_error(error) -> str | None:
  """The user's line for a failed write to --model_dir, else None."""
  text = str(error)
  for reason in _STORAGE_ERRORS:
    if reason in text:
      return (f'could not write to --model_dir ({reason}). What was already '
              'written there (checkpoints, exports) is intact: free space or '
              'fix permissions and run the same command to resume.')
  return None


def check_activation_memory(config: RunConfig, replicas: int):
  """Fails on image sizes whose activations cannot fit: the stem's output
  alone (two views, float32) is a lower bound on what training keeps."""
  image_size = config.augment.image_size
  per_replica_batch = config.train.train_batch_size // replicas
  stride = 1 if config.model.encoder.cifar_stem else 4  # Conv + max pool.
  channels = max(1, round(64 * config.model.encoder.width_multiplier))
  lower_bound = 2 * per_replica_batch * (image_size // stride)**2 * channels * 4
  try:
    memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return
  check(lower_bound < memory,
        f'--image_size={image_size} with {per_replica_batch} images per '
        f'replica needs at least {lower_bound / 2**30:.0f} GiB for the first '
        f'layer\'s activations alone, more than this machine\'s '
        f'{memory / 2**30:.0f} GiB; use a smaller --image_size or batch.')


def check_batches(config: RunConfig, replicas: int):
  for name, value in (('train_batch_size', config.train.train_batch_size),
                      ('eval_batch_size', config.eval.eval_batch_size)):
    check(value % replicas == 0,
          f'--{name}={value} is not divisible by the {replicas} replicas; '
          f'use a multiple of {replicas}.')
  chunk = config.train.contrastive_chunk_size
  if chunk:
    per_replica = config.train.train_batch_size // replicas
    check(config.model.train_mode == 'pretrain',
          '--contrastive_chunk_size applies to pretraining only; leave it '
          f'out with --train_mode={config.model.train_mode}.')
    check(per_replica % chunk == 0,
          f'--contrastive_chunk_size={chunk} does not divide the '
          f'{per_replica} examples per replica (--train_batch_size='
          f'{config.train.train_batch_size} over {replicas} replicas).')
  if config.model.train_mode == 'pretrain':
    # An image's negatives are the other images of the batch.
    check(config.train.train_batch_size >= 2,
          f'--train_batch_size={config.train.train_batch_size} leaves no '
          'negatives for the contrastive loss; use 2 or more (SimCLR uses '
          'hundreds).')


def check_dataset_fits_a_batch(config: RunConfig, num_examples: int):
  """A training split smaller than one batch gives no step at all."""
  check(num_examples >= config.train.train_batch_size,
        f'--train_batch_size={config.train.train_batch_size} is larger than '
        f'the {num_examples} training examples: no full batch, so no step; '
        'use a smaller batch.')
