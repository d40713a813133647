"""Nothing lost: kills, SIGTERM, NaN losses, full disks and bad input."""

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.training import hooks
from tests import helpers
from tests.helpers import REPO, run

TINY = ['--image_size=16', '--resnet_depth=18', '--width_multiplier=0.125',
        '--train_batch_size=8', '--eval_batch_size=8', '--steps_per_loop=1',
        '--summary_steps=1', '--knn=False', '--seed=5']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('data') / 'shapes'
  return helpers.make_class_folder(str(root), np.random.default_rng(0),
                                   classes=('a', 'b', 'c'), per_class=6,
                                   size=(20, 20))


def _fingerprint(stderr):
  lines = [l for l in stderr.splitlines() if 'weights fingerprint' in l]
  return lines[-1].split('weights fingerprint ')[1] if lines else None


def _start(*flags, preexec_fn=None, log=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  return subprocess.Popen([sys.executable, os.path.join(REPO, 'run.py'),
                           *flags], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=log, preexec_fn=preexec_fn)


def _one_error_line(result) -> str:
  """The run's only `run.py: error:` line; it exited 2 without a traceback."""
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('run.py:')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  return errors[0]


def _latest_step(model_dir):
  latest = tf.train.latest_checkpoint(model_dir)
  return int(latest.rsplit('-', 1)[1]) if latest else 0


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
    if _latest_step(model_dir) > step:
      return True
    time.sleep(0.1)
  return False


def test_killed_runs_resume_to_the_uninterrupted_weights(folder, tmp_path):
  flags = [f'--dataset=folder:{folder}', '--mode=train', '--train_steps=100',
           '--checkpoint_steps=4', '--deterministic', *TINY]
  reference = run(*flags, f'--model_dir={tmp_path}/reference')
  assert reference.returncode == 0, reference.stderr[-3000:]
  expected = _fingerprint(reference.stderr)

  model_dir = str(tmp_path / 'killed')
  chooser = random.Random(0)
  kills, lost = 0, []
  started = time.time()
  while kills < 3 and time.time() - started < 300:
    before = _latest_step(model_dir)
    process = _start(*flags, f'--model_dir={model_dir}')
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
    lost.append(_last_summary_step(model_dir) - _latest_step(model_dir))
  assert kills == 3
  final = run(*flags, f'--model_dir={model_dir}')
  assert final.returncode == 0, final.stderr[-3000:]
  assert _latest_step(model_dir) == 100
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
           '--contrastive_chunk_size=4', *TINY]
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


