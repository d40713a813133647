"""Training on several machines (MultiWorkerMirroredStrategy from TF_CONFIG)
with real workers on 127.0.0.1: the same weights everywhere, only the chief
writes, and a preempted or lost worker (the chief included) stops them all,
each time with the documented exit code and line, to resume exactly
(benchmarks/fault_campaign.py runs every kind of fault)."""

import os
import socket

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import fault_campaign
from benchmarks.fault_campaign import Fault
from simclr_tf.devices import distribute
from tests import helpers

_TWO = {'worker': ['10.0.0.1:2222', '10.0.0.2:2222']}
_WITH_CHIEF = {'chief': ['10.0.0.1:2222'],
               'worker': ['10.0.0.2:2222', '10.0.0.3:2222']}
# What a survivor's training step raised (TensorFlow 2.21, two workers on
# 127.0.0.1) after a SIGKILL of worker 1, then of worker 0.
_WORKER_1_KILLED = (
    'Graph execution error:\n\nDetected at node while/CollectiveReduceV2 '
    'defined at (most recent call last):\n  File "run.py", line 311\n\n'
    'Collective ops is aborted by: Error reported from /job:worker/task:1: '
    'The following tasks are unhealthy (stopped sending heartbeats):\n'
    '/job:worker/replica:0/task:1\nThe tasks have crashed. Check the task '
    'logs for an earlier error, or scheduler events (e.g. preemption, '
    'eviction) to debug further.\nThe error could be from a previous '
    'operation. Restart your program to reset.\n\t [[{{node '
    'while/CollectiveReduceV2}}]] [Op:__inference__steps_14313]')
_RESET = ('Collective ops is aborted by: recvmsg:Connection reset by peer\n')
_WORKER_0_KILLED = (
    _RESET + 'Additional GRPC error information from remote target '
    '/job:worker/replica:0/task:0 while calling '
    '/tensorflow.WorkerService/CompleteInstance:\n:UNKNOWN:Error received '
    'from peer  {grpc_status:14, grpc_message:"recvmsg:Connection reset by '
    'peer"}\nThe error could be from a previous operation. Restart your '
    'program to reset.\n\t [[{{node while/CollectiveReduceV2}}]] '
    '[Op:__inference__steps_12466]')
# Worker 1's own error when the workers' all-reduces disagreed in shape
# (seen while building the stop votes): about the collective, naming the
# other task, yet nobody was lost.
_SHAPE_MISMATCH = (
    'Collective ops is aborted by: Shape mismatch in the collective instance '
    '372. Op at device /job:worker/replica:0/task:1/device:CPU:0 expected '
    'shape [4] but another member in the group expected shape [3].\n'
    'Additional GRPC error information from remote target '
    '/job:worker/replica:0/task:0 while calling '
    '/tensorflow.WorkerService/CompleteInstance')
# An input pipeline's own failure (a map function raising), as TensorFlow
# reports it; in a worker it names the worker's own device.
_INPUT_FAILED = (
    '{{function_node __wrapped__IteratorGetNext_output_types_1_device_/job:'
    'worker/replica:0/task:1/device:CPU:0}} Error in user-defined function '
    'passed to MapDataset:1 transformation with iterator: '
    'Iterator::Root::Map: RuntimeError: local failure')
# A kernel failing on its own device, in the form TensorFlow gives op
# errors (what a oneDNN or XLA InternalError looks like).
_KERNEL_FAILED = (
    '{{function_node __wrapped__Conv2D_device_/job:worker/replica:0/task:1/'
    'device:CPU:0}} could not create a convolution forward primitive '
    '[Op:Conv2D]')


def _error(kind, message):
  return kind(None, None, message)


@pytest.mark.parametrize('error,own,cluster,expected', [
    (_error(tf.errors.UnavailableError, _WORKER_1_KILLED), ('worker', 0),
     _TWO, 'worker 1 (10.0.0.2:2222)'),
    (_error(tf.errors.UnavailableError, _WORKER_0_KILLED), ('worker', 1),
     _TWO, 'worker 0 (10.0.0.1:2222)'),
    (_error(tf.errors.UnavailableError,
            'unhealthy: /job:chief/replica:0/task:0 and '
            '/job:worker/replica:0/task:0'), ('worker', 1), _WITH_CHIEF,
     'chief 0 (10.0.0.1:2222) and worker 0 (10.0.0.2:2222)'),
    # A lost connection that names nobody (or only this worker).
    (_error(tf.errors.UnavailableError, _RESET), ('worker', 1), _TWO,
     'a peer worker'),
    (_error(tf.errors.AbortedError, _WORKER_1_KILLED), ('worker', 1), _TWO,
     'a peer worker'),
    # Not a lost peer: the error it is.
    (_error(tf.errors.InvalidArgumentError, _SHAPE_MISMATCH), ('worker', 1),
     _TWO, None),
    (_error(tf.errors.InternalError, _KERNEL_FAILED), ('worker', 1), _TWO,
     None),
    (_error(tf.errors.InternalError, _INPUT_FAILED), ('worker', 1), _TWO,
     None),
    (_error(tf.errors.UnknownError, _INPUT_FAILED), ('worker', 1), _TWO,
     None),
    (_error(tf.errors.DeadlineExceededError, 'Deadline Exceeded'),
     ('worker', 0), _TWO, None)])
