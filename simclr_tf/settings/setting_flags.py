"""The absl flags of the settings: one per setting of simclr_tf/config.py
that the command line sets, named as the setting, with its default and
help. run.py defines them all; a benchmark defines those it takes (with
its own defaults where it needs others), so both take settings through the
same definitions. Only run.py and the benchmarks' mains read flags. No
TensorFlow: the console is set up before TensorFlow starts."""

import sys
import typing

from absl import flags

from simclr_tf.config import (LEARNING_RATE_SCALINGS, LINEAREVAL_VIEWS,
                              OPTIMIZERS, PRECISIONS, RECOMPUTE_MODES,
                              TRAIN_MODES)
from simclr_tf.inputs import augmentation_names
from simclr_tf.network import architectures
from simclr_tf.settings import registry

# Setting -> (help, choices or None).
HELP = {}


def _help(name, text, choices=None):
  assert name in registry.SETTINGS, name
  HELP[name] = (text, choices)


_help('train_mode', 'Contrastive pretraining, supervised fine-tuning, '
      'or distillation of --teacher.', TRAIN_MODES)
_help('model_dir', 'Checkpoints, summaries, result.json and exports; '
      'default: models/<dataset>-<train_mode>.')
_help('checkpoint', 'Initial encoder weights for a new run '
      '(fine-tuning): a checkpoint prefix or a directory; for '
      '--mode=export, the checkpoint to export; for --mode=import, '
      'a checkpoint or SavedModel of the original SimCLR TF2 code.')
_help('dataset', 'A TFDS name (cifar10, imagenet2012, fashion_mnist, '
      '...) or folder:PATH (one sub-folder per class, or flat for '
      'unlabeled pretraining).')
_help('data_dir', 'TFDS data directory; also searched for '
      'Fashion-MNIST IDX files.')
_help('train_split', 'Training split, in TFDS syntax (train, '
      'train[:10%], ...).')
_help('eval_split', 'Evaluation split; default: the dataset\'s test '
      'split (val/ or test/ for folders).')
_help('label_fraction', 'Class-balanced fraction of training labels '
      'used for fine-tuning (0.01 and 0.1 in the paper), and by '
      '--distill_label_weight.')
_help('teacher', '--train_mode=distill: the teacher, a run directory '
      '(its latest checkpoint) or an exported SavedModel with logits_sup.')
_help('distill_temperature', 'Temperature of the teacher\'s and the '
      'student\'s softmax in distillation.')
_help('distill_label_weight', 'Distillation also minimises this times the '
      'cross-entropy on the --label_fraction subset\'s labels (0: none).')
_help('cache_dataset', 'Read the training records of a TFDS TFRecord '
      'dataset into memory once (then shuffled as a whole).')
_help('shuffle_buffer', 'TFDS TFRecord datasets: records permuted '
      'together (memory: about twice this many encoded images); '
      'other sources shuffle globally.')
_help('seed', 'Seed of weights, augmentations, shuffling and '
      'label-fraction subsets.')
_help('max_image_pixels', 'Image-folder files and serving_bytes '
      'requests above this many pixels are refused from their '
      'headers, before decoding.')
_help('image_size', 'Input side in pixels; default: the dataset\'s '
      'own size for square images of 32 px or less, else 224.')
_help('color_jitter_strength', 'Strength s of colour jitter '
      '(brightness, contrast, saturation 0.8 s; hue 0.2 s); 1.0 for '
      'ImageNet.')
_help('view_size', 'Side of the two pretraining views in pixels '
      '(their crops are resized to it; smaller trains faster); 0: '
      '--image_size. Evaluation and fine-tuning stay at --image_size.')
_help('min_crop_area', 'Smallest area of a random crop, as a '
      'fraction of the image (the paper: 0.08).')
_help('use_blur', 'Gaussian blur in pretraining; default: on above '
      '32 px.')
_help('augmentations', 'What makes a pretraining view, comma-'
      'separated, applied in this order whatever the order given: '
      f'{",".join(augmentation_names.AUGMENTATIONS)}; none: the '
      'image alone. Default: crop,flip,color,gray, and blur where '
      '--use_blur.')
_help('second_view_augmentations', 'The second view\'s, when it '
      'differs (none: the unaugmented image, the paper\'s Figure 5 '
      'setting); default: the same as --augmentations.')
