"""Numeric precision and XLA compilation, and their defaults per device.

Measured (benchmarks/throughput.py, benchmarks/fashion_mnist.py;
docs/benchmarks.md, "Speed"): on CPUs with bfloat16 units (AVX512_BF16 or AMX), oneDNN runs
bfloat16 convolutions natively and trains faster than float32; on other
CPUs bfloat16 is emulated and slower, so float32 stays. XLA's CPU
convolutions are slower than oneDNN's. On accelerators the usual choice is
taken: bfloat16 on TPUs and on GPUs with bfloat16 tensor cores (compute
capability 8.0+), float16 with loss scaling on older tensor-core GPUs, and
XLA on a single GPU.
"""

import contextlib
import functools
import platform

import keras
import tensorflow as tf

_KERAS_POLICIES = {'float32': 'float32', 'bfloat16': 'mixed_bfloat16',
                   'float16': 'mixed_float16'}


def device_type(strategy: tf.distribute.Strategy) -> str:
  """'CPU', 'GPU' or 'TPU': what the strategy's replicas run on."""
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:  # The default strategy: TensorFlow places ops itself.
    devices = ()
  if devices:
    return tf.DeviceSpec.from_string(devices[0]).device_type or 'CPU'
  return 'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'


@functools.cache
def sees_accelerator() -> bool:
  """Whether this process's TensorFlow has a GPU or TPU device: kernels
  chosen for CPUs (network/speedups/weight_gradients.py) leave those to
  their own.
  Asked by every layer call that may take them; the answer cannot change
  once TensorFlow has listed its devices, so it is read once."""
  return bool(tf.config.list_logical_devices('GPU') or
              tf.config.list_logical_devices('TPU'))


def _gpu_compute_capability():
  gpus = tf.config.list_physical_devices('GPU')
  if not gpus:
    return None
  return tf.config.experimental.get_device_details(gpus[0]).get(
      'compute_capability')


# /proc/cpuinfo flags of x86 CPUs that compute in bfloat16 natively.
_CPU_BFLOAT16_FLAGS = ('avx512_bf16', 'amx_bf16')


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
  """True when the CPU lists AVX512_BF16 or AMX-BF16 among its flags
  (Linux's /proc/cpuinfo; other systems: False)."""
  if cpuinfo is None:
    try:
      with open('/proc/cpuinfo') as f:
        cpuinfo = f.read()
    except OSError:
      return False
  flags = set()
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(':')
    if key.strip() == 'flags':
      flags.update(value.split())
  return any(flag in flags for flag in _CPU_BFLOAT16_FLAGS)


def device_kind(strategy: tf.distribute.Strategy) -> str:
  """The processor a strategy computes on, as far as it changes numbers:
  e.g. 'CPU: AMD EPYC 9R14 (bfloat16 units)' or 'GPU: NVIDIA H100 (8, 0)'."""
  device = device_type(strategy)
  if device == 'GPU':
    details = tf.config.experimental.get_device_details(
        tf.config.list_physical_devices('GPU')[0])
    return (f'GPU: {details.get("device_name")} '
            f'{details.get("compute_capability")}')
  if device != 'CPU':
    return device
  name = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      name = next((line.partition(':')[2].strip() for line in f
                   if line.startswith('model name')), name)
  except OSError:
    pass
  units = 'bfloat16 units' if cpu_has_bfloat16() else 'no bfloat16 units'
  return f'CPU: {name} ({units})'


def default_precision(device: str, compute_capability=None,
                      cpu_bfloat16: bool = False) -> str:
  """The fastest precision that needs no tuning on `device`."""
  if device == 'TPU':
    return 'bfloat16'
  if device == 'GPU':
    major = (compute_capability or (0, 0))[0]
    if major >= 8:
      return 'bfloat16'
    if major >= 7:
      return 'float16'
    return 'float32'
  return 'bfloat16' if cpu_bfloat16 else 'float32'


def choose_precision(requested: str, strategy) -> str:
  """`requested` ('auto' or one of PRECISIONS) -> one of PRECISIONS."""
  if requested != 'auto':
    return requested
  device = device_type(strategy)
  if device == 'GPU':
    return default_precision(device, _gpu_compute_capability())
  return default_precision(device, cpu_bfloat16=(
      device == 'CPU' and cpu_has_bfloat16()))


def default_jit_compile(device: str, num_replicas: int) -> bool:
  """XLA where it is known to pay off: one GPU. (TPUs always compile; on
  CPU it is slower; across GPUs the gradient all-reduce is left to
  tf.distribute.)"""
  return device == 'GPU' and num_replicas == 1


def keras_policy(precision: str) -> str:
  """Keras dtype policy: variables stay float32, compute in `precision`."""
  return _KERAS_POLICIES[precision]


@contextlib.contextmanager
def dtype_policy(precision: str):
  """Layers created inside compute in `precision` (Keras captures the global
  policy when a layer is created, so the global setting is restored after)."""
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(keras_policy(precision))
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)
