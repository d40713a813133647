"""Configuration as plain frozen dataclasses.

`run.py` turns absl flags into these objects; library code receives them as
arguments and never reads flags itself.
"""

import dataclasses

# The paper's CIFAR recipe switches blur off for small images (appendix B.9).
SMALL_IMAGE_MAX_SIZE = 32
# Images above this many pixels are refused before decoding (a 41 KB PNG can
# declare 12000 x 12000 pixels: 430 MB decoded).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


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
  color_jitter_strength: float = 1.0
  use_blur: bool = True
  crop_area_range: tuple[float, float] = (0.08, 1.0)
  crop_aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  grayscale_prob: float = 0.2
  blur_prob: float = 0.5
  blur_sigma_range: tuple[float, float] = (0.1, 2.0)
  # Evaluation crops the central 87.5% of large images, as for ImageNet.
  eval_crop_proportion: float = 0.875

  @property
  def is_small_image(self) -> bool:
    return self.image_size <= SMALL_IMAGE_MAX_SIZE


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """The ResNet encoder (`resnet_depth`, `width_multiplier`, ...)."""

  depth: int = 50
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
  # -1: fine-tune everything; 0: freeze the stem; 1-4: freeze up to that
  # block group.
  fine_tune_after_block: int = -1
  # Compute precision (precision.PRECISIONS); variables stay float32.
  precision: str = 'float32'


OPTIMIZERS = ('lars', 'momentum', 'adam')
LEARNING_RATE_SCALINGS = ('linear', 'sqrt')


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer and learning-rate schedule."""

  optimizer: str = 'lars'
  learning_rate: float = 0.3
  learning_rate_scaling: str = 'linear'
  warmup_epochs: float = 10.0
  weight_decay: float = 1e-6
  momentum: float = 0.9
  eeta: float = 0.001


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The training loop: length, checkpoints, summaries, loss settings."""

  model_dir: str
  train_mode: str = 'pretrain'
  train_batch_size: int = 512
  train_epochs: float = 100
  train_steps: int = 0  # > 0 overrides train_epochs.
  checkpoint_epochs: float = 1
  checkpoint_steps: int = 0  # > 0 overrides checkpoint_epochs.
  summary_steps: int = 100
  # Training steps run inside one tf.function call between Python-side work.
  steps_per_loop: int = 10
  keep_checkpoint_max: int = 5
  keep_hub_module_max: int = 1
  # Initial weights (encoder and projection head) for a new run: a
  # checkpoint prefix or a directory holding checkpoints.
  checkpoint: str | None = None
  temperature: float = 0.1
  hidden_norm: bool = True
  log_every_seconds: float = 5.0
  # Compile each replica's training step with XLA.
  jit_compile: bool = False


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


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything one run of run.py needs."""

  data: DataConfig
  augment: AugmentConfig
  model: ModelConfig
  optim: OptimConfig
  train: TrainConfig
  eval: EvalConfig
