"""Configuration as plain frozen dataclasses: the one place for defaults.

Every field is a *setting* with a unique name; `run.py` defines its flags
from these defaults (same names), and `build` turns a flat {setting: value}
mapping into a `RunConfig` (resolver.py decides which values: flags,
recorded runs, presets, derived settings). Library code receives these
objects and never reads flags.
"""

from collections.abc import Mapping
import dataclasses
import operator
import typing
from typing import Any

# The paper's CIFAR recipe switches blur off for small images (appendix B.9).
SMALL_IMAGE_MAX_SIZE = 32
# Images above this many pixels are refused before decoding (a 41 KB PNG can
# declare 12000 x 12000 pixels: 430 MB decoded).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


# Settings whose default follows from the dataset and the devices
# (settings/resolver.py derives them unless given).
DERIVED = ('image_size', 'use_blur', 'augmentations', 'cifar_stem',
           'num_classes', 'precision', 'jit_compile')

# The transformations a pretraining view can be made of, in the order a view
# applies them (docs/model.md, Augmentations): the paper's crop, flip, colour
# jitter, grayscale and blur (its default composition), and the others of
# its Figure 4: rotation, Gaussian noise, cutout and the Sobel filter.
AUGMENTATIONS = ('crop', 'flip', 'rotate', 'color', 'gray', 'blur', 'noise',
                 'cutout', 'sobel')
# An --augmentations value for a view with none of them.
NO_AUGMENTATION = 'none'


def default_augmentations(use_blur: bool) -> str:
  """The SimCLR composition: crop, flip, colour distortion, blur where on."""
  return 'crop,flip,color,gray' + (',blur' if use_blur else '')


def augmentation_names(value: str) -> tuple[str, ...]:
  """The names of an --augmentations value, in the order given ('none':
  no names)."""
  names = tuple(name.strip() for name in value.split(',') if name.strip())
  return () if names == (NO_AUGMENTATION,) else names


def canonical_augmentations(value: str) -> str:
  """`value` with its names in the order a view applies them."""
  names = set(augmentation_names(value))
  return ','.join(n for n in AUGMENTATIONS if n in names) or NO_AUGMENTATION


def default_use_blur(image_size: int) -> bool:
  """Blur helps on large images only; SimCLR's CIFAR recipe turns it off."""
  return image_size > SMALL_IMAGE_MAX_SIZE


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where images come from and which subset of them is used."""

  dataset: str = 'cifar10'
  data_dir: str = 'data'
  train_split: str = 'train'
  # None means the dataset's own evaluation split ('test', or 'val' for folders
  # laid out with train/ and val/).
  eval_split: str | None = None
  # Fraction of the labeled training split kept for fine-tuning (1% / 10%
  # semi-supervised protocol). 1.0 keeps everything.
  label_fraction: float = 1.0
  # Reads the records of a dataset without random access (TFDS TFRecord
  # files) into memory once; arrays, folders and ArrayRecord need not.
  cache_dataset: bool = False
  # Without random access: records permuted together (memory: about twice
  # this many encoded images).
  shuffle_buffer: int = 8192
  seed: int = 0
  # Image-folder files and serving requests above this are refused.
  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The SimCLR augmentation family (paper, appendix A)."""

  image_size: int
  # The paper's CIFAR-10 strength; 1.0 for ImageNet.
  color_jitter_strength: float = 0.5
  use_blur: bool = True
  # Smallest area of a random crop, as a fraction of the image.
  min_crop_area: float = 0.08
  crop_aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  grayscale_prob: float = 0.2
  blur_prob: float = 0.5
  blur_sigma_range: tuple[float, float] = (0.1, 2.0)
  # Evaluation crops the central 87.5% of large images, as for ImageNet.
  eval_crop_proportion: float = 0.875
  # Multi-crop (Caron et al. 2020, SwAV): besides the two views, this many
  # small views per image, each a positive of both (objective.py).
  num_small_crops: int = 0
  # Their side in pixels; 0: half the image size.
  small_crop_size: int = 0
  # The area they are cropped from, as a fraction of the image (SwAV's
  # ImageNet range: 0.05 to 0.14).
  small_crop_min_area: float = 0.05
  small_crop_max_area: float = 0.14
  # What makes a pretraining view (AUGMENTATIONS, comma-separated; 'none':
  # the image alone); None: the SimCLR composition (`default_augmentations`).
  augmentations: str | None = None
  # The second view's, when it differs (the paper's Figure 5 makes it
  # 'none'); '': the same as the first view's.
  second_view_augmentations: str = ''
  # Cutout's square side, as a fraction of the image side (DeVries & Taylor
  # 2017 cut 16 of CIFAR's 32 pixels).
  cutout_fraction: float = 0.5
  # Gaussian noise's standard deviation, on images in [0, 1].
  noise_stddev: float = 0.1

  def view_augmentations(self, second: bool = False) -> tuple[str, ...]:
    """The names of the transformations of the first (or second) view."""
    value = self.augmentations
    if second and self.second_view_augmentations:
      value = self.second_view_augmentations
    if value is None:
      value = default_augmentations(self.use_blur)
    return augmentation_names(value)

  @property
  def crop_area_range(self) -> tuple[float, float]:
    return (self.min_crop_area, 1.0)

  @property
  def small_view_size(self) -> int:
    """The side of the small views in pixels."""
    return self.small_crop_size or max(1, round(self.image_size / 2))

  @property
  def small_crop_area_range(self) -> tuple[float, float]:
    return (self.small_crop_min_area, self.small_crop_max_area)

  @property
  def is_small_image(self) -> bool:
    return self.image_size <= SMALL_IMAGE_MAX_SIZE


