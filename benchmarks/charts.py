"""The chart code the benchmarks share: matplotlib drawing to files, and
how a chart is titled and saved."""

import os


def pyplot():
  """matplotlib's pyplot, drawing to files only (no display needed)."""
  # pylint: disable=g-import-not-at-top
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  return plt


def save(fig, directory: str, name: str, title: str | None = None):
  """Writes `fig` to directory/name at the benchmarks' resolution."""
  if title:
    fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(directory, name), dpi=120)
  pyplot().close(fig)
