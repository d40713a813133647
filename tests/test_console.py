"""The quiet console's formatter and filter (run.py end to end: see
test_run_train.test_the_console_shows_the_projects_lines_only)."""

import logging
import os

from simclr_tf import console


def _record(level, pathname, message='hello %s', args=('there',)):
  return logging.LogRecord('absl', level, pathname, 1, message, args, None)


def test_plain_lines_for_information_and_a_level_above_it():
  formatter = console.PlainFormatter()
  assert formatter.format(_record(logging.INFO, 'x.py')) == 'hello there'
  assert formatter.format(_record(logging.WARNING, 'x.py')) == (
      'warning: hello there')


def test_library_records_below_error_are_dropped(tmp_path):
  library = str(tmp_path / 'site-packages' / 'tensorflow')
  keep = console.LibraryFilter([library])
  inside = os.path.join(library, 'python', 'saved_model', 'save.py')
  assert not keep.filter(_record(logging.INFO, inside))
  assert not keep.filter(_record(logging.WARNING, inside))
  assert keep.filter(_record(logging.ERROR, inside))
  # The project's own lines, and a sibling whose name merely starts alike.
  assert keep.filter(_record(logging.INFO, '/work/simclr_tf/training/train.py'))
  assert keep.filter(_record(logging.INFO, library + '_datasets/core.py'))
