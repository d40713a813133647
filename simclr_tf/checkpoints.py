"""Finding and restoring checkpoints."""

import os

from absl import logging
import tensorflow as tf

CHECKPOINT_NAME = 'ckpt'


class CheckpointError(ValueError):
  """A checkpoint that cannot be used; the message is for the user."""


def resolve(path: str) -> str:
  """A checkpoint prefix, or the latest checkpoint in a directory."""
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise CheckpointError(f'--checkpoint={path}: the directory holds no '
                            'checkpoint (no "checkpoint" file).')
    return latest
  if not tf.io.gfile.exists(path + '.index'):
    raise CheckpointError(f'--checkpoint={path}: neither a directory nor a '
                          'checkpoint prefix (no .index file).')
  return path


def step_of(path: str) -> int:
  """The global step a checkpoint was saved at (0 when unknown)."""
  reader = tf.train.load_checkpoint(path)
  # First the optimizer inside float16's loss-scaling wrapper (the wrapper's
  # own counter stays 0), then a plain optimizer.
  for key in ('optimizer/inner_optimizer/_iterations/.ATTRIBUTES/'
              'VARIABLE_VALUE',
              'optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE'):
    if reader.has_tensor(key):
      return int(reader.get_tensor(key))
  return 0


def restore_encoder(model, path: str):
  """Restores only the encoder and projection head from `path`.

  Used to start fine-tuning (or a new pretraining run) from another run's
  checkpoint: the supervised head and the optimizer start fresh.
  """
  path = resolve(path)
  partial = tf.train.Checkpoint(model=tf.train.Checkpoint(
      encoder=model.encoder, projection_head=model.projection_head))
  status = partial.read(path)
  try:
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise CheckpointError(
        f'{path} does not match this model ({str(e).splitlines()[0]}); use '
        'the same --resnet_depth, --width_multiplier, --sk_ratio and '
        'projection head flags as the run that wrote it.') from None
  status.expect_partial()
  logging.info('Restored the encoder and projection head from %s; the '
               'supervised head and the optimizer start fresh.', path)
  return path


def latest_in(model_dir: str) -> str | None:
  return tf.train.latest_checkpoint(model_dir)


def manager(checkpoint, directory: str, max_to_keep: int):
  os.makedirs(directory, exist_ok=True)
  return tf.train.CheckpointManager(checkpoint, directory, max_to_keep,
                                    checkpoint_name=CHECKPOINT_NAME)
