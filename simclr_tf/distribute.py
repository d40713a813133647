"""Choosing the tf.distribute strategy."""

import json
import os

from absl import logging
import tensorflow as tf


def split_cpu(num_devices: int):
  """Splits the CPU into `num_devices` logical devices (before TF starts)."""
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)


def _num_workers_in_tf_config() -> int:
  config = json.loads(os.environ.get('TF_CONFIG', '{}') or '{}')
  cluster = config.get('cluster', {})
  return len(cluster.get('worker', [])) + len(cluster.get('chief', []))


def make_strategy(cpu_replicas: int = 1, use_tpu: bool = False,
                  tpu_name: str | None = None) -> tf.distribute.Strategy:
  """TPU if asked; several machines when TF_CONFIG names them; all local
  GPUs (or `cpu_replicas` logical CPUs); otherwise the default strategy."""
  if use_tpu:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu_name)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if _num_workers_in_tf_config() > 1:
    return tf.distribute.MultiWorkerMirroredStrategy()
  gpus = tf.config.list_logical_devices('GPU')
  if len(gpus) > 1:
    return tf.distribute.MirroredStrategy()
  if len(gpus) == 1:
    return tf.distribute.OneDeviceStrategy(gpus[0].name)
  if cpu_replicas > 1:
    devices = [d.name for d in tf.config.list_logical_devices('CPU')]
    devices = devices[:cpu_replicas]
    logging.info('MirroredStrategy over %d logical CPU devices.',
                 len(devices))
    # NCCL is GPU-only; on CPU reduce through one device.
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
  return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes checkpoints, summaries and exports."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  return (resolver.task_type == 'chief' or
          (resolver.task_type == 'worker' and resolver.task_id == 0 and
           'chief' not in resolver.cluster_spec().as_dict()))
