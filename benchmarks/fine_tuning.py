"""The fine-tuning protocol that benchmarks/semi_supervised.py and
benchmarks/distillation.py share, without flags: labeled subsets of
Fashion-MNIST's first 50,000 training images (the last 10,000 validate),
and each run's configuration from the resolver.
"""

import os

import numpy as np

from simclr_tf.config import RunConfig
from simclr_tf.settings import resolver

NUM_TRAIN = 60000
POOL_SIZE = 50000  # Labeled subsets come from here; the rest validates.
LABEL_POOL = f'train[:{POOL_SIZE}]'
VALIDATION = f'train[{POOL_SIZE}:]'


def recorded_architecture(run: str) -> dict:
  """The architecture that a run (directory or checkpoint prefix) recorded
  in its flags.json; {} without one."""
  directory = run if os.path.isdir(run) else os.path.dirname(run)
  return resolver.Record(resolver.read_settings(directory),
                         resolver.ARCHITECTURE).values()


def subset_settings(labels: int, seed: int) -> dict:
  """The training split and label fraction of `labels` labeled images
  (subset `seed`): a fraction of the 50k pool that gives 1% / 10% of the
  60k; every image for NUM_TRAIN."""
  if labels >= NUM_TRAIN:
    return {'train_split': 'train', 'label_fraction': 1.0, 'seed': seed}
  return {'train_split': LABEL_POOL, 'label_fraction': labels / POOL_SIZE,
          'seed': seed}


def config(given: dict, *, model_dir: str, data_dir: str, epochs: float,
           batch_size: int, learning_rate: float, weight_decay: float,
           min_crop_area: float, train_mode: str = 'finetune') -> RunConfig:
  """The fashion_mnist preset trained the SimCLR code's fine-tuning way
  (momentum, square-root scaling, no warm-up, the head on the first
  projection layer, zero-initialised), `given` over it."""
  return resolver.resolve({
      'data_dir': data_dir, 'model_dir': model_dir,
      'train_mode': train_mode, 'num_classes': 10, 'image_size': 28,
      'ft_proj_selector': 1, 'zero_init_logits_layer': True,
      'fine_tune_after_block': -1, 'optimizer': 'momentum',
      'learning_rate': learning_rate, 'learning_rate_scaling': 'sqrt',
      'weight_decay': weight_decay, 'warmup_epochs': 0,
      'train_epochs': epochs, 'train_batch_size': batch_size,
      'checkpoint_epochs': epochs, 'min_crop_area': min_crop_area,
      'view_size': 0,  # Fine-tuning views are at the image size.
      'keep_checkpoint_max': 1, 'log_every_seconds': 60,
      'lineareval_while_pretraining': False, 'jit_compile': False,
      **given}, preset='fashion_mnist')


def summary(values: list[float]) -> dict:
  """Mean, spread and range of one method's runs over subsets."""
  return {'mean': float(np.mean(values)), 'std': float(np.std(values)),
          'min': float(np.min(values)), 'max': float(np.max(values)),
          'runs': len(values)}