_help('cutout_fraction', 'Side of the cutout square, as a fraction '
      'of the image side.')
_help('noise_stddev', 'Standard deviation of the Gaussian noise, on '
      'images in [0, 1].')
_help('num_small_crops', 'Multi-crop (SwAV): small views per image '
      'besides the two, each a positive of both in the contrastive '
      'loss; 0: the two views only.')
_help('small_crop_size', 'Side of the small views in pixels; 0: half '
      'of --image_size.')
_help('small_crop_min_area', 'Smallest area of a small view\'s crop, '
      'as a fraction of the image.')
_help('small_crop_max_area', 'Largest area of a small view\'s crop, '
      'as a fraction of the image.')
_help('resnet_depth', 'ResNet depth: 18, 34, 50, 101, 152 or 200.')
_help('width_multiplier', 'ResNet width multiplier.')
_help('sk_ratio', 'Selective-kernel ratio (SimCLRv2: 0.0625); 0 turns '
      'selective kernels off.')
_help('se_ratio', 'Squeeze-excitation ratio; 0 turns it off.')
_help('global_bn', 'Batch-norm statistics over the global batch.')
_help('batch_norm_decay', 'Batch-norm moving-average momentum.')
_help('recompute', 'Training keeps only each residual block\'s input '
      'and computes the block again in the backward pass (blocks): less '
      'memory, more time; none keeps every activation.', RECOMPUTE_MODES)
_help('proj_head_mode', 'Projection head.',
      architectures.PROJ_HEAD_MODES)
_help('proj_out_dim', 'Projection output width.')
_help('num_proj_layers', 'Layers of the nonlinear projection head.')
_help('ft_proj_selector', 'Projection layer feeding the supervised '
      'head (0: the encoder output).')
_help('zero_init_logits_layer', 'Start the supervised head at zero.')
_help('fine_tune_after_block', 'Fine-tuning freezes the stem (0) or '
      'up to block group 1-4; -1 trains everything.')
_help('lineareval_while_pretraining', 'Train a linear head on '
      'stop_gradient(features) while pretraining.')
_help('lineareval_standardize', 'That head standardises its '
      'features with a batch norm without scale or offset (the '
      'SimCLR code: no).')
_help('lineareval_view', 'That head learns from each image\'s '
      'evaluation view (eval: one more forward pass, in inference '
      'mode) or from the two pretraining views (pretrain: the SimCLR '
      'code).', LINEAREVAL_VIEWS)
_help('temperature', 'NT-Xent temperature.')
_help('hidden_norm', 'L2-normalise projections before the loss.')
_help('optimizer', 'Optimizer.', OPTIMIZERS)
_help('learning_rate', 'Base learning rate (scaled by '
      '--learning_rate_scaling).')
_help('learning_rate_scaling', 'lr x batch/256 (linear) or lr x '
      'sqrt(batch).', LEARNING_RATE_SCALINGS)
_help('lineareval_learning_rate_scale', 'The linear head trained '
      'while pretraining learns at this fraction of the learning '
      'rate (the SimCLR code: 1).')
_help('warmup_epochs', 'Linear warmup length in epochs.')
_help('weight_decay', 'Weight decay.')
_help('momentum', 'Momentum.')
_help('train_batch_size', 'Global training batch size.')
_help('train_epochs', 'Training epochs.')
_help('train_steps', 'Training steps; > 0 overrides --train_epochs.')
_help('contrastive_chunk_size', 'Pretraining: compute each '
      'replica\'s batch in chunks of this many examples with gradient '
      'caching (same loss and negatives, a chunk\'s activation '
      'memory; batch norm per chunk); 0: off.')
_help('max_train_seconds', 'Stop training (checkpoint, export, '
      'evaluation as at its end) after this many seconds; 0: no '
      'limit.')
_help('checkpoint_epochs', 'Epochs between checkpoints.')
_help('checkpoint_steps', 'Steps between checkpoints; > 0 overrides '
      '--checkpoint_epochs.')
_help('keep_checkpoint_max', 'Checkpoints kept.')
_help('keep_hub_module_max', 'Exports kept, per format.')
_help('export_precision', 'What SavedModel exports compute in, '
      'whatever the training precision. float32 serves the same '
      'features on any machine; bfloat16 / float16 are faster only '
      'where the serving device computes in them natively.',
      PRECISIONS)
