"""SimCLR command line: `python run.py --mode=MODE [flags]`.

Flags are read here (and in the benchmarks' mains) and nowhere else; the
settings' flags are defined by settings/setting_flags.py, which the
benchmarks define theirs with too. They become a frozen
`Command` (the settings given, and the choices that are not settings) that
`simclr_tf.modes.execute` carries out; settings/resolver.py turns the settings
into the run's configuration. Flag names follow the original SimCLR code;
the flags that set a configuration field take their defaults from
simclr_tf/config.py, the one place where defaults live
(docs/command_line.md).
"""

import dataclasses
import sys

from absl import app
from absl import flags
from absl import logging

# TensorFlow-free imports: the console is set up before TensorFlow starts.
from simclr_tf.settings import recipes
from simclr_tf.settings import setting_flags
from simclr_tf.settings.command import MODES, Command


# Every setting's flag (settings/setting_flags.py), owned by this module.
SETTING_FLAGS = setting_flags.define(flags.FLAGS)

# --- What to run ----------------------------------------------------------------
flags.DEFINE_enum('mode', None, MODES, 'What to run.')
flags.DEFINE_enum('preset', None, list(recipes.PRESETS), 'A recipe '
                  '(simclr_tf/settings/recipes.py) whose settings replace the '
                  'defaults; flags given explicitly still win.')

# --- Evaluation and devices ------------------------------------------------------
flags.DEFINE_boolean('eval_watch', False, '--mode=eval keeps evaluating new '
                     'checkpoints in --model_dir.')
flags.DEFINE_float('eval_timeout', 0, 'Seconds --eval_watch waits for a new '
                   'checkpoint before stopping; 0: forever.')
flags.DEFINE_boolean('deterministic', False, 'Deterministic TensorFlow ops, '
                     'so a run killed and resumed ends with the same weights '
                     'as an uninterrupted one (slower on GPUs).')
flags.DEFINE_enum('mixed_precision', 'auto',
                  ['auto', 'float32', 'bfloat16', 'float16'],
                  'Training and evaluation compute precision (variables, '
                  'loss and softmax stay float32; float16 adds loss '
                  'scaling; exports follow --export_precision). auto: '
                  'bfloat16 on TPUs, on GPUs of compute capability 8+ and on '
                  'CPUs with AVX512_BF16 or AMX; float16 on 7.x GPUs; '
                  'float32 elsewhere.')
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
flags.DEFINE_string('projector_dir', None, '--mode=embed: also write a '
                    'TensorBoard Projector there (embeddings, a sprite of the '
                    'images, labels); tensorboard --logdir=DIR shows it.')
flags.DEFINE_string('retrievals', None, '--mode=embed: also write this PNG: '
                    'a row per query image of the evaluation split, then its '
                    'nearest training images.')
flags.DEFINE_integer('retrieval_queries', 8, '--retrievals: query images '
                     '(rows).')
flags.DEFINE_integer('retrieval_neighbors', 8, '--retrievals: neighbours per '
                     'query.')
flags.DEFINE_integer('neighbors', 0, '--mode=embed: also store each image\'s '
                     'K nearest neighbours by cosine similarity.')

FLAGS = flags.FLAGS


def command() -> Command:
  """The flags as a Command: the settings given explicitly, and the rest."""
  given = {name: FLAGS[name].value for name in SETTING_FLAGS
           if FLAGS[name].present}
  options = {field.name: FLAGS[field.name].value
             for field in dataclasses.fields(Command)
             if field.name not in ('given', 'flag_values')}
  flag_values = {flag.name: flag.value for flag in
                 FLAGS.get_flags_for_module(sys.modules[__name__])}
  return Command(given=given, flag_values=flag_values, **options)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.mode is None:
    raise app.UsageError(f'--mode is required: one of {", ".join(MODES)}.')
  from simclr_tf import console  # pylint: disable=g-import-not-at-top
  console.setup(FLAGS.verbosity)
  # TensorFlow starts here, after the console is set up.
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from simclr_tf import modes
  from simclr_tf.devices.distribute import WorkerLost
  from simclr_tf.settings.checks import storage_error
  from simclr_tf.training.hooks import Preempted
  try:
    modes.execute(command())
  except modes.USER_ERRORS as e:
    _fail(str(e), 2)
  except (WorkerLost, modes.ExportFailed) as e:
    _fail(str(e), e.exit_code)
  except Preempted as e:
    # 128 + the signal: 143 for SIGTERM, 130 for Ctrl-C, as shells report.
    logging.warning('%s', e)
    sys.exit(e.exit_code)
  except (OSError, tf.errors.OpError) as e:
    message = storage_error(e)
    if message is None:
      raise
    _fail(message, 1)


def _fail(message, code):
  logging.flush()
  print(f'run.py: error: {message}', file=sys.stderr)
  sys.exit(code)


if __name__ == '__main__':
  app.run(main)
