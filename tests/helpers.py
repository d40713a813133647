"""What several test files share: run.py in a subprocess, small image files
and folders, the Fashion-MNIST sample, the original code's fixtures, a numpy
kNN, test TFDS builders."""

import contextlib
import fcntl
import functools
import importlib.util
import io
import logging as std_logging
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import traceback
import types
from typing import NamedTuple
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow.python.framework import config as tf_config  # pylint: disable=g-direct-tensorflow-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The first 30 training and 10 test images of each Fashion-MNIST class, in
# the release's order and IDX files (tests/data/README.md).
FASHION_MNIST_SAMPLE = os.path.join(REPO, 'tests', 'data', 'fashion_mnist')

# Checkpoints and outputs written by the original google-research/simclr
# code (docs/contract.md); the tests that need them skip where they are not.
ORIGINAL_FIXTURES = pathlib.Path(os.environ.get(
    'SIMCLR_ORIGINAL_FIXTURES', pathlib.Path(REPO).parent / 'shared' /
    'fixtures' / 'original_simclr'))
needs_original_fixtures = pytest.mark.skipif(
    not ORIGINAL_FIXTURES.is_dir(),
    reason=f'needs the original SimCLR code\'s fixtures, not found at '
    f'{ORIGINAL_FIXTURES}: put the shared/ folder that holds '
    'fixtures/original_simclr beside the repository, or set '
    'SIMCLR_ORIGINAL_FIXTURES to that folder (its README says how they were '
    'made)')


def fashion_mnist_data_dir(root) -> str:
  """A --data_dir under `root` whose fashion_mnist/ holds the sample's IDX
  files: `--dataset=fashion_mnist` reads them without the dataset package."""
  target = os.path.join(str(root), 'fashion_mnist')
  if not os.path.isdir(target):
    shutil.copytree(FASHION_MNIST_SAMPLE, target)
  return str(root)


_RUN_PY = None


