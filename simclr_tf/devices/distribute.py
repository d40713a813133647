"""Choosing the tf.distribute strategy."""

import json
import os
import re

from absl import logging
import numpy as np
import tensorflow as tf

# The exit code of a worker that stops because a peer was lost: in the
# 128-255 range that cluster managers (Kubeflow's ExitCode restart policy)
# treat as retryable, and above the codes of signals (129-192).
WORKER_LOST_EXIT_CODE = 200


class WorkerLost(Exception):
  """A peer worker of a multi-worker run died; this worker cannot go on."""

  exit_code = WORKER_LOST_EXIT_CODE


def split_cpu(num_devices: int):
  """Splits the CPU into `num_devices` logical devices (before TF starts);
  where this process has already started TensorFlow with at least that many
  (a second run in one process), those serve."""
  cpu = tf.config.list_physical_devices('CPU')[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError:
    if len(tf.config.list_logical_devices('CPU')) < num_devices:
      raise


def cross_replica_sum(tensor: tf.Tensor) -> tf.Tensor:
  """The sum of `tensor` over all replicas, in a replica context; its
  gradient is the sum of the output gradients over all replicas, as for
  ReplicaContext.all_reduce.

  Tracing that all-reduce in a tf.function is slow under MirroredStrategy:
  its custom gradient looks for variables by walking the graph back from
  its outputs, and the walk runs through every replica's graph built so far,
  for the forward all-reduce and again for the backward one (a ResNet-18
  step with global batch norm on 3 replicas took 45 s to trace). Reducing
  stop_gradient(x) keeps that walk within the reduction; the gradient is
  given here instead.
  """
  context = tf.distribute.get_replica_context()

  @tf.custom_gradient
  def summed(x):
    def gradient(upstream):
      return context.all_reduce(tf.distribute.ReduceOp.SUM,
                                tf.stop_gradient(upstream))
    return context.all_reduce(tf.distribute.ReduceOp.SUM,
                              tf.stop_gradient(x)), gradient

  return summed(tensor)


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


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_names(strategy: tf.distribute.Strategy) -> tuple[list[str], int]:
  """Every worker of a multi-worker strategy as 'worker 1 (host:port)', in
  the cluster's task order (the chief first), and this process's index in
  that list; (['this process'], 0) for a strategy within one process."""
  if not is_multi_worker(strategy):
    return ['this process'], 0
  resolver = strategy.cluster_resolver
  cluster = resolver.cluster_spec().as_dict()
  names, own = [], 0
  for job in ('chief', 'worker'):
    for index, address in enumerate(cluster.get(job, [])):
      if (job, index) == (resolver.task_type, resolver.task_id):
        own = len(names)
      names.append(f'{job} {index} ({address})')
  return names, own


def summed_over_workers(strategy: tf.distribute.Strategy):
  """A function from a vector of whole numbers (this worker's) to its sum
  over all workers: one small all-reduce under a multi-worker strategy, which
  every worker must call at the same points with a vector of the same
  length; the vector itself for a strategy within one process (whose
  replicas share this process and its signals and clock)."""
  if not is_multi_worker(strategy):
    return lambda values: np.asarray(values, np.float64)
  local_replicas = len(strategy.extended.worker_devices)

  @tf.function
  def all_reduce(values):
    def replica_sum(local):
      # Each local replica carries its share, so that a worker counts once.
      return tf.distribute.get_replica_context().all_reduce(
          tf.distribute.ReduceOp.SUM, local / local_replicas)
    return strategy.experimental_local_results(
        strategy.run(replica_sum, args=(values,)))[0]

  def summed(values):
    total = all_reduce(tf.constant(values, tf.float32)).numpy()
    return np.rint(total).astype(np.float64)
  return summed


# What collectives and the coordination service raise when a peer is gone,
# and the messages that say so without naming the peer (seen on localhost
# after a SIGKILL of either worker; tests/test_multi_worker.py).
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.CancelledError, tf.errors.InternalError,
                tf.errors.DeadlineExceededError)
_PEER_LOSS_MESSAGES = re.compile(
    r'stopped sending heartbeats|tasks are unhealthy|'
    r'connection reset by peer|socket closed|'
    r'failed to connect to all addresses', re.IGNORECASE)
_TASK_NAME = re.compile(r'/job:(\w+)/(?:replica:\d+/)?task:(\d+)')


def lost_workers(error: Exception, strategy) -> str | None:
  """Who a multi-worker error says was lost (see `peers_lost`); None for
  a strategy within one process."""
  if not is_multi_worker(strategy):
    return None
  resolver = strategy.cluster_resolver
  return peers_lost(error, (resolver.task_type, resolver.task_id),
                    resolver.cluster_spec().as_dict())


def peers_lost(error: Exception, own: tuple[str, int],
               cluster: dict[str, list[str]]) -> str | None:
  """The peers that `error` says were lost: the tasks it names other than
  `own` ('worker 1 (host:port)'), or 'a peer worker' when it reads as a
  lost connection without naming one. None when it is not about a peer:
  an error of another kind, or one that neither names another task nor
  reads as a lost peer (a local InternalError, an input error), which is
  then reported as the error it is."""
  if not isinstance(error, _PEER_ERRORS):
    return None
  message = getattr(error, 'message', None) or str(error)
  named = peers_named(message, own, cluster)
  if named:
    return named
  return 'a peer worker' if _PEER_LOSS_MESSAGES.search(message) else None


def peers_named(message: str, own: tuple[str, int],
                cluster: dict[str, list[str]]) -> str:
  """The tasks of `cluster` other than `own` that `message` names, as
  'worker 1 (host:port)' joined by 'and'; '' when it names none."""
  names = []
  for job, index in _TASK_NAME.findall(message):
    addresses = cluster.get(job, [])
    if (job, int(index)) == own or int(index) >= len(addresses):
      continue
    name = f'{job} {index} ({addresses[int(index)]})'
    if name not in names:
      names.append(name)
  return ' and '.join(names)
