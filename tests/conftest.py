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


@pytest.fixture
def rng():
  return np.random.default_rng(0)