# The ResNet depths network/resnet.py builds.
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """The ResNet encoder (`resnet_depth`, `width_multiplier`, ...)."""

  resnet_depth: int = 18
  width_multiplier: float = 1.0
  sk_ratio: float = 0.0
  se_ratio: float = 0.0
  # The CIFAR stem (3x3/1 conv, no max pool) for images of 32 px and below.
  cifar_stem: bool = False
  global_bn: bool = True
  batch_norm_decay: float = 0.9
  # The last batch norm of every residual block starts at gamma = 0 (each
  # block starts as its shortcut), as SimCLR trains; False: gamma = 1, the
  # standard initialisation that random-weights baselines use.
  zero_init_residual: bool = True


PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """Projection and supervised heads."""

  proj_head_mode: str = 'nonlinear'
  proj_out_dim: int = 128
  num_proj_layers: int = 3
  # Which projection-head layer feeds the supervised head: 0 is the encoder
  # output, k the output of the k-th projection layer.
  ft_proj_selector: int = 0
  zero_init_logits_layer: bool = False

  @property
  def num_layers(self) -> int:
    return {'none': 0, 'linear': 1,
            'nonlinear': self.num_proj_layers}[self.proj_head_mode]


TRAIN_MODES = ('pretrain', 'finetune')
# What --export_formats can write, each under <model_dir>/<format>/<step>/
# (docs/serving.md), and the packages each needs beyond the runtime's
# (requirements-export.txt): import name -> package to install.
EXPORT_FORMATS = ('saved_model', 'onnx', 'tflite', 'tflite_int8', 'torch')
EXPORT_PACKAGES = {
    'onnx': {'tf2onnx': 'tf2onnx', 'onnx': 'onnx',
             'onnxruntime': 'onnxruntime'},
    'tflite': {'ai_edge_litert': 'ai-edge-litert'},
    'tflite_int8': {'ai_edge_litert': 'ai-edge-litert'},
    'torch': {'torch': 'torch'},
}


def export_formats(value: str) -> tuple[str, ...]:
  """The formats of an --export_formats value, in the order given."""
  return tuple(name.strip() for name in value.split(',') if name.strip())