def _run_py():
  """run.py as a module, loaded once, its flags in a FlagValues of their
  own: benchmark modules that tests import define flags of the same names
  in absl's global one. absl's --verbosity is shared, so that it still sets
  the log level."""
  global _RUN_PY
  if _RUN_PY is None:
    import absl  # pylint: disable=g-import-not-at-top
    from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
    own = absl_flags.FlagValues()
    own['verbosity'] = absl_flags.FLAGS['verbosity']
    proxy = types.ModuleType('absl.flags')
    proxy.__dict__.update(vars(absl_flags))
    for name in dir(absl_flags):
      if name.startswith('DEFINE'):
        setattr(proxy, name, functools.partial(getattr(absl_flags, name),
                                               flag_values=own))
    proxy.FLAGS = own
    spec = importlib.util.spec_from_file_location(
        'run_under_test', os.path.join(REPO, 'run.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    absl.flags = proxy  # What run.py's `from absl import flags` finds.
    try:
      spec.loader.exec_module(module)
    finally:
      absl.flags = absl_flags
    _RUN_PY = module
  return _RUN_PY


def run(*flags) -> subprocess.CompletedProcess:
  """run.py's main in this process, as `python run.py FLAGS` would run it:
  its exit code, and what it printed to stdout and stderr (its log lines
  included). Starting TensorFlow again for each call would cost more than
  most of these runs; tests about signals, start-up output or process
  boundaries use `run_process`."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  run_py = _run_py()
  stdout, stderr = io.StringIO(), io.StringIO()
  absl_logging.use_absl_handler()
  handler = absl_logging.get_absl_handler().python_handler
  saved_stream, handler.stream = handler.stream, stderr
  saved_level = std_logging.root.level
  code = 0
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(
        stderr):
      try:
        run_py.FLAGS.unparse_flags()
        argv = run_py.FLAGS(['run.py', *flags])
        if run_py.FLAGS['verbosity'].using_default_value:
          run_py.FLAGS.verbosity = 0  # INFO, as absl's app.run sets it.
        run_py.main(argv)
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (e.code is not None)
      except absl_flags.Error as e:
        print(f'FATAL Flags parsing error: {e}', file=sys.stderr)
        code = 1
      except app.UsageError as e:
        print(f'FATAL {e}', file=sys.stderr)
        code = 1
      except Exception:  # pylint: disable=broad-except
        traceback.print_exc()
        code = 1
  finally:
    handler.stream = saved_stream
    std_logging.root.setLevel(saved_level)
    # --deterministic holds for that run only (TensorFlow exports no way
    # back but its own config module's).
    tf_config.disable_op_determinism()
  return subprocess.CompletedProcess(['run.py', *flags], code,
                                     stdout.getvalue(), stderr.getvalue())


# A run that trains in seconds (tests/test_robustness.py, test_resume.py).
TINY_RUN = ['--image_size=16', '--resnet_depth=18', '--width_multiplier=0.125',
            '--train_batch_size=8', '--eval_batch_size=8',
            '--steps_per_loop=1', '--summary_steps=1', '--knn=False',
            '--seed=5']


class TinyRun(NamedTuple):
  """A finished tiny run: `TINY_RUN` on `folder` for 4 steps, checkpoints
  at 2 and 4, its SavedModel of step 4. `flags` resume it."""
  folder: str
  model_dir: str
  flags: tuple

  def copy_to(self, model_dir) -> str:
    """A copy of the run at `model_dir`, to change or resume."""
    shutil.copytree(self.model_dir, model_dir)
    return str(model_dir)


TINY_RUN_STEPS = 4


def tiny_run(root) -> TinyRun:
  """The tiny run under `root`, trained by the first test process that asks
  for it; the others wait for it (a file lock), then reuse it."""
  root = pathlib.Path(root)
  folder = str(root / 'shapes')
  model_dir = str(root / 'tiny_run')
  flags = (f'--dataset=folder:{folder}', '--mode=train',
           '--checkpoint_steps=2', *TINY_RUN)
  done = root / 'tiny_run.done'
  root.mkdir(parents=True, exist_ok=True)
  with open(root / 'tiny_run.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(model_dir, ignore_errors=True)
      write_shapes(folder)
      result = run(*flags, f'--train_steps={TINY_RUN_STEPS}',
                   f'--model_dir={model_dir}')
      assert result.returncode == 0, result.stderr[-3000:]
      done.touch()
  return TinyRun(folder, model_dir, flags)


def write_shapes(root) -> str:
  """18 random 20x20 images in three class folders under `root`."""
  return make_class_folder(str(root), np.random.default_rng(0),
                           classes=('a', 'b', 'c'), per_class=6,
                           size=(20, 20))


def shapes_folder(tmp_path_factory) -> str:
  """`write_shapes` in a new temporary folder."""
  return write_shapes(tmp_path_factory.mktemp('data') / 'shapes')


def start_run_py(*flags, preexec_fn=None, log=None) -> subprocess.Popen:
  """run.py started in a process of its own (stderr to `log`), not waited
  for: for tests that signal, kill or limit it."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  return subprocess.Popen([sys.executable, os.path.join(REPO, 'run.py'),
                           *flags], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=log, preexec_fn=preexec_fn)


def one_error_line(result) -> str:
  """The run's only `run.py: error:` line; it exited 2 without a traceback."""
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('run.py:')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  return errors[0]


def latest_step(model_dir) -> int:
  """The step of the newest checkpoint in `model_dir` (0: none)."""
  latest = tf.train.latest_checkpoint(model_dir)
  return int(latest.rsplit('-', 1)[1]) if latest else 0