@pytest.mark.parametrize('stop_signal,exit_code', [
    (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_save_the_current_step_and_exit(
    folder, tmp_path, stop_signal, exit_code):
  name = signal.Signals(stop_signal).name
  model_dir = str(tmp_path / 'm')
  # No periodic checkpoint, and more steps than any machine runs before the
  # signal arrives: any checkpoint is the signal's.
  flags = [f'--dataset=folder:{folder}', '--mode=train', '--train_steps=1000000',
           '--checkpoint_steps=2000000', f'--model_dir={model_dir}', *TINY]
  with open(tmp_path / 'log', 'w') as log:
    process = _start(*flags, log=log)
    deadline = time.time() + 120
    while time.time() < deadline and 'step ' not in open(tmp_path / 'log').read():
      time.sleep(0.2)
    time.sleep(1.0)
    if stop_signal == signal.SIGTERM:  # Meanwhile, a second launch fails.
      flags_written = os.stat(os.path.join(model_dir, 'flags.json')).st_mtime_ns
      assert f'is in use by process {process.pid} on' in _one_error_line(
          run(*flags))
      assert os.stat(os.path.join(model_dir,
                                  'flags.json')).st_mtime_ns == flags_written
    process.send_signal(stop_signal)
    assert process.wait(timeout=120) == exit_code
  stderr = open(tmp_path / 'log').read()
  assert f'{name} received' in stderr and 'Traceback' not in stderr
  step = _latest_step(model_dir)
  assert 0 < step < 1000000  # Saved where it stopped.
  assert f'Stopped by {name} at step {step}' in stderr
  assert not os.path.exists(os.path.join(model_dir, 'saved_model'))
  resumed = run(*flags[:2], '--train_steps=' + str(step + 2),
                *flags[3:])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resuming from {model_dir}/ckpt-{step}' in resumed.stderr


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


def test_a_damaged_newest_checkpoint_resumes_from_the_older_one(folder,
                                                              tmp_path):
  model_dir = str(tmp_path / 'm')
  flags = [f'--dataset=folder:{folder}', '--mode=train',
           '--checkpoint_steps=2', f'--model_dir={model_dir}', *TINY]
  first = run(*flags, '--train_steps=4')
  assert first.returncode == 0, first.stderr[-3000:]
  os.remove(os.path.join(model_dir, 'ckpt-4.index'))
  older = os.path.join(model_dir, 'ckpt-2.index')
  written = os.stat(older).st_mtime_ns
  resumed = run(*flags, '--train_steps=6')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'ckpt-4: its .index file is missing' in resumed.stderr
  assert f'Resuming from {model_dir}/ckpt-2' in resumed.stderr
  assert os.stat(older).st_mtime_ns == written
  assert _latest_step(model_dir) == 6
  # With every checkpoint damaged, nothing starts over.
  for name in os.listdir(model_dir):
    if name.startswith('ckpt-') and '.data-' in name:
      with open(os.path.join(model_dir, name), 'r+b') as f:
        f.truncate(1)
  assert 'none loads' in _one_error_line(run(*flags, '--train_steps=8'))


def test_a_nan_loss_stops_with_the_last_good_checkpoint_intact(folder,
                                                              tmp_path):
  model_dir = str(tmp_path / 'm')
  common = [f'--dataset=folder:{folder}', '--mode=train',
            '--checkpoint_steps=2', f'--model_dir={model_dir}', *TINY]
  good = run(*common, '--train_steps=2')
  assert good.returncode == 0, good.stderr[-3000:]
  # An absurd learning rate makes the weights, then the loss, non-finite.
  error = _one_error_line(run(*common, '--train_steps=8',
                              '--learning_rate=1e30'))
  assert 'The loss became' in error
  assert f'the last good checkpoint is {model_dir}/ckpt-2.' in error
  assert _latest_step(model_dir) == 2
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(model_dir)):
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
      assert np.isfinite(value).all(), name
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['2']


def _limit_file_size():
  # Writes past 1 MB fail (EFBIG) the way a full disk fails a write.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_a_full_disk_is_one_clear_line_and_loses_nothing(folder, tmp_path):
  model_dir = str(tmp_path / 'm')
  common = [f'--dataset=folder:{folder}', '--mode=train',
            '--checkpoint_steps=2', f'--model_dir={model_dir}',
            '--image_size=16', '--resnet_depth=18', '--width_multiplier=0.5',
            '--train_batch_size=8', '--steps_per_loop=1', '--knn=False']
  good = run(*common, '--train_steps=2')
  assert good.returncode == 0, good.stderr[-3000:]
  with open(tmp_path / 'log', 'w') as log:
    process = _start(*common, '--train_steps=6', preexec_fn=_limit_file_size,
                     log=log)
    assert process.wait(timeout=300) == 1
  stderr = open(tmp_path / 'log').read()
  errors = [l for l in stderr.splitlines() if l.startswith('run.py:')]
  assert errors == ['run.py: error: could not write to --model_dir (File too '
                    'large). What was already written there (checkpoints, '
                    'exports) is intact: free space or fix permissions and '
                    'run the same command to resume.']
  assert _latest_step(model_dir) == 2
  tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['2']


def _flat_folder(root, rng):
  for i in range(4):
    helpers.write(os.path.join(root, f'{i}.png'),
                  helpers.encode(helpers.random_rgb(rng), 'PNG'))
  return root


@pytest.mark.parametrize('case,flags,message', [
    ('unknown dataset', ['--dataset=cifar100x'],
     "Unknown dataset 'cifar100x'. Did you mean cifar100"),
    ('no head to select from', ['--proj_head_mode=none',
                                '--ft_proj_selector=1'],
     '--ft_proj_selector=1 needs a projection head with that many layers'),
    ('fine-tuning unlabeled images', ['--dataset=flat', '--train_mode=finetune'],
     'has no labels, so it cannot be used for fine-tuning'),
    ('image too small for the stem', ['--image_size=4'],
     '--image_size=4 is too small for the CIFAR stem'),
    ('zero batch', ['--train_batch_size=0'], '--train_batch_size=0 must be > 0'),
    ('negative projection', ['--proj_out_dim=-1'], '--proj_out_dim=-1 must be'),
    ('bad label fraction', ['--label_fraction=0'],
     '--label_fraction=0.0 must be in (0, 1]'),
    ('batch vs replicas', ['--cpu_replicas=3'],
     '--train_batch_size=8 is not divisible by the 3 replicas'),
    ('missing checkpoint', ['--checkpoint=/nonexistent/ckpt-7'],
     '--checkpoint=/nonexistent/ckpt-7: neither a directory nor a checkpoint'),
    ('unwritable model_dir', ['--model_dir=FILE/sub'], 'is not writable'),
    ('unknown depth', ['--resnet_depth=20'], '--resnet_depth=20 is not one of'),
    ('freezing while pretraining', ['--fine_tune_after_block=2'],
     '--fine_tune_after_block needs --train_mode=finetune'),
    ('model_dir is a file', ['--model_dir=FILE'], 'is a file, not a directory'),
    ('batch of one', ['--train_batch_size=1'],
     '--train_batch_size=1 leaves no negatives'),
    ('negative learning rate', ['--learning_rate=-1'],
     '--learning_rate=-1.0 must be a number > 0'),
    ('nan learning rate', ['--learning_rate=nan'],
     '--learning_rate=nan must be a number > 0'),
    ('width without channels', ['--width_multiplier=0.001'],
     'leaves the first layers without channels'),
    ('batch larger than the data', ['--train_batch_size=64'],
     '--train_batch_size=64 is larger than the 15 training examples'),
    ('activations cannot fit', ['--image_size=100000'],
     'GiB for the first layer\'s activations alone'),
])
def test_bad_input_fails_before_work_with_one_line(case, flags, message,
                                                   folder, tmp_path, rng):
  del case
  (tmp_path / 'FILE').write_text('a file, not a directory')
  flat = _flat_folder(str(tmp_path / 'flatdir'), rng)
  flags = [f.replace('FILE', str(tmp_path / 'FILE'))
           .replace('--dataset=flat', f'--dataset=folder:{flat}')
           for f in flags]
  if not any(f.startswith('--dataset') for f in flags):
    flags.append(f'--dataset=folder:{folder}')
  if not any(f.startswith('--model_dir') for f in flags):
    flags.append(f'--model_dir={tmp_path}/m')
  result = run('--mode=train', '--train_steps=1', *TINY, *flags)
  assert message in _one_error_line(result)
  assert not os.path.exists(tmp_path / 'm' / 'checkpoint')


def test_resuming_with_another_architecture_names_the_flags(folder, tmp_path):
  flags = [f'--dataset=folder:{folder}', '--mode=train',
           f'--model_dir={tmp_path}/m', *TINY]
  first = run(*flags, '--train_steps=1')
  assert first.returncode == 0, first.stderr[-3000:]
  flags_json = open(tmp_path / 'm' / 'flags.json').read()
  changed = run(*flags, '--train_steps=2', '--width_multiplier=0.25')
  assert ('--width_multiplier (encoder.width_multiplier: 0.125 before, 0.25 '
          'now)') in _one_error_line(changed)
  assert open(tmp_path / 'm' / 'flags.json').read() == flags_json


def test_embedding_with_a_saved_model_without_serving_bytes(folder,
                                                           tmp_path):
  module = tf.Module()
  module.f = tf.function(lambda x: {'default': x},
                         input_signature=[tf.TensorSpec([None, 2])])
  tf.saved_model.save(module, str(tmp_path / 'sm'),
                      signatures={'serving_default': module.f})
  result = run('--mode=embed', f'--saved_model={tmp_path}/sm',
               f'--dataset=folder:{folder}', f'--output={tmp_path}/e.npz')
  assert 'has no serving_bytes signature (it has: serving_default)' in (
      _one_error_line(result))
