"""The image files of a folder: listing, a header check of each file, and a
cache of the checks so that a large folder (ImageNet: 1.28M files) is
checked once, in parallel, and reused while its files are unchanged.

No TensorFlow here: worker processes import this module alone.
"""

import concurrent.futures
import dataclasses
import hashlib
import os

from absl import logging

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
UNREADABLE = 0  # The pixel count of a file that is not a readable image.
# PIL refuses to open images above twice its own limit; their size is not
# needed, only that it is over any sensible --max_image_pixels.
HUGE = 2**62
# Checks of this many files or more go to worker processes (worth their
# start-up); fewer run in threads.
_PROCESS_THRESHOLD = 20_000
_CHUNK = 2_000
_CACHE_VERSION = 'simclr_tf folder scan v2'


@dataclasses.dataclass(frozen=True)
class ImageFile:
  path: str
  # What says the file is unchanged without reading it, as git's index:
  # size, modification time, status-change time (set by the system on every
  # write or rename, unlike mtime, which `touch -d` and copies restore) and
  # inode number (a file replaced by another).
  stamp: tuple[int, int, int, int]
  pixels: int = UNREADABLE  # Width x height; UNREADABLE if not an image.


def stamp_of(stat: os.stat_result) -> tuple[int, int, int, int]:
  return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def is_hidden(name: str) -> bool:
  return name.startswith('.') or name.startswith('_')


def list_files(directory: str) -> list[ImageFile]:
  """Non-hidden files below `directory`, recursively, sorted by path, with
  their stamps (not yet checked)."""
  found = []
  pending = [directory]
  while pending:
    with os.scandir(pending.pop()) as entries:
      for entry in entries:
        if is_hidden(entry.name):
          continue
        if entry.is_dir():
          pending.append(entry.path)
        elif entry.is_file():
          found.append(ImageFile(entry.path, stamp_of(entry.stat())))
  return sorted(found, key=lambda f: f.path)


def header_pixels(path: str) -> int:
  """Width x height of a JPEG/PNG/BMP/GIF file whose header and structure
  check out, or UNREADABLE. The pixels are not decoded."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not path.lower().endswith(IMAGE_EXTENSIONS):
    return UNREADABLE
  try:
    with Image.open(path) as image:
      image_format = image.format
      width, height = image.size
      image.verify()
    if image_format not in ('JPEG', 'PNG', 'BMP', 'GIF'):
      return UNREADABLE
    if image_format == 'JPEG':
      # A truncated JPEG passes verify(); a complete one ends with EOI.
      with open(path, 'rb') as f:
        f.seek(-2, os.SEEK_END)
        if f.read(2) != b'\xff\xd9':
          return UNREADABLE
    return max(1, width * height)
  except Image.DecompressionBombError:
    return HUGE
  except Exception:  # pylint: disable=broad-except
    return UNREADABLE


def _header_pixels_of(paths: list[str]) -> list[int]:
  return [header_pixels(p) for p in paths]


def _check_in_threads(paths: list[str]) -> list[int]:
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    return list(pool.map(header_pixels, paths))


def _check_in_processes(paths: list[str]) -> list[int]:
  """Parsing headers is Python work: processes scale with cores, threads do
  not. joblib's loky workers start fresh interpreters (the caller has
  TensorFlow's threads running, so no fork) that, unlike multiprocessing's
  spawn, do not import the caller's main script again: scripts without an
  `if __name__ == '__main__':` guard, or read from standard input, work."""
  import joblib  # pylint: disable=g-import-not-at-top
  chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
  results = joblib.Parallel(n_jobs=os.cpu_count(), backend='loky')(
      joblib.delayed(_header_pixels_of)(chunk) for chunk in chunks)
  return [pixels for chunk in results for pixels in chunk]


def _check(paths: list[str]) -> list[int]:
  """header_pixels of every path, in parallel: in worker processes for
  large folders, in threads (this process) for small ones or when worker
  processes cannot start or fail."""
  if len(paths) < _PROCESS_THRESHOLD:
    return _check_in_threads(paths)
  try:
    return _check_in_processes(paths)
  except Exception as e:  # pylint: disable=broad-except
    # header_pixels itself never raises: this is the pool failing.
    logging.warning('Checking %d image files in worker processes failed '
                    '(%s: %s); checking them in this process instead, '
                    'which is slower.', len(paths), type(e).__name__,
                    str(e).splitlines()[0] if str(e) else '')
    return _check_in_threads(paths)


def cache_path(cache_dir: str, directory: str) -> str:
  """Where the checks of `directory`'s files are kept."""
  digest = hashlib.sha1(directory.encode()).hexdigest()[:12]
  name = os.path.basename(directory.rstrip('/')) or 'root'
  return os.path.join(cache_dir, f'{name}-{digest}.tsv')


def _read_cache(path: str, directory: str) -> dict:
  """{relative path: (stamp, pixels)}; empty if none or stale."""
  try:
    with open(path, encoding='utf-8') as f:
      if f.readline().rstrip('\n') != f'{_CACHE_VERSION}\t{directory}':
        return {}
      cached = {}
      for line in f:
        *stamp, pixels, name = line.rstrip('\n').split('\t', 5)
        cached[name] = (tuple(map(int, stamp)), int(pixels))
      return cached
  except (OSError, ValueError):
    return {}


def _write_cache(path: str, directory: str, files: list[ImageFile]):
  """Written beside and renamed: a crash never leaves half a cache."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f'{path}.tmp-{os.getpid()}'
    with open(temporary, 'w', encoding='utf-8') as f:
      f.write(f'{_CACHE_VERSION}\t{directory}\n')
      for file in files:
        name = os.path.relpath(file.path, directory)
        stamp = '\t'.join(map(str, file.stamp))
        f.write(f'{stamp}\t{file.pixels}\t{name}\n')
    os.replace(temporary, path)
  except OSError as e:
    logging.warning('Could not cache the folder scan in %s (%s); the next '
                    'start scans again.', path, e)


def scan(directory: str, cache_dir: str | None = None) -> list[ImageFile]:
  """Every non-hidden file below `directory` with its pixel count.

  With `cache_dir`, checks are reused for files whose stamps are unchanged
  since the last scan; only new or changed files are opened.
  """
  files = list_files(directory)
  cache_file = cache_path(cache_dir, directory) if cache_dir else None
  cached = _read_cache(cache_file, directory) if cache_file else {}
  pixels, unknown = {}, []
  for file in files:
    hit = cached.get(os.path.relpath(file.path, directory))
    if hit and hit[0] == file.stamp:
      pixels[file.path] = hit[1]
    else:
      unknown.append(file.path)
  if len(unknown) > _CHUNK:
    logging.info('Checking %d image files under %s%s.', len(unknown),
                 directory, f' ({len(files) - len(unknown)} cached)'
                 if cached else '')
  pixels.update(zip(unknown, _check(unknown)))
  files = [dataclasses.replace(f, pixels=pixels[f.path]) for f in files]
  if cache_file and (unknown or len(cached) != len(files)):
    _write_cache(cache_file, directory, files)
  return files