def test_only_errors_about_a_peer_count_as_a_lost_worker(error, own, cluster,
                                                         expected):
  assert distribute.peers_lost(error, own, cluster) == expected


STEPS = 24  # Six checkpoints: one more than are kept.
CHECKPOINT_STEPS = 4
KEEP_CHECKPOINTS = 5  # --keep_checkpoint_max's default.


@pytest.fixture(scope='module')
def data_folder(tmp_path_factory):
  return helpers.make_class_folder(
      str(tmp_path_factory.mktemp('cluster') / 'd'), np.random.default_rng(0),
      classes=('a', 'b'), per_class=8, size=(16, 16))


@pytest.fixture(scope='module')
def uninterrupted(data_folder, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('uninterrupted') / 'm'
  workers = fault_campaign.Workers(
      fault_campaign.tiny_flags(data_folder, model_dir, STEPS))
  codes = workers.finish()
  assert codes == [0, 0], workers.stderr(0)[-3000:] + workers.stderr(1)[-3000:]
  return model_dir, fault_campaign.fingerprints(workers)


def test_two_workers_train_identically_and_only_the_chief_writes(
    uninterrupted):
  model_dir, fingerprints = uninterrupted
  assert fingerprints[0] and fingerprints[0] == fingerprints[1]
  # The chief (worker 0) wrote everything; worker 1 wrote nothing there.
  # The newest checkpoints (no more than the 5 kept).
  kept = range(STEPS - (KEEP_CHECKPOINTS - 1) * CHECKPOINT_STEPS, STEPS + 1,
               CHECKPOINT_STEPS)
  assert sorted(os.listdir(model_dir)) == sorted(['checkpoint'] + [
      f'ckpt-{step}.{suffix}' for step in kept
      for suffix in ('data-00000-of-00001', 'index')] + [
          'flags.json', 'saved_model', 'train'])
  assert os.listdir(model_dir / 'saved_model') == [str(STEPS)]


# Each fault in a launch of its own, one after the other on one run: a
# preemption notice (SIGTERM) to worker 1 while TensorFlow's platform
# detection says Google Cloud GPU VM (the detection patched), where
# TensorFlow's own handler would ignore it; SIGKILL of the chief while the
# detection says Google Cloud CPU VM (a stand-in metadata server, which
# TensorFlow's handler polls). Each launch costs ~25 s of both cores, so
# the rest is left to benchmarks/fault_campaign.py's draws: SIGTERM to the
# chief and off-cloud, Ctrl-C (the SIGTERM path, tested in one process by
# test_resume.py), a killed worker 1 (10-20 s of missed heartbeats before
# the survivor notices; its error is read in the cases above), a time
# budget spent on one worker's clock (its stop, agreed by every worker, is
# tested with fake workers in test_loop.py).
FAULTS = [Fault('sigterm', worker=1, platform='gce-gpu'),
          Fault('sigkill', worker=0, platform='gce-cpu')]


def test_preempted_and_lost_workers_stop_together_and_resume(
    data_folder, uninterrupted, tmp_path):
  model_dir = tmp_path / 'm'
  # The weights are the subject; exports are the uninterrupted run's.
  flags = [*fault_campaign.tiny_flags(data_folder, model_dir, STEPS),
           '--export_formats=none']
  log = []
  outcomes, last = fault_campaign.campaign(flags, model_dir, FAULTS, log.append)
  print('\n'.join(log))
  for outcome in outcomes:
    fault = outcome.fault
    # Exit codes, each worker's last line, no traceback on a survivor,
    # nothing lost by a signal: as docs/resuming.md says.
    assert fault_campaign.check(outcome, str(model_dir)) == [], log
    assert outcome.stop_seconds < 60
    assert outcome.resumed_from < outcome.saved < STEPS or (
        fault.kind == 'sigkill' and outcome.saved == outcome.resumed_from)
  assert last.finish() == [0, 0], last.stderr(0)[-3000:]
  expected = uninterrupted[1][0]
  assert fault_campaign.fingerprints(last) == [expected, expected]


def test_worker_ports_are_free_and_outside_the_kernels_ephemeral_range():
  # A port in the ephemeral range can be handed to another process's
  # outgoing connection between the check and the worker's bind.
  ephemeral = fault_campaign.ephemeral_ports()
  with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
    low, high = map(int, f.read().split())
  assert (ephemeral.start, ephemeral.stop - 1) == (low, high)
  ports = {fault_campaign.free_port() for _ in range(20)}
  assert not any(low <= port <= high for port in ports)
  for port in ports:
    with socket.socket() as s:
      s.bind(('127.0.0.1', port))  # Free: raises if not.
