"""Nothing lost when a run is stopped: kills, SIGTERM and Ctrl-C, damaged
checkpoints; every resume ends where an uninterrupted run does."""

import os
import random
import shutil
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.training import hooks
from tests import helpers
from tests.helpers import run

TINY = helpers.TINY_RUN


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return helpers.shapes_folder(tmp_path_factory)


def _fingerprint(stderr):
  lines = [l for l in stderr.splitlines() if 'weights fingerprint' in l]
  return lines[-1].split('weights fingerprint ')[1] if lines else None


def _last_summary_step(model_dir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  steps = [0]
  for name in os.listdir(os.path.join(model_dir, 'train')):
    accumulator = event_accumulator.EventAccumulator(
        os.path.join(model_dir, 'train', name))
    accumulator.Reload()
    if 'total_loss' in accumulator.Tags()['tensors']:
      steps += [e.step for e in accumulator.Tensors('total_loss')]
  return max(steps)


def _wait_for_checkpoint_after(model_dir, step, process, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    if helpers.latest_step(model_dir) > step:
      return True
    time.sleep(0.1)
  return False


KILLED_RUN_STEPS = 20
KILLS = 1


def test_killed_runs_resume_to_the_uninterrupted_weights(folder, tmp_path):
  """A SIGKILL at a random moment of a run, then a resume: the weights
  equal an uninterrupted run's (here, in the test process), bit for bit.
  (benchmarks/fault_campaign.py kills resumed runs, many times.)"""
  flags = [f'--dataset=folder:{folder}', '--mode=train',
           f'--train_steps={KILLED_RUN_STEPS}', '--checkpoint_steps=4',
           '--deterministic', '--export_formats=none', *TINY]
  reference = run(*flags, f'--model_dir={tmp_path}/reference')
  assert reference.returncode == 0, reference.stderr[-3000:]
  expected = _fingerprint(reference.stderr)

  model_dir = str(tmp_path / 'killed')
  chooser = random.Random(0)
  kills, lost = 0, []
  started = time.time()
  while kills < KILLS and time.time() - started < 300:
    before = helpers.latest_step(model_dir)
    process = helpers.start_run_py(*flags, f'--model_dir={model_dir}')
    if not _wait_for_checkpoint_after(model_dir, before, process):
      process.wait()
      break
    time.sleep(chooser.uniform(0.0, 0.3))  # Somewhere in the next steps.
    if process.poll() is not None:
      break
    process.send_signal(signal.SIGKILL)
    process.wait()
    kills += 1
    # Steps trained (summaries are written every step) minus steps saved.
    lost.append(_last_summary_step(model_dir) - helpers.latest_step(model_dir))
  assert kills == KILLS
  final = run(*flags, f'--model_dir={model_dir}')
  assert final.returncode == 0, final.stderr[-3000:]
  assert helpers.latest_step(model_dir) == KILLED_RUN_STEPS
  assert _fingerprint(final.stderr) == expected
  # Tensor by tensor, the final checkpoints are identical.
  killed = tf.train.latest_checkpoint(model_dir)
  uninterrupted = tf.train.latest_checkpoint(str(tmp_path / 'reference'))
  a, b = tf.train.load_checkpoint(killed), tf.train.load_checkpoint(
      uninterrupted)
  names = [n for n, _ in tf.train.list_variables(uninterrupted)
           if n != '_CHECKPOINTABLE_OBJECT_GRAPH']
  assert names == [n for n, _ in tf.train.list_variables(killed)
                   if n != '_CHECKPOINTABLE_OBJECT_GRAPH']
  largest = max(float(np.max(np.abs(np.asarray(a.get_tensor(n), np.float64)
                                    - b.get_tensor(n)))) for n in names)
  assert largest == 0.0
  print(f'kills survived: {kills}; steps lost per kill: {lost}; largest '
        f'weight difference to the uninterrupted run: {largest}')


def test_a_chunked_run_resumed_from_a_middle_checkpoint_ends_identical(
    folder, tmp_path):
  """Gradient caching keeps no state outside the checkpoint: resuming from
  step 3 gives the uninterrupted run's weights, bit for bit."""
  flags = [f'--dataset=folder:{folder}', '--mode=train', '--train_steps=6',
           '--checkpoint_steps=3', '--deterministic',
           '--contrastive_chunk_size=4', '--export_formats=none', *TINY]
  reference_dir, resumed_dir = tmp_path / 'reference', tmp_path / 'resumed'
  reference = run(*flags, f'--model_dir={reference_dir}')
  assert reference.returncode == 0, reference.stderr[-3000:]
  os.makedirs(resumed_dir)
  for name in os.listdir(reference_dir):
    if name == 'flags.json' or name.startswith('ckpt-3.'):
      shutil.copy(reference_dir / name, resumed_dir / name)
  (resumed_dir / 'checkpoint').write_text(
      'model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: '
      '"ckpt-3"\n')
  resumed = run(*flags, f'--model_dir={resumed_dir}')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resuming from {resumed_dir}/ckpt-3' in resumed.stderr
  assert _fingerprint(resumed.stderr) == _fingerprint(reference.stderr)
  a = tf.train.load_checkpoint(str(reference_dir / 'ckpt-6'))
  b = tf.train.load_checkpoint(str(resumed_dir / 'ckpt-6'))
  for name, _ in tf.train.list_variables(str(reference_dir / 'ckpt-6')):
    if name != '_CHECKPOINTABLE_OBJECT_GRAPH':
      np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name))