_help('export_formats', 'What each export writes, comma-separated: '
      'saved_model, onnx, tflite, tflite_int8, torch (each in '
      '<model_dir>/<format>/<step>/, checked against the SavedModel; '
      'all but saved_model need requirements-export.txt), or none: '
      'training writes no export (--mode=export writes one later).')
_help('summary_steps', 'Steps between TensorBoard summaries (0: every 100, '
      'or often enough for 50 points on a shorter run).')
_help('steps_per_loop', 'Steps per tf.function call.')
_help('log_every_seconds', 'Seconds between progress lines.')
_help('eval_batch_size', 'Global evaluation batch size.')
_help('eval_steps', 'Evaluation batches; 0: the whole split, each '
      'example exactly once.')
_help('knn', 'Evaluate a weighted k-NN classifier on final_avg_pool '
      'features when labels exist.')
_help('knn_k', 'Neighbours of the kNN classifier; 0: the count of '
      '1..200 that classifies held-out training features best. Wu et '
      'al.\'s monitor: --knn_k=200 --knn_temperature=0.1.')
_help('knn_temperature', 'Temperature of the kNN classifier\'s vote '
      'weights; 0: chosen with k on held-out training features.')
_help('knn_train_examples', 'Training examples (a seeded random '
      'subset of larger splits) whose features form the kNN bank '
      '(float16); 0: all.')
_help('probe_train_examples', 'Training examples (the same seeded '
      'order) the linear probe and the raw-pixel baseline fit on; '
      '0: all.')
_help('knn_every_n_checkpoints', 'Also run the kNN monitor at every '
      'N-th checkpoint; 0: only at the end.')
_help('linear_probe', 'Also fit a logistic-regression probe (L-BFGS '
      'to convergence, L2 chosen on held-out training data) on '
      'frozen features.')
_help('label_fractions', 'Fractions of the training labels the '
      'linear probe is also fitted on, comma-separated (the paper\'s '
      '1% and 10%: 0.01,0.1; empty: none).')
_help('label_fraction_subsets', 'Seeded class-balanced subsets per '
      'label fraction; the result gives their mean and spread.')
_help('random_baseline', 'Also evaluate the baselines with the same '
      'kNN and probe: raw pixels, and the same encoder with random '
      'weights at standard initialisation.')
_help('jit_compile', 'Compile the training step with XLA. Default: '
      'on for a single GPU, off otherwise (it is slower on CPU).')


def define(flag_values: flags.FlagValues, names=None, *,
           defaults=None) -> list[str]:
  """Defines the flags of settings `names` (default: all) on
  `flag_values` (the caller's: absl's FLAGS, or the FlagValues a test gives
  run.py), each with the setting's default (None for settings derived from
  the data and devices unless given) or the one in `defaults`, owned by
  the calling module (as in --help and flags.json). Returns the names
  defined."""
  defaults = defaults or {}
  names = list(HELP) if names is None else list(names)
  for name in names:
    text, choices = HELP[name]
    setting = registry.SETTINGS[name]
    default = defaults.get(name, (
        None if name in registry.DERIVED or setting.required
        else setting.default))
    kind = next((t for t in (typing.get_args(setting.type) or
                             (setting.type,)) if t is not type(None)))
    owner = {'module_name': _flag_module(_caller()),
             'flag_values': flag_values}
    if choices:
      flags.DEFINE_enum(name, default, choices, text, **owner)
    elif kind is bool:
      flags.DEFINE_boolean(name, default, text, **owner)
    elif kind is int:
      flags.DEFINE_integer(name, default, text, **owner)
    elif kind is float:
      flags.DEFINE_float(name, default, text, **owner)
    else:
      flags.DEFINE_string(name, default, text, **owner)
  return names


def _caller() -> str:
  """The module that called `define`."""
  return sys._getframe(2).f_globals['__name__']  # pylint: disable=protected-access


def _flag_module(name: str) -> str:
  """The name absl files a module's flags under: a script's is its path,
  as absl's own definitions and `get_flags_for_module` have it."""
  return sys.argv[0] if name == '__main__' else name