def run_process(*flags, as_user=False) -> subprocess.CompletedProcess:
  """run.py in a subprocess; `as_user`: in a user's environment, without the
  test run's TensorFlow log level and hidden GPUs."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  if as_user:
    for name in ('TF_CPP_MIN_LOG_LEVEL', 'CUDA_VISIBLE_DEVICES'):
      env.pop(name)
  return subprocess.run([sys.executable, os.path.join(REPO, 'run.py'),
                         *flags], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=300)


def knn_numpy(train_x, train_y, test_x, num_classes, k, temperature):
  """Weighted kNN votes (InstDisc), a loop over test examples."""
  train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  scores = np.zeros((len(test_x), num_classes))
  for i, x in enumerate(test_x):
    sims = train @ (x / np.linalg.norm(x))
    for j in np.argsort(-sims)[:k]:
      scores[i, train_y[j]] += np.exp(sims[j] / temperature)
  return scores


def encode(array, fmt, mode=None, **kwargs) -> bytes:
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def png_header(width, height) -> bytes:
  """A 57-byte PNG whose header declares width x height (its pixels never
  come: decoding it would fail or take width x height x 3 bytes)."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b'')


def write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def random_rgb(rng, height=20, width=24):
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_class_folder(root, rng, classes=('cat', 'dog'), per_class=5,
                      size=(20, 24)):
  """Writes `per_class` PNG images into one sub-folder per class."""
  for name in classes:
    for i in range(per_class):
      write(os.path.join(root, name, f'{i}.png'),
            encode(random_rgb(rng, *size), 'PNG'))
  return root


def cpu_strategy(num_replicas: int) -> tf.distribute.Strategy:
  """MirroredStrategy over the first `num_replicas` logical CPUs."""
  devices = [f'/cpu:{i}' for i in range(num_replicas)]
  return tf.distribute.MirroredStrategy(
      devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


class SimclrTestTinyImages(tfds.core.GeneratorBasedBuilder):
  """A real TFDS builder that needs no download."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(8, 8, 1)),
        'label': tfds.features.ClassLabel(num_classes=3)})
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(12),
            'test': self._generate_examples(6)}

  def _generate_examples(self, n):  # pylint: disable=arguments-differ
    for i in range(n):
      yield i, {'image': np.full((8, 8, 1), i * 10, np.uint8), 'label': i % 3}


class SimclrTestNumbered(tfds.core.GeneratorBasedBuilder):
  """60 training images whose pixels hold their example number (0-59) and
  whose label is number % 5, in as many shards as the download config
  asks for."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    features = tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(4, 4, 1)),
        'label': tfds.features.ClassLabel(num_classes=5)})
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(60),
            'test': self._generate_examples(10)}

  def _generate_examples(self, n):  # pylint: disable=arguments-differ
    for i in range(n):
      yield i, {'image': np.full((4, 4, 1), i, np.uint8), 'label': i % 5}


def numbered_tfds(data_dir, file_format='tfrecord', num_shards=8):
  """The prepared SimclrTestNumbered dataset as a TFDSSource."""
  from simclr_tf.inputs import tfds_source  # pylint: disable=g-import-not-at-top
  builder = SimclrTestNumbered(data_dir=str(data_dir),
                               file_format=file_format)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return tfds_source.TFDSSource(builder)


def torchvision_models():
  """`torchvision.models`, importable beside PyTorch's CPU build."""
  from benchmarks import torch_simclr  # pylint: disable=g-import-not-at-top
  return torch_simclr.import_torchvision_models()


def randomize_batch_norm(model, seed=0):
  """Non-trivial batch-norm statistics, scales (zero-init gammas included)
  and offsets, so that an export that mishandles a batch norm shows."""
  rng = np.random.default_rng(seed)
  for variable in model.weights:
    if variable.name in ('gamma', 'moving_variance'):
      variable.assign(rng.uniform(0.5, 1.5, variable.shape)
                      .astype(np.float32))
    elif variable.name in ('beta', 'moving_mean'):
      variable.assign(rng.uniform(-0.2, 0.2, variable.shape)
                      .astype(np.float32))
  return model
