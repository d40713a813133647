"""Numbered export directories (`<base>/<global_step>/`), written atomically.

Everything is written to a hidden temporary directory and renamed, so a
reader (TF Serving watches numeric sub-directories) never sees half an
export, and a failed or killed export leaves every earlier one as it was.
"""

import os
import shutil
from collections.abc import Callable


def write(base: str, step: int, fill: Callable[[str], None]) -> str:
  """Calls `fill(directory)` on a temporary directory, then publishes it as
  `<base>/<step>` (replacing a re-export of the same step); its path."""
  os.makedirs(base, exist_ok=True)
  final = os.path.join(base, str(step))
  for stale in os.listdir(base):  # Left by a process killed mid-export.
    if stale.startswith('.tmp-'):
      shutil.rmtree(os.path.join(base, stale), ignore_errors=True)
  temporary = os.path.join(base, f'.tmp-{step}-{os.getpid()}')
  try:
    os.makedirs(temporary)
    fill(temporary)
    if os.path.exists(final):
      replaced = f'{temporary}-old'
      os.rename(final, replaced)
      os.rename(temporary, final)
      shutil.rmtree(replaced)
    else:
      os.rename(temporary, final)
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
  return final


def keep_newest(base: str, keep: int):
  """Removes all but the `keep` highest-numbered versions."""
  versions = sorted(int(d) for d in os.listdir(base) if d.isdigit())
  for version in versions[:-keep] if keep > 0 else []:
    shutil.rmtree(os.path.join(base, str(version)), ignore_errors=True)
