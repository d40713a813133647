"""What runs write: JSON files (atomically) and TensorBoard scalars."""

import json
import os

import tensorflow as tf

FLAGS_FILE = 'flags.json'


def write_json(path: str, value, **json_options):
  """Writes `value` as JSON to `path` so that readers see the old or the
  new file, never half of one (a temporary file renamed over it)."""
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  temporary = f'{path}.tmp-{os.getpid()}'
  try:
    with open(temporary, 'w') as f:
      json.dump(value, f, indent=2, sort_keys=True, **json_options)
      f.write('\n')
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


class MetricsWriter:
  """TensorBoard event files in `directory`; a no-op when not `enabled`
  (workers other than the chief)."""

  def __init__(self, directory: str, enabled: bool = True):
    self.writer = (tf.summary.create_file_writer(directory) if enabled
                   else tf.summary.create_noop_writer())

  def scalars(self, step: int, values: dict):
    """Every float of `values` (counts, flags and strings are skipped)."""
    with self.writer.as_default(step=step):
      for name, value in values.items():
        if isinstance(value, float):
          tf.summary.scalar(name, value)
    self.writer.flush()

  def images(self, step: int, name: str, images, max_outputs: int = 4):
    with self.writer.as_default(step=step):
      tf.summary.image(name, images, max_outputs=max_outputs)
    self.writer.flush()
