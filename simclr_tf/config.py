"""The configuration of a run: plain frozen dataclasses, the one place for
defaults, one section per concept.

Every field is a *setting* with a unique name; `run.py` defines its flags
from these defaults (same names), settings/registry.py maps the flat
{setting: value} namespace onto these sections, and settings/resolver.py
decides the values (flags, recorded runs, presets, what follows from the
dataset and the devices). Library code receives these objects and never
reads flags. The names a setting may take (augmentations, export formats,
ResNet depths, evaluators) are catalogued beside the code that owns them.
"""

import dataclasses

# Images above this many pixels are refused before decoding (a 41 KB PNG can
# declare 12000 x 12000 pixels: 430 MB decoded).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


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
  # Side of the two pretraining views in pixels, to which their crops are
  # resized; 0: image_size. Evaluation, fine-tuning and the supervised
  # head's evaluation view stay at image_size.
  view_size: int = 0
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
  # What makes a pretraining view (inputs/augmentation_names.py, comma-
  # separated; 'none': the image alone); None: the SimCLR composition.
  augmentations: str | None = None
  # The second view's, when it differs (the paper's Figure 5 makes it
  # 'none'); '': the same as the first view's.
  second_view_augmentations: str = ''
  # Cutout's square side, as a fraction of the image side (DeVries & Taylor
  # 2017 cut 16 of CIFAR's 32 pixels).
  cutout_fraction: float = 0.5
  # Gaussian noise's standard deviation, on images in [0, 1].
  noise_stddev: float = 0.1


# What a training step recomputes in its backward pass instead of keeping.
RECOMPUTE_MODES = ('none', 'blocks')


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
  # RECOMPUTE_MODES: 'blocks' keeps only each residual block's input for
  # the backward pass, which runs the block's forward pass again
  # (network/recompute.py): less memory, more time.
  recompute: str = 'none'


@dataclasses.dataclass(frozen=True)
class ProjectionHeadConfig:
  """The projection head that pretraining's loss reads."""

  # network/architectures.py: PROJ_HEAD_MODES.
  proj_head_mode: str = 'nonlinear'
  proj_out_dim: int = 128
  num_proj_layers: int = 3


# What the supervised head learns from while pretraining: the two
# pretraining views, as the SimCLR code; or each image's evaluation view
# (the preprocessing of evaluation, no augmentation), through the encoder in
# inference mode.
LINEAREVAL_VIEWS = ('pretrain', 'eval')


@dataclasses.dataclass(frozen=True)
class SupervisedHeadConfig:
  """The supervised head: the linear classifier that fine-tuning trains
  and that pretraining trains beside the encoder on stop_gradient(features)
  (linear evaluation while pretraining; the original's `lineareval_*`
  flags, docs/command_line.md)."""

  # Its classes; None: no supervised head.
  num_classes: int | None = None
  # Which projection-head layer feeds it: 0 is the encoder output, k the
  # output of the k-th projection layer.
  ft_proj_selector: int = 0
  zero_init_logits_layer: bool = False
  # Pretraining also trains it.
  lineareval_while_pretraining: bool = True
  # While pretraining it reads its features standardised by a batch norm
  # without scale or offset (docs/evaluation.md); runs recorded before this
  # setting had none (registry.LEGACY_DEFAULTS), nor have the original
  # code's models.
  lineareval_standardize: bool = True
  # What it learns from while pretraining (LINEAREVAL_VIEWS).
  lineareval_view: str = 'eval'
  # While pretraining it learns at this fraction of the learning rate: at
  # the full rate, as the SimCLR code trains it, its loss rises for the
  # first few hundred steps (docs/evaluation.md).
  lineareval_learning_rate_scale: float = 0.1


TRAIN_MODES = ('pretrain', 'finetune', 'distill')
# Compute precisions; variables, losses and softmax stay float32 in all.
PRECISIONS = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Distillation (`train_mode` 'distill', SimCLRv2's third stage): a
  fixed teacher's predictions on every training image train the model."""

  # A run directory of this project (its latest checkpoint) or an exported
  # SavedModel whose serving_default signature gives `logits_sup`.
  teacher: str | None = None
  # Both class distributions are softmax(logits / this).
  distill_temperature: float = 1.0
  # > 0: plus this times the cross-entropy on the images whose labels the
  # run may use (`label_fraction`'s class-balanced subset).
  distill_label_weight: float = 0.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Encoder, heads, and what training does with them."""

  encoder: EncoderConfig = EncoderConfig()
  projection_head: ProjectionHeadConfig = ProjectionHeadConfig()
  supervised_head: SupervisedHeadConfig = SupervisedHeadConfig()
  distill: DistillConfig = DistillConfig()
  train_mode: str = 'pretrain'
  # -1: fine-tune everything; 0: freeze the stem; 1-4: freeze up to that
  # block group.
  fine_tune_after_block: int = -1
  # Compute precision (PRECISIONS); variables stay float32.
  precision: str = 'float32'


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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The training loop: length, checkpoints, summaries, loss settings."""

  model_dir: str
  train_batch_size: int = 512
  train_epochs: float = 1000.0
  train_steps: int = 0  # > 0 overrides train_epochs.
  checkpoint_epochs: float = 1.0
  checkpoint_steps: int = 0  # > 0 overrides checkpoint_epochs.
  # 0: every 100 steps, or often enough for 50 points on a shorter run
  # (training/task.py's make_plan).
  summary_steps: int = 0
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
  # 0: chosen on held-out training features (evaluation/knn.py's grids);
  # Wu et al.'s monitor is knn_k=200, knn_temperature=0.1.
  knn_k: int = 0
  knn_temperature: float = 0.0
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
  # The probe is also fitted on these fractions of its training labels
  # (comma-separated; '': none), each on `label_fraction_subsets` seeded
  # class-balanced subsets (evaluation/few_labels.py).
  label_fractions: str = '0.01,0.1'
  label_fraction_subsets: int = 3
  # Also evaluate the baselines, probed the same way: raw pixels and the same
  # encoder with random weights at standard initialisation.
  random_baseline: bool = False
  # What evaluating a model runs, by name (evaluation/evaluator_names.py,
  # in this order); None: what knn, linear_probe and random_baseline ask
  # for (the resolver names them).
  evaluators: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything one run of run.py needs."""

  data: DataConfig
  augment: AugmentConfig
  model: ModelConfig
  optim: OptimConfig
  train: TrainConfig
  eval: EvalConfig
