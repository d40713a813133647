"""Test set-up: quiet TensorFlow and four logical CPU devices.

Splitting the CPU lets MirroredStrategy run with 2-4 real replicas here.
This must happen before TensorFlow initialises its devices.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from simclr_tf import console  # pylint: disable=g-import-not-at-top

# Quiet also in pytest-xdist's controller, whose stderr is not captured.
tf, _ = console.import_tensorflow()

NUM_CPU_DEVICES = 4

_cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_CPU_DEVICES)


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory, worker_id):
  """One tiny trained run (helpers.TinyRun) for every test that needs a
  finished run: trained once per test session, shared by pytest-xdist's
  workers. Tests copy it before changing it."""
  from tests import helpers  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  # The workers' temporary folders share their parent, this session's own.
  shared = base if worker_id == 'master' else base.parent
  return helpers.tiny_run(shared / 'shared')


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def cpu_kernels(monkeypatch):
  """The kernels chosen for CPUs (network/speedups/weight_gradients.py) whatever
  devices this process's TensorFlow sees: their tests hold on a machine
  whose CUDA_VISIBLE_DEVICES shows a GPU too."""
  from simclr_tf.devices import precision  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(precision, 'sees_accelerator', lambda: False)


# The longest files first. pytest-xdist (pytest.ini: --dist loadfile
# --no-loadscope-reorder) hands out whole files in collection order; a
# worker that started a long one late would finish alone, minutes after the
# other. `--durations` shows when this order needs changing.
LONGEST_FIRST = ('tests/test_resume.py', 'tests/test_multi_worker.py',
                 'tests/test_export_formats.py', 'tests/test_gradient_cache.py',
                 'tests/test_step_terms.py', 'tests/test_run_train.py', 'tests/test_distribute.py',
                 'tests/test_precision.py', 'tests/test_robustness.py',
                 'tests/test_original.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    return next((i for i, prefix in enumerate(LONGEST_FIRST)
                 if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))
  items.sort(key=rank)  # Stable: each file's tests keep their order.
