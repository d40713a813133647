"""What runs write: atomic JSON, TensorBoard scalars."""

import glob
import json
import os

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from simclr_tf.storage import records


def test_write_json_replaces_the_file_whole(tmp_path):
  path = str(tmp_path / 'sub' / 'result.json')
  records.write_json(path, {'b': 1, 'a': 0.5})
  with open(path) as f:
    assert json.load(f) == {'a': 0.5, 'b': 1}
  records.write_json(path, {'a': 2})
  with open(path) as f:
    assert json.load(f) == {'a': 2}
  assert os.listdir(tmp_path / 'sub') == ['result.json']


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'result.json')
  records.write_json(path, {'a': 1})
  with pytest.raises(TypeError):  # Not JSON: fails half-way through.
    records.write_json(path, {'a': 2, 'b': object()})
  with open(path) as f:
    assert json.load(f) == {'a': 1}
  assert os.listdir(tmp_path) == ['result.json']


def test_metrics_writer_writes_floats_only(tmp_path):
  writer = records.MetricsWriter(str(tmp_path))
  writer.scalars(3, {'loss': 0.25, 'global_step': 3, 'split': 'test',
                     'converged': True})
  path, = glob.glob(str(tmp_path / 'events.out.tfevents.*'))
  accumulator = event_accumulator.EventAccumulator(path)
  accumulator.Reload()
  assert accumulator.Tags()['tensors'] == ['loss']
  event, = accumulator.Tensors('loss')
  assert event.step == 3
  assert tf.make_ndarray(event.tensor_proto) == 0.25


def test_a_disabled_writer_writes_nothing(tmp_path):
  records.MetricsWriter(str(tmp_path / 'worker'), enabled=False).scalars(
      1, {'loss': 1.0})
  assert not os.path.exists(tmp_path / 'worker')
