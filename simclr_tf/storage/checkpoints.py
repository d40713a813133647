"""Finding and restoring checkpoints."""

import os

from absl import logging
import tensorflow as tf

CHECKPOINT_NAME = 'ckpt'


class CheckpointError(ValueError):
  """A checkpoint that cannot be used; the message is for the user."""


def locate(path: str) -> str:
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


def has_optimizer_state(path: str) -> bool:
  """Whether the checkpoint holds optimizer variables beyond its step."""
  return any(key.startswith('optimizer/') and '_iterations' not in key
             for key in tf.train.load_checkpoint(path)
             .get_variable_to_shape_map())


def restore_encoder(model, path: str):
  """Restores only the encoder and projection head from `path`.

  Used to start fine-tuning (or a new pretraining run) from another run's
  checkpoint: the supervised head and the optimizer start fresh.
  """
  path = locate(path)
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


def _step_in_name(prefix: str) -> int:
  suffix = prefix.rsplit('-', 1)[-1]
  return int(suffix) if suffix.isdigit() else -1


def candidates(model_dir: str) -> list[str]:
  """Checkpoint prefixes in `model_dir`, newest first: those the state file
  lists and those on disk, so that a damaged state file hides none."""
  prefixes = set()
  try:
    state = tf.train.get_checkpoint_state(model_dir)
  except Exception:  # pylint: disable=broad-except
    state = None  # Unparsable state file: the files on disk still count.
  if state is not None:
    prefixes.update(os.path.join(model_dir, os.path.basename(p))
                    for p in state.all_model_checkpoint_paths)
  for pattern in (f'{CHECKPOINT_NAME}-*.index', f'{CHECKPOINT_NAME}-*.data-*'):
    for path in tf.io.gfile.glob(os.path.join(model_dir, pattern)):
      prefixes.add(path.split('.index')[0].split('.data-')[0])
  return sorted(prefixes, key=_step_in_name, reverse=True)


def problem_with(prefix: str) -> str | None:
  """Why the checkpoint at `prefix` cannot be loaded, or None: its index is
  read and every tensor in it (a truncated data file fails there)."""
  if not tf.io.gfile.exists(prefix + '.index'):
    return 'its .index file is missing'
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f'it cannot be read ({first_line[:200]})'
  return None


def latest_in(model_dir: str) -> str | None:
  """The newest checkpoint in `model_dir` that loads, or None when there is
  none at all. Damaged newer ones are skipped with one warning; when
  checkpoint files exist but none loads, raises CheckpointError rather than
  letting a run start over."""
  if not tf.io.gfile.isdir(model_dir):
    return None
  problems = []
  for prefix in candidates(model_dir):
    problem = problem_with(prefix)
    if problem is None:
      if problems:
        logging.warning('Skipping damaged checkpoint(s) in %s: %s; using %s.',
                        model_dir, '; '.join(problems), prefix)
      return prefix
    problems.append(f'{os.path.basename(prefix)}: {problem}')
  if problems:
    raise CheckpointError(
        f'{model_dir} holds checkpoint files but none loads ('
        f'{"; ".join(problems)}). Nothing was changed; to start over, move '
        'them away or use another --model_dir.')
  return None


_NO_CHECKPOINT = {
    'eval': 'to evaluate; train first (--mode=train) or point --model_dir '
            'at a training run.',
    'export': 'to export; give --checkpoint=PATH or train first.'}


def latest_to_work_on(model_dir: str, mode: str) -> str:
  """The newest checkpoint that `mode` ('eval', 'export') works on."""
  path = latest_in(model_dir)
  if path is None:
    raise CheckpointError(
        f'--model_dir={model_dir} holds no checkpoint {_NO_CHECKPOINT[mode]}')
  return path


def manager(checkpoint, directory: str, max_to_keep: int):
  os.makedirs(directory, exist_ok=True)
  return tf.train.CheckpointManager(checkpoint, directory, max_to_keep,
                                    checkpoint_name=CHECKPOINT_NAME)