# Compute precisions; variables, losses and softmax stay float32 in all.
PRECISIONS = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Encoder, heads, and what the supervised head is for."""

  encoder: EncoderConfig = EncoderConfig()
  head: HeadConfig = HeadConfig()
  # Classes of the supervised head; None: no supervised head.
  num_classes: int | None = None
  train_mode: str = 'pretrain'
  # Pretraining also trains a linear classifier on stop_gradient(features).
  lineareval_while_pretraining: bool = True
  # That classifier reads its features standardised by a batch norm without
  # scale or offset (docs/evaluation.md); runs recorded before this setting
  # had none (LEGACY_DEFAULTS), nor have the original code's models.
  lineareval_standardize: bool = True
  # -1: fine-tune everything; 0: freeze the stem; 1-4: freeze up to that
  # block group.
  fine_tune_after_block: int = -1
  # Compute precision (PRECISIONS); variables stay float32.
  precision: str = 'float32'

  @property
  def has_supervised_head(self) -> bool:
    return bool(self.num_classes) and (
        self.train_mode == 'finetune' or self.lineareval_while_pretraining)

  @property
  def standardizes_side_head(self) -> bool:
    """Whether the head trained while pretraining standardises its input."""
    return (self.has_supervised_head and self.train_mode == 'pretrain' and
            self.lineareval_standardize)


OPTIMIZERS = ('lars', 'momentum', 'adam')
LEARNING_RATE_SCALINGS = ('linear', 'sqrt')


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer and learning-rate schedule."""

  optimizer: str = 'lars'
  # The paper's CIFAR-10 recipe (batch 512, 1000 epochs); the ImageNet one
  # is recipes.PRESETS['imagenet2012'].
  learning_rate: float = 1.0
  learning_rate_scaling: str = 'linear'
  warmup_epochs: float = 10.0
  weight_decay: float = 1e-4
  momentum: float = 0.9
  eeta: float = 0.001
  # The linear head trained while pretraining (lineareval_while_pretraining)
  # learns at this fraction of the pretraining learning rate: at the full
  # rate, as the SimCLR code trains it, its loss rises for the first few
  # hundred steps (docs/evaluation.md).
  lineareval_learning_rate_scale: float = 0.1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The training loop: length, checkpoints, summaries, loss settings."""

  model_dir: str
  train_batch_size: int = 512
  train_epochs: float = 1000.0
  train_steps: int = 0  # > 0 overrides train_epochs.
  checkpoint_epochs: float = 1.0
  checkpoint_steps: int = 0  # > 0 overrides checkpoint_epochs.
  summary_steps: int = 100
  # Training steps run inside one tf.function call between Python-side work.
  steps_per_loop: int = 10
  keep_checkpoint_max: int = 5
  keep_hub_module_max: int = 1
  # What SavedModel exports compute in (PRECISIONS), whatever the training
  # precision: float32 serves the same features on every machine; bfloat16
  # and float16 are fast only where the serving hardware has units for them.
  export_precision: str = 'float32'
  # Comma-separated EXPORT_FORMATS written at each export.
  export_formats: str = 'saved_model'
  # Initial weights (encoder and projection head) for a new run: a
  # checkpoint prefix or a directory holding checkpoints.
  checkpoint: str | None = None
  temperature: float = 0.5
  hidden_norm: bool = True
  # What the head trained while pretraining learns from (LINEAREVAL_VIEWS).
  lineareval_view: str = 'eval'
  log_every_seconds: float = 5.0
  # Compile each replica's training step with XLA.
  jit_compile: bool = False
  # > 0: training stops (with a checkpoint, as at its end) after this many
  # seconds of training, e.g. for baselines trained for the same time.
  max_train_seconds: float = 0.0
  # > 0: pretraining computes each replica's batch in chunks of this many
  # examples with gradient caching (gradient_cache.py): the loss and its
  # negatives stay those of the whole batch, activations those of a chunk.
  contrastive_chunk_size: int = 0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Evaluation: supervised-head accuracy, kNN monitor, linear probe."""

  eval_batch_size: int = 256
  eval_steps: int = 0  # > 0 evaluates only that many batches.
  knn: bool = True
  knn_k: int = 200
  knn_temperature: float = 0.1
  # Training examples (a seeded random subset when the split is larger)
  # whose features form the kNN bank, and the linear probe's training set:
  # they bound evaluation memory on ImageNet-sized splits.
  knn_train_examples: int = 100_000
  probe_train_examples: int = 100_000
  # Also run the kNN monitor at every N-th checkpoint (0: only at the end).
  knn_every_n_checkpoints: int = 0
  # Fit a logistic-regression probe on frozen features (train split) and
  # report its test accuracy.
  linear_probe: bool = False
  # Also evaluate the baselines, probed the same way: raw pixels and the same
  # encoder with random weights at standard initialisation.
  random_baseline: bool = False
  # What evaluating a model runs, by name (EVALUATORS, in this order); None:
  # what knn, linear_probe and random_baseline ask for (`evaluators_of`).
  evaluators: tuple[str, ...] | None = None


# Settings added after runs were recorded without them, with the value those
# runs had: a run continued from such a record takes it (resolver.py).
LEGACY_DEFAULTS = {'lineareval_standardize': False}

