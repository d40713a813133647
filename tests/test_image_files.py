"""Folder scans: header checks, their cache, and the parallel first scan."""

import json
import os
import subprocess
import sys
import time

import numpy as np

from simclr_tf.config import DataConfig
from simclr_tf.inputs import catalog
from simclr_tf.inputs import image_files
from tests import helpers


def _counting(monkeypatch):
  opened = []
  real = image_files.header_pixels

  def header_pixels(path):
    opened.append(os.path.basename(path))
    return real(path)
  monkeypatch.setattr(image_files, 'header_pixels', header_pixels)
  return opened


def test_header_pixels_reads_sizes_and_rejects_what_is_not_an_image(
    tmp_path, rng):
  png = tmp_path / 'a.png'
  png.write_bytes(helpers.encode(helpers.random_rgb(rng, 6, 7), 'PNG'))
  jpeg = tmp_path / 'b.jpg'
  jpeg.write_bytes(helpers.encode(helpers.random_rgb(rng, 5, 3), 'JPEG'))
  truncated = tmp_path / 'c.jpg'
  truncated.write_bytes(jpeg.read_bytes()[:-40])
  text = tmp_path / 'd.png'
  text.write_bytes(b'not an image')
  assert image_files.header_pixels(str(png)) == 42
  assert image_files.header_pixels(str(jpeg)) == 15
  assert image_files.header_pixels(str(truncated)) == image_files.UNREADABLE
  assert image_files.header_pixels(str(text)) == image_files.UNREADABLE


def test_a_cached_scan_opens_only_new_or_changed_files(tmp_path, rng,
                                                      monkeypatch):
  root = helpers.make_class_folder(str(tmp_path / 'f'), rng,
                                   classes=('a', 'b'), per_class=4)
  cache = str(tmp_path / 'cache')
  opened = _counting(monkeypatch)
  first = image_files.scan(root, cache)
  assert len(opened) == 8 and len(os.listdir(cache)) == 1
  opened.clear()
  assert image_files.scan(root, cache) == first and not opened
  # A changed file (other size), a new file and a removed one.
  helpers.write(f'{root}/a/0.png',
                helpers.encode(helpers.random_rgb(rng, 9, 9), 'PNG'))
  helpers.write(f'{root}/b/new.png',
                helpers.encode(helpers.random_rgb(rng, 2, 2), 'PNG'))
  os.remove(f'{root}/b/3.png')
  rescanned = image_files.scan(root, cache)
  assert sorted(opened) == ['0.png', 'new.png']
  uncached = image_files.scan(root)
  assert rescanned == uncached
  assert {os.path.relpath(f.path, root): f.pixels
          for f in uncached}[os.path.join('a', '0.png')] == 81
  opened.clear()
  assert image_files.scan(root, cache) == uncached and not opened
  # Rewritten in place, as many bytes, its modification time put back.
  path = f'{root}/b/0.png'
  stat = os.stat(path)
  time.sleep(0.05)  # File times tick with the kernel's coarse clock.
  with open(path, 'r+b') as f:
    content = f.read()
    f.seek(0)
    f.write(content)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  image_files.scan(root, cache)
  assert opened == ['0.png']


def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path, rng,
                                                 monkeypatch):
  root = helpers.make_class_folder(str(tmp_path / 'f'), rng, per_class=3)
  cache = str(tmp_path / 'cache')
  expected = image_files.scan(root, cache)
  path = image_files.cache_path(cache, root)
  with open(path, 'a') as f:
    f.write('garbage without tabs\n')
  opened = _counting(monkeypatch)
  assert image_files.scan(root, cache) == expected and len(opened) == 6
  opened.clear()
  assert image_files.scan(root, cache) == expected and not opened


def _class_folder_with_a_broken_file(tmp_path, rng):
  root = helpers.make_class_folder(str(tmp_path / 'f'), rng, per_class=6,
                                   size=(3, 5))
  helpers.write(f'{root}/cat/broken.png', b'\x89PNG broken')
  return root


