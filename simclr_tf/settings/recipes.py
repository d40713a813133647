"""Recipes as plain data.

A preset is a flat {setting: value} mapping over `config.SETTINGS`;
settings it does not name keep their defaults (config.py), and settings a
user gives explicitly override it.
"""

from typing import Any

from simclr_tf.inputs import augmentation_names

# The hour's recipe for 2 CPU cores with bfloat16 units
# (benchmarks/fashion_mnist.py; 40 minutes with AMX units). Half the width
# beats a quarter width's two and a half times as many epochs within the
# hour; batch 256 (twice the steps of 512), base learning rate 0.2 and
# temperature 0.5 beat 512, 0.075 and 0.3 (docs/benchmarks.md).
_FASHION_MNIST = {
    'dataset': 'fashion_mnist', 'resnet_depth': 18,
    'width_multiplier': 0.5, 'train_batch_size': 256,
    'train_epochs': 18, 'warmup_epochs': 1.8, 'learning_rate': 0.2,
    'learning_rate_scaling': 'sqrt', 'weight_decay': 1e-6,
    # A 28 px image cropped to 8% is mostly background: crops from 40% of
    # the area, resized to 20 px views (1.3x the images a second of 28 px;
    # evaluation and exports stay at 28), full-strength jitter (on grey
    # images, brightness and contrast only) and temperature 0.2 beat 20%,
    # 28 px, 0.5 and 0.5 in every column, in less time (docs/benchmarks.md).
    'view_size': 20, 'min_crop_area': 0.4, 'color_jitter_strength': 1.0,
    'temperature': 0.2, 'checkpoint_epochs': 1, 'eval_batch_size': 1000,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's CIFAR-10 recipe (appendix B.9), as the original code's
    # README runs it; it is also what the defaults are.
    'cifar10': {
        'dataset': 'cifar10', 'resnet_depth': 18, 'train_batch_size': 512,
        'train_epochs': 1000, 'learning_rate': 1.0,
        'learning_rate_scaling': 'linear', 'weight_decay': 1e-4,
        'temperature': 0.5, 'color_jitter_strength': 0.5,
    },
    # The paper's ImageNet recipe (ResNet-50, batch 4096, 100 epochs), as the
    # original code's README runs it.
    'imagenet2012': {
        'dataset': 'imagenet2012', 'resnet_depth': 50, 'image_size': 224,
        'train_batch_size': 4096, 'train_epochs': 100, 'learning_rate': 0.3,
        'learning_rate_scaling': 'linear', 'weight_decay': 1e-6,
        'temperature': 0.1, 'color_jitter_strength': 1.0,
        'eval_split': 'validation',
    },
    'fashion_mnist': _FASHION_MNIST,
    # The README's few minutes (scripts/quickstart.sh): the hour's recipe at
    # a quarter width for three epochs (docs/recipes.md).
    'fashion_mnist_quickstart': {
        **_FASHION_MNIST, 'width_multiplier': 0.25, 'train_epochs': 3,
        'warmup_epochs': 0.3,
    },
    # A folder of a few thousand small images (benchmarks/small_folder.py):
    # LARS at base learning rate 0.075 with square-root scaling and warmup
    # over a single epoch. At 16 px a crop of a fifth of the area is 7 px
    # across, and on grey images colour jitter is brightness and contrast
    # only: crops from 40% of the area, full-strength jitter and temperature
    # 0.2 learn more. The dataset, architecture and budget are the user's.
    'small_folder': {
        'learning_rate': 0.075, 'learning_rate_scaling': 'sqrt',
        'weight_decay': 1e-6, 'temperature': 0.2,
        'color_jitter_strength': 1.0, 'min_crop_area': 0.4,
        'warmup_epochs': 1,
    },
}


def with_preset(name: str | None, values: dict[str, Any]) -> dict[str, Any]:
  """`values` over the preset `name` (None: no preset)."""
  if name is None:
    return dict(values)
  if name not in PRESETS:
    raise ValueError(f'Unknown preset {name!r}; use one of '
                     f'{", ".join(PRESETS)}.')
  return {**PRESETS[name], **values}


def default_image_size(native_image_size: int | None) -> int:
  """A dataset's own size for square images of 32 px or less, else 224."""
  small = augmentation_names.SMALL_IMAGE_MAX_SIZE
  if native_image_size and native_image_size <= small:
    return native_image_size
  return 224
