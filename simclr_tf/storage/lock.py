"""One writer per model directory: a lock file that names its owner.

Two training processes on one `--model_dir` would write the same checkpoint
names, exports and result.json. The first takes `<model_dir>/.lock`
(created exclusively, holding host, pid and start time); a second one fails
before any work. A lock left by a process that is gone (killed with
SIGKILL, a power loss) on this host is detected and replaced.
"""

import contextlib
import json
import os
import socket
import time

from absl import logging

LOCK_FILE = '.lock'
# A lock file still empty after this long was left by a process that died
# between creating and writing it.
_EMPTY_LOCK_GRACE_SECONDS = 10


class LockError(ValueError):
  """The model directory is in use; the message is for the user."""


def _read(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _process_is_gone(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # Alive, owned by another user.
    return False
  return False


def _is_stale(path, holder) -> bool:
  if holder is None:
    try:
      age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
      return True
    return age > _EMPTY_LOCK_GRACE_SECONDS
  return (holder.get('host') == socket.gethostname() and
          _process_is_gone(int(holder.get('pid', -1))))


def _describe(holder) -> str:
  if holder is None:
    return 'another process (its lock file is being written)'
  return (f'process {holder.get("pid")} on {holder.get("host")} since '
          f'{holder.get("since")}')


def _acquire(model_dir: str, owner: dict) -> str:
  path = os.path.join(model_dir, LOCK_FILE)
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read(path)
      if not _is_stale(path, holder):
        raise LockError(
            f'--model_dir={model_dir} is in use by {_describe(holder)}; wait '
            f'for it to end, use another --model_dir, or remove {path} if '
            'that process is gone.') from None
      logging.warning('Replacing the lock of %s, which is no longer running.',
                      _describe(holder))
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    with os.fdopen(fd, 'w') as f:
      json.dump(owner, f)
    return path
  raise LockError(f'--model_dir={model_dir}: could not take {path}; another '
                  'process keeps taking it.')


@contextlib.contextmanager
def exclusive(model_dir: str):
  """Holds `<model_dir>/.lock` for the duration; raises LockError (before
  any work) when another live process holds it."""
  owner = {'host': socket.gethostname(), 'pid': os.getpid(),
           'since': time.strftime('%Y-%m-%d %H:%M:%S')}
  path = _acquire(model_dir, owner)
  try:
    yield
  finally:
    if _read(path) == owner:  # Never remove another process's lock.
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
