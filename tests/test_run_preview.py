"""`run.py --mode=preview` end to end, and its one-line errors."""

import numpy as np
from PIL import Image

from tests import helpers
from tests.helpers import run


def test_preview_writes_a_grid_of_originals_and_view_pairs(tmp_path, rng):
  root = helpers.make_class_folder(str(tmp_path / 'imgs'), rng,
                                   size=(40, 50))
  out = tmp_path / 'views.png'
  result = run('--mode=preview', f'--dataset=folder:{root}',
               '--image_size=24', '--preview_images=3', '--preview_pairs=2',
               f'--preview_path={out}')
  assert result.returncode == 0, result.stderr
  grid = np.asarray(Image.open(out))
  # Tiles are enlarged x4 to 96 px; columns: original, 2 pairs; 4 px gaps.
  tile, gap = 96, 4
  assert grid.shape == (3 * tile + 2 * gap, 5 * tile + 8 * gap, 3)
  first_row = grid[:tile]
  originals = first_row[:, :tile]
  first_view = first_row[:, tile + 2 * gap:2 * tile + 2 * gap]
  assert not np.array_equal(originals, first_view)


def test_bad_dataset_fails_with_one_line_and_exit_code_2(tmp_path):
  result = run('--mode=preview', f'--dataset=folder:{tmp_path}/nothing')
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines()
           if line.startswith('run.py')]
  assert lines == [f'run.py: error: --dataset=folder:{tmp_path}/nothing: '
                   'no such directory.']
  assert 'Traceback' not in result.stderr


def test_in_process_runs_do_what_a_process_does(tmp_path, rng):
  """helpers.run, which most tests use, against run.py in a process of its
  own: the same picture (seeded views) and output; the same exit code and
  error line for bad input."""
  root = helpers.make_class_folder(str(tmp_path / 'imgs'), rng, size=(24, 24))
  results = {}
  for name, runner in (('inside', run), ('outside', helpers.run_process)):
    good = runner('--mode=preview', f'--dataset=folder:{root}',
                  '--image_size=24', '--preview_images=2', '--preview_pairs=1',
                  f'--preview_path={tmp_path / name}.png')
    bad = runner('--mode=preview', f'--dataset=folder:{root}',
                 '--preview_images=0')
    results[name] = (good.returncode, good.stdout.replace(name, ''),
                     (tmp_path / f'{name}.png').read_bytes(), bad.returncode,
                     [l for l in bad.stderr.splitlines()
                      if l.startswith('run.py')])
  assert results['inside'] == results['outside']
  assert results['inside'][0] == 0 and results['inside'][3] == 2
  assert results['inside'][4] == ['run.py: error: --preview_images=0 must be '
                                  '> 0.']