def test_the_parallel_scan_in_processes_agrees_with_threads(tmp_path, rng,
                                                           monkeypatch):
  root = _class_folder_with_a_broken_file(tmp_path, rng)
  threads = image_files.scan(root)
  monkeypatch.setattr(image_files, '_PROCESS_THRESHOLD', 1)
  monkeypatch.setattr(image_files, '_CHUNK', 4)

  def fell_back(paths):
    raise AssertionError(f'the worker processes failed: {len(paths)} files '
                         'went to threads')
  # The pool's fallback would hide a failing pool behind equal results.
  monkeypatch.setattr(image_files, '_check_in_threads', fell_back)
  processes = image_files.scan(root)
  assert processes == threads
  assert [f.pixels for f in threads].count(15) == 12
  assert [f.pixels for f in threads].count(image_files.UNREADABLE) == 1


# A user's script without a main guard: worker processes must not run it
# again (each run appends a line to the marker file).
_UNGUARDED_SCRIPT = """
import json, os, sys
sys.path.insert(0, {repo!r})
from simclr_tf.inputs import image_files
with open({marker!r}, 'a') as f:
  f.write(f'{{os.getpid()}}\\n')
image_files._PROCESS_THRESHOLD = 1
image_files._CHUNK = 4
files = image_files.scan({root!r})
print(json.dumps([[f.path, f.pixels] for f in files]))
"""


def test_a_script_without_a_main_guard_scans_in_processes_once(tmp_path,
                                                               rng):
  root = _class_folder_with_a_broken_file(tmp_path, rng)
  expected = [[f.path, f.pixels] for f in image_files.scan(root)]
  marker = tmp_path / 'runs.txt'
  script = tmp_path / 'unguarded.py'
  script.write_text(_UNGUARDED_SCRIPT.format(
      repo=helpers.REPO, marker=str(marker), root=root))
  for how in ('file', 'stdin'):
    marker.write_text('')
    result = subprocess.run(
        [sys.executable, str(script)] if how == 'file' else
        [sys.executable, '-'], input=None if how == 'file' else
        script.read_text(), capture_output=True, text=True, timeout=120,
        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == expected, how
    assert len(marker.read_text().splitlines()) == 1, how  # Ran once.
    assert 'failed' not in result.stderr, result.stderr  # No fallback.


def test_a_broken_worker_pool_falls_back_to_this_process(tmp_path, rng,
                                                         monkeypatch,
                                                         caplog):
  root = _class_folder_with_a_broken_file(tmp_path, rng)
  expected = image_files.scan(root)
  monkeypatch.setattr(image_files, '_PROCESS_THRESHOLD', 1)
  monkeypatch.setattr(image_files, '_CHUNK', 4)
  # Every worker dies at its first chunk (a lambda travels by value).
  monkeypatch.setattr(image_files, '_header_pixels_of',
                      lambda paths: os._exit(3))  # pylint: disable=protected-access
  assert image_files.scan(root) == expected
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == 'WARNING']
  assert len(warnings) == 1
  assert warnings[0].startswith('Checking 13 image files in worker processes '
                                'failed (TerminatedWorkerError: ')
  assert warnings[0].endswith('checking them in this process instead, which '
                              'is slower.')


def test_folder_datasets_keep_their_scan_under_data_dir(tmp_path, rng,
                                                       monkeypatch):
  root = helpers.make_class_folder(str(tmp_path / 'f'), rng, per_class=5)
  config = DataConfig(dataset=f'folder:{root}',
                      data_dir=str(tmp_path / 'data'))
  first = catalog.make_source(config)
  opened = _counting(monkeypatch)
  again = catalog.make_source(config)
  assert not opened
  assert again.paths('train') == first.paths('train')
  np.testing.assert_array_equal(again.labels('test'), first.labels('test'))
  assert os.listdir(tmp_path / 'data' / catalog.FOLDER_SCANS_DIR)