def _stop_with(stop_signal, flags, log_path, before_signal=None):
  """Starts run.py, sends `stop_signal` once it trains (first calling
  `before_signal(process)`, if given), and returns its exit code; the
  process is never left running."""
  with open(log_path, 'w') as log:
    process = helpers.start_run_py(*flags, log=log)
    try:
      deadline = time.time() + 120
      while (time.time() < deadline and
             'step ' not in open(log_path).read()):
        time.sleep(0.2)
      time.sleep(1.0)
      if before_signal:
        before_signal(process)
      process.send_signal(stop_signal)
      return process.wait(timeout=120)
    finally:  # A failed assertion leaves no million-step run behind.
      if process.poll() is None:
        process.kill()


def test_sigterm_and_ctrl_c_save_the_current_step_and_exit(folder, tmp_path):
  """SIGTERM stops a run, saved where it stopped; the relaunch resumes there
  and Ctrl-C stops it in turn, saved where it stopped."""
  model_dir = str(tmp_path / 'm')
  # No periodic checkpoint, and more steps than any machine runs before the
  # signal arrives: any checkpoint is the signal's.
  flags = [f'--dataset=folder:{folder}', '--mode=train', '--train_steps=1000000',
           '--checkpoint_steps=2000000', f'--model_dir={model_dir}', *TINY]

  def a_second_launch_fails(process):
    flags_written = os.stat(os.path.join(model_dir, 'flags.json')).st_mtime_ns
    assert f'is in use by process {process.pid} on' in helpers.one_error_line(
        run(*flags))
    assert os.stat(os.path.join(model_dir,
                                'flags.json')).st_mtime_ns == flags_written

  previous = 0
  for stop_signal, exit_code in [(signal.SIGTERM, 143), (signal.SIGINT, 130)]:
    name = signal.Signals(stop_signal).name
    log_path = tmp_path / f'{name}.log'
    # Meanwhile, a second launch fails.
    meanwhile = (a_second_launch_fails if stop_signal == signal.SIGTERM
                 else None)
    assert _stop_with(stop_signal, flags, log_path, meanwhile) == exit_code
    stderr = open(log_path).read()
    assert f'{name} received' in stderr and 'Traceback' not in stderr
    if previous:
      assert f'Resuming from {model_dir}/ckpt-{previous}' in stderr
    step = helpers.latest_step(model_dir)
    assert previous < step < 1000000  # Saved where it stopped.
    assert f'Stopped by {name} at step {step}' in stderr
    assert not os.path.exists(os.path.join(model_dir, 'saved_model'))
    previous = step


def test_a_second_ctrl_c_aborts_at_once():
  previous = signal.getsignal(signal.SIGINT)
  stop = hooks.PreemptionHook()
  stop.begin(None)
  try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)  # Python runs the handler between bytecodes.
    assert stop.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
    # The abort gave the previous handlers back.
    assert signal.getsignal(signal.SIGINT) is previous
  finally:
    stop.close()


def test_a_damaged_newest_checkpoint_resumes_from_the_older_one(tiny_run,
                                                              tmp_path):
  model_dir = tiny_run.copy_to(tmp_path / 'm')  # Checkpoints 2 and 4.
  flags = [*tiny_run.flags, f'--model_dir={model_dir}']
  os.remove(os.path.join(model_dir, 'ckpt-4.index'))
  older = os.path.join(model_dir, 'ckpt-2.index')
  written = os.stat(older).st_mtime_ns
  resumed = run(*flags, '--train_steps=6')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'ckpt-4: its .index file is missing' in resumed.stderr
  assert f'Resuming from {model_dir}/ckpt-2' in resumed.stderr
  assert os.stat(older).st_mtime_ns == written
  assert helpers.latest_step(model_dir) == 6
  # With every checkpoint damaged, nothing starts over.
  for name in os.listdir(model_dir):
    if name.startswith('ckpt-') and '.data-' in name:
      with open(os.path.join(model_dir, name), 'r+b') as f:
        f.truncate(1)
  assert 'none loads' in helpers.one_error_line(run(*flags, '--train_steps=8'))
