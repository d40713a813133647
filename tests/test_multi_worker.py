"""Training on several machines (MultiWorkerMirroredStrategy from TF_CONFIG)
with real workers on 127.0.0.1: the same weights everywhere, only the chief
writes, and a preempted or lost worker stops them all to resume exactly."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.devices import distribute
from simclr_tf.storage import checkpoints
from tests import helpers
from tests.helpers import REPO

_CLUSTER = {'chief': ['10.0.0.1:2222'],
            'worker': ['10.0.0.2:2222', '10.0.0.3:2222']}


@pytest.mark.parametrize('message,own,expected', [
    # What the coordination service reports (seen with two workers).
    ('Collective ops is aborted by: Error reported from /job:worker/task:1: '
     'The following tasks are unhealthy (stopped sending heartbeats):\n'
     '/job:worker/replica:0/task:1\nThe tasks have crashed.',
     ('chief', 0), 'worker 1 (10.0.0.3:2222)'),
    ('unhealthy: /job:chief/replica:0/task:0 and /job:worker/replica:0/task:0',
     ('worker', 1), 'chief 0 (10.0.0.1:2222) and worker 0 (10.0.0.2:2222)'),
    # A collective that lost its connection names nobody.
    ('Collective ops is aborted by: recvmsg:Connection reset by peer',
     ('chief', 0), 'a peer worker'),
    # Only itself, or a task the cluster does not have.
    ('/job:worker/replica:0/task:1 and /job:worker/task:7', ('worker', 1),
     'a peer worker')])
def test_the_lost_worker_is_named_from_the_error(message, own, expected):
  assert distribute.peers_named(message, own, _CLUSTER) == expected


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Workers:
  """Two run.py workers on 127.0.0.1 (MultiWorkerMirroredStrategy from
  TF_CONFIG), their stderr read line by line as it comes."""

  def __init__(self, *flags):
    self.addresses = [f'127.0.0.1:{_free_port()}' for _ in range(2)]
    self.lines = [[], []]
    self._wanted = threading.Condition()
    self.processes = []
    for index in range(2):
      env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='',
                 TF_CONFIG=json.dumps({
                     'cluster': {'worker': self.addresses},
                     'task': {'type': 'worker', 'index': index}}))
      self.processes.append(subprocess.Popen(
          [sys.executable, os.path.join(REPO, 'run.py'), *flags], env=env,
          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
          text=True))
    self._readers = [threading.Thread(target=self._read, args=(i,))
                     for i in range(2)]
    for reader in self._readers:
      reader.start()

  def _read(self, index):
    for line in self.processes[index].stderr:
      with self._wanted:
        self.lines[index].append(line.rstrip('\n'))
        self._wanted.notify_all()

  def wait_for_step(self, step, timeout=300):
    """Until the chief's progress line reports `step` or more."""
    def reached():
      return any(int(l.split()[1].split('/')[0]) >= step
                 for l in self.lines[0] if l.startswith('step '))
    with self._wanted:
      assert self._wanted.wait_for(reached, timeout), self.stderr(0)[-3000:]

  def stderr(self, index):
    return '\n'.join(self.lines[index])

  def finish(self, timeout=300):
    """Return codes, once both have exited."""
    codes = [p.wait(timeout) for p in self.processes]
    for reader in self._readers:
      reader.join()
    return codes


def _fingerprint(stderr):
  return [l.split('weights fingerprint ')[1].rstrip('.')
          for l in stderr.splitlines() if 'weights fingerprint' in l]


STEPS = 20
CHECKPOINT_STEPS = 4


@pytest.fixture(scope='module')
def cluster_flags(tmp_path_factory):
  root = helpers.make_class_folder(
      str(tmp_path_factory.mktemp('cluster') / 'd'), np.random.default_rng(0),
      classes=('a', 'b'), per_class=8, size=(16, 16))
  # One step per call and a progress line per call: signals land between
  # known steps. float32 and op determinism: weights compare bit for bit.
  return ['--mode=train', f'--dataset=folder:{root}', '--image_size=16',
          '--resnet_depth=18', '--width_multiplier=0.125',
          '--train_batch_size=8', '--eval_batch_size=4',
          f'--train_steps={STEPS}', f'--checkpoint_steps={CHECKPOINT_STEPS}',
          '--knn=false',
          '--steps_per_loop=1', '--log_every_seconds=0', '--deterministic',
          '--mixed_precision=float32']


