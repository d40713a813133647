"""Finding the newest loadable checkpoint when some are damaged."""

import os

import pytest
import tensorflow as tf

from simclr_tf.storage import checkpoints


@pytest.fixture
def model_dir(tmp_path):
  """ckpt-4, ckpt-8 and ckpt-12 of one variable holding the step."""
  variable = tf.Variable(0.0)
  manager = checkpoints.manager(tf.train.Checkpoint(v=variable),
                                str(tmp_path), max_to_keep=5)
  for step in (4, 8, 12):
    variable.assign(step)
    manager.save(checkpoint_number=step)
  return str(tmp_path)


def _value(prefix):
  return float(tf.train.load_checkpoint(prefix).get_tensor(
      'v/.ATTRIBUTES/VARIABLE_VALUE'))


def _data_file(model_dir, step):
  return os.path.join(model_dir, f'ckpt-{step}.data-00000-of-00001')


def test_intact_directory_gives_the_newest(model_dir):
  assert checkpoints.latest_in(model_dir) == os.path.join(model_dir,
                                                          'ckpt-12')
  assert checkpoints.latest_in(os.path.join(model_dir, 'absent')) is None


def test_damaged_newest_checkpoints_fall_back_to_an_intact_one(model_dir,
                                                               caplog):
  os.remove(os.path.join(model_dir, 'ckpt-12.index'))
  with open(_data_file(model_dir, 8), 'r+b') as f:
    f.truncate(2)
  latest = checkpoints.latest_in(model_dir)
  assert latest == os.path.join(model_dir, 'ckpt-4') and _value(latest) == 4
  assert 'ckpt-12: its .index file is missing' in caplog.text
  assert 'ckpt-8: it cannot be read' in caplog.text


def test_an_unparsable_state_file_hides_no_checkpoint(model_dir):
  with open(os.path.join(model_dir, 'checkpoint'), 'w') as f:
    f.write('garbage {{ ::')
  latest = checkpoints.latest_in(model_dir)
  assert latest.endswith('ckpt-12') and _value(latest) == 12


def test_checkpoint_files_of_which_none_loads_refuse_a_fresh_start(
    model_dir):
  for step in (4, 8, 12):
    with open(_data_file(model_dir, step), 'r+b') as f:
      f.truncate(1)
  before = sorted(os.listdir(model_dir))
  with pytest.raises(checkpoints.CheckpointError,
                     match='holds checkpoint files but none loads'):
    checkpoints.latest_in(model_dir)
  assert sorted(os.listdir(model_dir)) == before  # Nothing removed.