# What the head trained while pretraining learns from: the two pretraining
# views, as the SimCLR code; or each image's evaluation view (the
# preprocessing of evaluation, no augmentation), through the encoder in
# inference mode.
LINEAREVAL_VIEWS = ('pretrain', 'eval')

# The evaluators of evaluation/evaluators.py.
EVALUATORS = ('supervised_head', 'knn', 'linear_probe', 'random_init',
              'raw_pixels')


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything one run of run.py needs."""

  data: DataConfig
  augment: AugmentConfig
  model: ModelConfig
  optim: OptimConfig
  train: TrainConfig
  eval: EvalConfig


def evaluators_of(config: 'RunConfig') -> tuple[str, ...]:
  """The evaluators a run names, or those its flags ask for: the supervised
  head's accuracy when the model has one, kNN (--knn), the linear probe
  (--linear_probe, the baselines' comparison, and the linear evaluation of a
  model without a head), the baselines (--random_baseline)."""
  if config.eval.evaluators is not None:
    return tuple(config.eval.evaluators)
  has_head = config.model.has_supervised_head
  names = ['supervised_head'] if has_head else []
  if config.eval.knn:
    names.append('knn')
  if config.eval.linear_probe or config.eval.random_baseline or not has_head:
    names.append('linear_probe')
  if config.eval.random_baseline:
    names += ['random_init', 'raw_pixels']
  return tuple(names)


# --- Settings: the fields of every section under one flat namespace ---------

# Where each section lives in a RunConfig.
_SECTIONS = (('data', DataConfig), ('augment', AugmentConfig),
             ('model', ModelConfig), ('model.encoder', EncoderConfig),
             ('model.head', HeadConfig), ('optim', OptimConfig),
             ('train', TrainConfig), ('eval', EvalConfig))
_NO_DEFAULT = object()


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  section: str  # 'model.encoder', ...
  default: Any  # _NO_DEFAULT for required settings.
  type: Any  # The field's annotation (e.g. float, str | None).

  @property
  def required(self) -> bool:
    return self.default is _NO_DEFAULT


def _settings() -> dict[str, Setting]:
  settings = {}
  for section, cls in _SECTIONS:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
      if dataclasses.is_dataclass(hints[field.name]):
        continue  # A nested section.
      default = (field.default if field.default is not dataclasses.MISSING
                 else _NO_DEFAULT)
      assert field.name not in settings, field.name  # Names are unique.
      settings[field.name] = Setting(field.name, section, default,
                                     hints[field.name])
  return settings


SETTINGS = _settings()


def build(values: Mapping[str, Any]) -> RunConfig:
  """A RunConfig from flat {setting name: value}; the rest are defaults.

  Raises ValueError on unknown names and on missing required settings
  (`model_dir`, `image_size`).
  """
  unknown = sorted(set(values) - set(SETTINGS))
  if unknown:
    raise ValueError(f'Unknown settings: {", ".join(unknown)}.')
  by_section = {section: {} for section, _ in _SECTIONS}
  for name, setting in SETTINGS.items():
    if name in values:
      by_section[setting.section][name] = values[name]
    elif setting.required:
      raise ValueError(f'The setting {name!r} has no default; give it.')
  classes = dict(_SECTIONS)

  def make(section):
    return classes[section](**by_section[section])

  model = dataclasses.replace(make('model'), encoder=make('model.encoder'),
                              head=make('model.head'))
  return RunConfig(data=make('data'), augment=make('augment'), model=model,
                   optim=make('optim'), train=make('train'),
                   eval=make('eval'))


def flatten(config: RunConfig) -> dict[str, Any]:
  """The inverse of `build`: {setting name: value}."""
  return {name: getattr(operator.attrgetter(setting.section)(config), name)
          for name, setting in SETTINGS.items()}


def settings_of(nested: Mapping[str, Any]) -> dict[str, Any]:
  """{setting name: value} from a RunConfig as a nested dict (what
  `dataclasses.asdict` gives and flags.json stores); names it lacks are
  left out."""
  values = {}
  for name, setting in SETTINGS.items():
    part = nested
    for key in setting.section.split('.'):
      part = part.get(key, {}) if isinstance(part, Mapping) else {}
    if isinstance(part, Mapping) and name in part:
      values[name] = part[name]
  return values
