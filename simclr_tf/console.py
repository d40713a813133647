"""A quiet console: the project's lines only, unless --verbosity asks for
TensorFlow's.

TensorFlow's C++ start-up lines (oneDNN notices, CUDA probing, `cuInit`
failures on CPU machines) are written to the process's stderr before any
log level applies, so they are captured while TensorFlow is imported and
its devices are listed, and shown only if that fails.
"""

import logging as std_logging
import os
import sys
import tempfile

from absl import logging

# absl's --verbosity at or above which TensorFlow's own logging shows.
TENSORFLOW_VERBOSITY = 1


class PlainFormatter(std_logging.Formatter):
  """`message` for information; `warning: message` above it."""

  def format(self, record):
    message = record.getMessage()
    if record.levelno >= std_logging.WARNING:
      message = f'{record.levelname.lower()}: {message}'
    if record.exc_info:
      message += '\n' + self.formatException(record.exc_info)
    return message


class LibraryFilter(std_logging.Filter):
  """Drops what TensorFlow and Keras log below ERROR through absl (e.g.
  checkpoint sharding times, SavedModel renaming notes): they log through
  the same handler as the project, so their records are told apart by the
  file that logs them."""

  def __init__(self, package_dirs):
    super().__init__()
    self.package_dirs = tuple(os.path.join(d, '') for d in package_dirs)

  def filter(self, record):
    return (record.levelno >= std_logging.ERROR or
            not record.pathname.startswith(self.package_dirs))


def setup(verbosity: int):
  """Call once flags are parsed, before TensorFlow is imported (again in
  the same process: no change)."""
  verbose = verbosity >= TENSORFLOW_VERBOSITY
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '0' if verbose else '2')
  tf, keras = import_tensorflow(show_start_up=verbose)
  if verbose:
    return
  handler = logging.get_absl_handler()
  handler.setFormatter(PlainFormatter())
  if not any(isinstance(f, LibraryFilter) for f in handler.filters):
    handler.addFilter(LibraryFilter(
        [os.path.dirname(module.__file__) for module in (tf, keras)]))
  tf.get_logger().setLevel('ERROR')


def import_tensorflow(show_start_up: bool = False):
  """Imports TensorFlow and Keras; what their C++ start-up writes to
  stderr (oneDNN and CUDA notes, which TF_CPP_MIN_LOG_LEVEL does not
  silence) is shown only with `show_start_up` or if the import fails."""
  with _captured_stderr(show=show_start_up):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import keras  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()  # Probes CUDA (and says so) now.
  return tf, keras


class _captured_stderr:  # pylint: disable=invalid-name
  """Redirects file descriptor 2 into a temporary file; replays it if the
  block raises (or always, with `show`)."""

  def __init__(self, show: bool):
    self.show = show

  def __enter__(self):
    sys.stderr.flush()
    self.saved = os.dup(2)
    self.file = tempfile.TemporaryFile()
    os.dup2(self.file.fileno(), 2)

  def __exit__(self, error_type, error, traceback):
    sys.stderr.flush()
    os.dup2(self.saved, 2)
    os.close(self.saved)
    if self.show or error_type is not None:
      self.file.seek(0)
      sys.stderr.write(self.file.read().decode(errors='replace'))
      sys.stderr.flush()
    self.file.close()
    return False
