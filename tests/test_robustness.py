"""Nothing lost on bad input or a failing run: one clear line before any
work, NaN losses and full disks that keep the last good checkpoint
(tests/test_resume.py: kills, signals and resuming)."""

import os
import resource
import signal

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tests.helpers import run

TINY = helpers.TINY_RUN


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return helpers.shapes_folder(tmp_path_factory)


def test_a_nan_loss_stops_with_the_last_good_checkpoint_intact(tiny_run,
                                                               tmp_path):
  model_dir = tiny_run.copy_to(tmp_path / 'm')  # Good to step 4.
  common = [*tiny_run.flags, f'--model_dir={model_dir}']
  # An absurd learning rate makes the weights, then the loss, non-finite.
  error = helpers.one_error_line(run(*common, '--train_steps=10',
                                     '--learning_rate=1e30'))
  assert 'The loss became' in error
  assert f'the last good checkpoint is {model_dir}/ckpt-4.' in error
  assert helpers.latest_step(model_dir) == 4
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(model_dir)):
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
      assert np.isfinite(value).all(), name
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['4']


def test_a_nan_inside_a_bfloat16_step_stops_the_run_at_once(tmp_path, rng):
  """A NaN with the sign bit set (0xffc0 in bfloat16: what inf - inf and
  0 * inf give on x86) put into the stem's batch-norm offset after the
  checkpoint of step 2: the loss becomes NaN and the NaN guard stops the run
  at step 3 with checkpoint 2 intact, nothing saved from the broken state.
  (The NaN reaches the loss through the batch statistics too; test_relu
  checks that the residual blocks pass NaNs of either sign.)"""
  from simclr_tf.inputs import array_source  # pylint: disable=g-import-not-at-top
  from simclr_tf.run_context import RunContext  # pylint: disable=g-import-not-at-top
  from simclr_tf.settings import resolver  # pylint: disable=g-import-not-at-top
  from simclr_tf.training import loop  # pylint: disable=g-import-not-at-top
  from simclr_tf.training.train import train  # pylint: disable=g-import-not-at-top
  images = rng.integers(0, 256, [16, 16, 16, 3], dtype=np.uint8)
  source = array_source.ArraySource(
      'random', {'train': images}, {'train': np.arange(16) % 2},
      num_classes=2)
  model_dir = str(tmp_path / 'm')
  config = resolver.resolve({
      'dataset': 'random', 'model_dir': model_dir, 'image_size': 16,
      'resnet_depth': 18, 'width_multiplier': 0.125, 'train_batch_size': 8,
      'train_steps': 6, 'checkpoint_steps': 2, 'steps_per_loop': 1,
      'summary_steps': 1, 'knn': False}, source=source,
      mixed_precision='bfloat16')
  negative_nan = np.array(0xffc00000, np.uint32).view(np.float32)

  class PoisonAfterStep2(loop.Hook):
    def after_steps(self, state):
      if state.step == 2:
        offset = [v for v in state.task.model.encoder.trainable_variables
                  if v.path.endswith('beta')][0]
        poisoned = offset.numpy()
        poisoned[0] = negative_nan
        offset.assign(poisoned)

  with pytest.raises(FloatingPointError) as stopped:
    train(RunContext(config, tf.distribute.get_strategy(), source),
          hooks=[PoisonAfterStep2()])
  assert str(stopped.value) == (
      f'The loss became nan at step 3; the last good checkpoint is '
      f'{model_dir}/ckpt-2.')
  assert helpers.latest_step(model_dir) == 2
  reader = tf.train.load_checkpoint(f'{model_dir}/ckpt-2')
  for name, _ in tf.train.list_variables(f'{model_dir}/ckpt-2'):
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
      assert np.isfinite(value).all(), name


def _limit_file_size():
  # Writes past 1 MB fail (EFBIG) the way a full disk fails a write.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_a_full_disk_is_one_clear_line_and_loses_nothing(tiny_run, tmp_path):
  model_dir = tiny_run.copy_to(tmp_path / 'm')  # Good to step 4.
  # Its checkpoints (1.6 MB) no longer fit.
  assert os.path.getsize(f'{model_dir}/ckpt-4.data-00000-of-00001') > 1 << 20
  with open(tmp_path / 'log', 'w') as log:
    process = helpers.start_run_py(
        *tiny_run.flags, f'--model_dir={model_dir}', '--train_steps=6',
        preexec_fn=_limit_file_size, log=log)
    assert process.wait(timeout=300) == 1
  stderr = open(tmp_path / 'log').read()
  errors = [l for l in stderr.splitlines() if l.startswith('run.py:')]
  assert errors == ['run.py: error: could not write to --model_dir (File too '
                    'large). What was already written there (checkpoints, '
                    'exports) is intact: free space or fix permissions and '
                    'run the same command to resume.']
  assert helpers.latest_step(model_dir) == 4
  tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['4']


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
    ('exporting nothing', ['--mode=export', '--export_formats=none'],
     '--mode=export with --export_formats=none writes nothing'),
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
  assert message in helpers.one_error_line(result)
  assert not os.path.exists(tmp_path / 'm' / 'checkpoint')


def test_resuming_with_another_architecture_names_the_flags(tiny_run,
                                                            tmp_path):
  flags = [*tiny_run.flags, f'--model_dir={tiny_run.copy_to(tmp_path / "m")}']
  flags_json = open(tmp_path / 'm' / 'flags.json').read()
  changed = run(*flags, '--train_steps=6', '--width_multiplier=0.25')
  assert ('--width_multiplier (encoder.width_multiplier: 0.125 before, 0.25 '
          'now)') in helpers.one_error_line(changed)
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
      helpers.one_error_line(result))
