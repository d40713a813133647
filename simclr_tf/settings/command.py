"""One invocation of run.py: the mode, the settings given explicitly, and the
choices that are not settings of the model or its training (devices,
evaluation watching, preview and embedding outputs)."""

from collections.abc import Mapping
import dataclasses
from typing import Any

from simclr_tf.settings import checks

MODES = ('train', 'eval', 'train_then_eval', 'export', 'preview', 'embed',
         'import')


@dataclasses.dataclass(frozen=True)
class Command:
  """What run.py was asked to do."""

  mode: str
  # {setting: value} of the flags given explicitly (config.SETTINGS names).
  given: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  preset: str | None = None
  # Devices.
  mixed_precision: str = 'auto'
  cpu_replicas: int = 1
  use_tpu: bool = False
  tpu_name: str | None = None
  deterministic: bool = False
  # --mode=eval.
  eval_watch: bool = False
  eval_timeout: float = 0
  # --mode=preview.
  preview_path: str = 'views.png'
  preview_images: int = 6
  preview_pairs: int = 3
  # --mode=embed.
  saved_model: str | None = None
  output: str = 'embeddings.npz'
  neighbors: int = 0
  projector_dir: str | None = None
  retrievals: str | None = None
  retrieval_queries: int = 8
  retrieval_neighbors: int = 8
  # Every flag's value, which flags.json records.
  flag_values: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def check(self):
    """Fails before any work on values that cannot work."""
    checks.check(self.mode in MODES,
                 f'--mode={self.mode} is not one of {", ".join(MODES)}.')
    for name in ('cpu_replicas', 'preview_images', 'preview_pairs',
                 'retrieval_queries', 'retrieval_neighbors'):
      value = getattr(self, name)
      checks.check(value > 0, f'--{name}={value} must be > 0.')
    checks.check(self.neighbors >= 0, '--neighbors must be >= 0.')