@pytest.fixture(scope='module')
def uninterrupted(cluster_flags, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('uninterrupted') / 'm'
  workers = Workers(*cluster_flags, f'--model_dir={model_dir}')
  codes = workers.finish()
  assert codes == [0, 0], workers.stderr(0)[-3000:] + workers.stderr(1)[-3000:]
  return model_dir, [_fingerprint(workers.stderr(i)) for i in range(2)]


def test_two_workers_train_identically_and_only_the_chief_writes(
    uninterrupted):
  model_dir, fingerprints = uninterrupted
  assert fingerprints[0] and fingerprints[0] == fingerprints[1]
  # The chief (worker 0) wrote everything; worker 1 wrote nothing there.
  # Every checkpoint (no more than the 5 kept).
  assert sorted(os.listdir(model_dir)) == sorted(['checkpoint'] + [
      f'ckpt-{step}.{suffix}'
      for step in range(CHECKPOINT_STEPS, STEPS + 1, CHECKPOINT_STEPS)
      for suffix in ('data-00000-of-00001', 'index')] + [
          'flags.json', 'saved_model', 'train'])
  assert os.listdir(model_dir / 'saved_model') == [str(STEPS)]


def test_a_preempted_or_lost_worker_stops_all_and_resumes_identically(
    cluster_flags, uninterrupted, tmp_path):
  model_dir = tmp_path / 'm'
  flags = [*cluster_flags, f'--model_dir={model_dir}']

  # SIGTERM to worker 1 (a preemption notice): both stop at the same step
  # and the chief saves it.
  workers = Workers(*flags)
  workers.wait_for_step(CHECKPOINT_STEPS)
  signalled = time.monotonic()
  workers.processes[1].send_signal(signal.SIGTERM)
  assert workers.finish() == [143, 143]
  preempt_seconds = time.monotonic() - signalled
  assert preempt_seconds < 60
  stopped = set()
  for index in range(2):
    last = workers.lines[index][-1]
    assert last.startswith('warning: A worker was preempted (SIGTERM): every '
                           'worker stopped at step '), workers.stderr(index)
    assert last.endswith(f'checkpointed in {model_dir}; launch all workers '
                         'again with the same command to resume.')
    stopped.add(int(last.split('stopped at step ')[1].split(',')[0]))
  (step,) = stopped
  assert CHECKPOINT_STEPS <= step < STEPS
  assert tf.train.latest_checkpoint(str(model_dir)).endswith(f'ckpt-{step}')

  # The relaunch resumes there; then worker 1 is killed: worker 0 stops with
  # one line naming it, and the code for a lost peer.
  workers = Workers(*flags)
  workers.wait_for_step(step + CHECKPOINT_STEPS)
  assert f'Resuming from {model_dir}/ckpt-{step}.' in workers.stderr(0)
  killed = time.monotonic()
  workers.processes[1].kill()
  assert workers.finish() == [distribute.WORKER_LOST_EXIT_CODE, -9]
  stop_seconds = time.monotonic() - killed
  assert stop_seconds < 120
  # What a relaunch resumes from: the newest checkpoint that loads.
  resume = checkpoints.latest_in(str(model_dir))
  assert workers.lines[0][-1] == (
      f'run.py: error: Lost worker 1 ({workers.addresses[1]}) during training '
      f'(UnavailableError); this worker stops too. Launch all workers again '
      f'with the same command: they resume from {resume}.')
  assert 'Traceback' not in workers.stderr(0)

  # Relaunched again, both end with the uninterrupted run's weights.
  workers = Workers(*flags)
  assert workers.finish() == [0, 0], workers.stderr(0)[-3000:]
  assert f'Resuming from {resume}.' in workers.stderr(0)
  expected = uninterrupted[1][0]
  assert [_fingerprint(workers.stderr(i)) for i in range(2)] == [
      expected, expected]
  print(f'preempted: both stopped at step {step} {preempt_seconds:.1f} s '
        f'after SIGTERM; killed: worker 0 stopped {stop_seconds:.1f} s after '
        f'SIGKILL, resumed from {os.path.basename(resume)} to step {STEPS}, '
        f'weights fingerprint {expected[-1]} as uninterrupted')
