"""One writer per model directory."""

import json
import os
import socket
import subprocess
import sys

import pytest

from simclr_tf.storage import lock


def _write_lock(directory, **holder):
  with open(os.path.join(directory, lock.LOCK_FILE), 'w') as f:
    json.dump(holder, f)


def test_the_lock_names_its_owner_and_goes_away(tmp_path):
  path = tmp_path / lock.LOCK_FILE
  with lock.exclusive(str(tmp_path)):
    holder = json.loads(path.read_text())
    assert holder['pid'] == os.getpid()
    assert holder['host'] == socket.gethostname()
    with pytest.raises(lock.LockError, match=f'process {os.getpid()} on'):
      with lock.exclusive(str(tmp_path)):
        pass
    assert json.loads(path.read_text()) == holder  # Left as it was.
  assert not path.exists()


def test_a_live_process_on_another_host_or_here_keeps_its_lock(tmp_path):
  sleeper = subprocess.Popen([sys.executable, '-c',
                              'import time; time.sleep(60)'])
  try:
    for host, pid in ((socket.gethostname(), sleeper.pid),
                      ('elsewhere', 1)):
      _write_lock(tmp_path, host=host, pid=pid, since='then')
      with pytest.raises(lock.LockError, match=f'in use by process {pid} on '
                         f'{host}'):
        with lock.exclusive(str(tmp_path)):
          pass
  finally:
    sleeper.kill()
    sleeper.wait()


def test_a_lock_left_by_a_dead_process_is_replaced(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  _write_lock(tmp_path, host=socket.gethostname(), pid=dead.pid, since='x')
  with lock.exclusive(str(tmp_path)):
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())['pid'] == (
        os.getpid())
  assert 'no longer running' in caplog.text


def test_an_empty_lock_file_is_stale_only_when_old(tmp_path):
  path = tmp_path / lock.LOCK_FILE
  path.write_text('')
  with pytest.raises(lock.LockError, match='being written'):
    with lock.exclusive(str(tmp_path)):
      pass
  old = os.stat(path).st_mtime - 60
  os.utime(path, (old, old))
  with lock.exclusive(str(tmp_path)):
    pass
  assert not path.exists()
