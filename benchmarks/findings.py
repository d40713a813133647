"""The SimCLR paper's three findings, rerun in CPU time on any dataset.

  python -m benchmarks.findings --study=augmentations    # Figure 5
  python -m benchmarks.findings --study=projection_head  # Figure 8
  python -m benchmarks.findings --study=batch_size       # Figure 9

Each study pretrains several small encoders (ResNet-18 at --width_multiplier,
from the recipe --recipe names in STUDY_RECIPES) on the first
--train_examples images of the training split, then fits the converged
linear probe of docs/evaluation.md on --probe_examples of them and tests it
on the evaluation split. It writes <study>.json and <study>.png
under --output; every finished run is also kept under --model_dir, so that
--resume continues a study that was cut off. The same --seed gives the same
figures on the same machine (TensorFlow's deterministic ops are on).
docs/findings.md has the protocol of each study and its results.
"""

import dataclasses
import itertools
import json
import os
import shutil
import textwrap
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from benchmarks import charts
from simclr_tf.config import RunConfig
from simclr_tf.evaluation import evaluators
from simclr_tf.evaluation import features
from simclr_tf.evaluation.knn import feature_bank
from simclr_tf.inputs import augmentation_names
from simclr_tf.inputs import catalog
from simclr_tf.run_context import RunContext
from simclr_tf.settings import checks
from simclr_tf.settings import registry
from simclr_tf.settings import resolver
from simclr_tf.settings import setting_flags
from simclr_tf.storage import records
from simclr_tf.training.train import train

STUDIES = ('augmentations', 'projection_head', 'batch_size')
# What every run of a study starts from: a preset and settings over it.
# 'hour': the fashion_mnist preset as it was when the studies were first
# run (docs/findings.md's results, 125 steps a cell, where SimCLR's
# composition ended barely above random weights): base learning rate 0.075,
# temperature 0.3, crops from 20%, jitter 0.5; 'quickstart': the
# fashion_mnist_quickstart preset's crops, jitter and temperature, which
# learn more per step (docs/recipes.md). Both with views at the image size
# (view_size is a speed setting, not a study variable).
STUDY_RECIPES = {
    'hour': ('fashion_mnist', {'learning_rate': 0.075, 'temperature': 0.3,
                               'min_crop_area': 0.2, 'view_size': 0,
                               'color_jitter_strength': 0.5}),
    'quickstart': ('fashion_mnist_quickstart', {'view_size': 0}),
}

flags.DEFINE_enum('study', None, STUDIES, 'Which finding to rerun.')
flags.DEFINE_enum('recipe', 'hour', list(STUDY_RECIPES), 'The recipe every '
                  'run of the study starts from (STUDY_RECIPES).')
# The settings this benchmark takes, defined as run.py defines them.
setting_flags.define(
    flags.FLAGS,
    ['dataset', 'data_dir', 'model_dir', 'seed',
     'width_multiplier', 'image_size'],
    defaults={'dataset': 'fashion_mnist', 'model_dir': '/tmp/simclr_findings',
              'width_multiplier': 0.25, 'image_size': 24})
flags.DEFINE_string('output', 'benchmarks/results/findings', 'Where '
                    '<study>.json and <study>.png go.')
flags.DEFINE_boolean('resume', False, 'Keep the runs a cut-off study '
                     'finished; run the rest.')
flags.DEFINE_integer('train_examples', 16000, 'Pretraining images: the first '
                     'this many of the training split (0: all of it).')
flags.DEFINE_integer('probe_examples', 10000, 'Labeled training images the '
                     'linear probe (and the kNN bank) fit on.')
flags.DEFINE_integer('batch_size', 256, 'Pretraining batch size '
                     '(augmentations and projection_head).')
flags.DEFINE_float('epochs', None, 'Pretraining epochs of each run '
                   '(augmentations and projection_head; default: 2 and 5).')
flags.DEFINE_list('transformations',
                  ['crop', 'cutout', 'color', 'sobel', 'noise', 'blur',
                   'rotate'],
                  'augmentations: the grid\'s transformations (the paper\'s '
                  'Figure 5); color is colour distortion (--augmentations\' '
                  'color and gray).')
flags.DEFINE_list('batch_sizes', ['128', '256', '512', '1024'],
                  'batch_size: the batch sizes.')
flags.DEFINE_list('batch_size_epochs', ['1', '2', '4'],
                  'batch_size: the epochs, a run each.')
flags.DEFINE_integer('max_chunk', 256, 'batch_size: examples whose '
                     'activations fit at once; larger batches go through '
                     'gradient caching (--contrastive_chunk_size) in chunks '
                     'of this many.')
flags.DEFINE_boolean('replot', False, 'Only redraw <study>.png from '
                     '<study>.json.')
flags.DEFINE_enum('precision', 'auto', ['auto', 'float32', 'bfloat16'],
                  'run.py\'s --mixed_precision.')
FLAGS = flags.FLAGS

# A transformation of the grid, as --augmentations names it.
GRID_AUGMENTATIONS = {'color': 'color,gray'}
DEFAULT_EPOCHS = {'augmentations': 2, 'projection_head': 5}
HEADS = {  # name: (proj_head_mode, num_proj_layers)
    'none': ('none', 1),
    'linear': ('linear', 1),
    'nonlinear, 2 layers': ('nonlinear', 2),
    'nonlinear, 3 layers': ('nonlinear', 3),
}


@dataclasses.dataclass(frozen=True)
class Study:
  """What every run of a study shares (from the flags, read once)."""

  name: str
  dataset: str
  data_dir: str
  model_dir: str
  seed: int
  train_examples: int
  probe_examples: int
  width_multiplier: float
  image_size: int
  precision: str
  recipe: str = 'hour'  # A key of STUDY_RECIPES.

  def config(self, run_name: str, **settings) -> RunConfig:
    """A run's configuration: the study's recipe (STUDY_RECIPES) on this
    study's data, with `settings` over it."""
    preset, recipe = STUDY_RECIPES[self.recipe]
    split = (f'train[:{self.train_examples}]' if self.train_examples
             else 'train')
    epochs = settings.pop('train_epochs')
    given = {
        'dataset': self.dataset, 'data_dir': self.data_dir,
        'train_split': split, 'seed': self.seed,
        'model_dir': os.path.join(self.model_dir, self.name, run_name),
        'width_multiplier': self.width_multiplier, 'train_epochs': epochs,
        'image_size': self.image_size or None,
        'warmup_epochs': epochs / 10, 'checkpoint_epochs': epochs,
        'keep_checkpoint_max': 1, 'log_every_seconds': 30,
        'lineareval_while_pretraining': False, 'jit_compile': False,
        'knn_train_examples': self.probe_examples,
        'probe_train_examples': self.probe_examples,
        **recipe, **settings}
    return resolver.resolve(given, preset=preset,
                            mixed_precision=self.precision)


def probe(run: RunContext, model, outputs=('final_avg_pool',)) -> dict:
  """Linear probe (and kNN) accuracy of each of `outputs`, on the study's
  probe subset and the whole evaluation split."""
  subset = run.train_subset(run.config.eval.probe_train_examples)
  train_data = run.eval_data(run.config.data.train_split, subset.indices)
  test_data = run.eval_data(run.eval_split)
  results = {}
  for output in outputs:
    train_x, train_y = features.extract_features(model, run.strategy,
                                                 train_data, output=output)
    test_x, test_y = features.extract_features(model, run.strategy,
                                               test_data, output=output)
    metrics = evaluators.probe_metrics(run, train_x, train_y, test_x, test_y)
    metrics.update(evaluators.knn_metrics(
        run, feature_bank(train_x.astype(np.float16)), train_y,
        test_x, test_y))
    results[output] = {
        'linear_probe': round(100 * metrics['linear_probe_top_1_accuracy'],
                              2),
        'knn': round(100 * metrics['knn_top_1_accuracy'], 2)}
  return results


def pretrain_and_probe(config: RunConfig, source, outputs=('final_avg_pool',),
                       resume: bool = False) -> dict:
  """Trains one run (or reads its result when `resume` finds it) and probes
  it; the result is kept beside its checkpoint."""
  directory = config.train.model_dir
  result_path = os.path.join(directory, 'result.json')
  if resume and os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  if os.path.exists(directory):
    shutil.rmtree(directory)
  # The initial weights, as run.py seeds them.
  keras.utils.set_random_seed(config.data.seed)
  started = time.monotonic()
  run = RunContext(config, tf.distribute.get_strategy(), source)
  trained = train(run)
  seconds = time.monotonic() - started
  result = {'train_seconds': round(seconds, 1), **probe(run, trained.model,
                                                        outputs)}
  records.write_json(result_path, result)
  logging.info('%s: %s', directory, result)
  return result


def random_weights(study: Study, source) -> dict:
  """The floor: the same encoder at standard initialisation, untrained."""
  config = study.config('random_weights', train_epochs=1)
  run = RunContext(config, tf.distribute.get_strategy(), source)
  return probe(run, evaluators.standard_init_model(config))


# --- The studies ---------------------------------------------------------------


def augmentations(study: Study, source, epochs: float) -> dict:
  """The paper's Figure 5: every transformation alone (the diagonal) and
  every pair, in one view; the other view is the image itself."""
  names = FLAGS.transformations
  for name in names:
    composition = GRID_AUGMENTATIONS.get(name, name)
    # Fails on an unknown name before any training.
    checks.check_augmentations('transformations', composition)
  cells = {}
  for first, second in itertools.combinations_with_replacement(names, 2):
    composition = ','.join(GRID_AUGMENTATIONS.get(n, n)
                           for n in dict.fromkeys([first, second]))
    config = study.config(
        f'{first}+{second}', train_epochs=epochs,
        train_batch_size=FLAGS.batch_size, augmentations=composition,
        second_view_augmentations=augmentation_names.NO_AUGMENTATION)
    result = pretrain_and_probe(config, source, resume=FLAGS.resume)
    cells[f'{first}+{second}'] = {'augmentations': composition, **result}
  simclr = pretrain_and_probe(
      study.config('simclr_default', train_epochs=epochs,
                   train_batch_size=FLAGS.batch_size),
      source, resume=FLAGS.resume)
  return {'transformations': names, 'cells': cells,
          'simclr_default': simclr}


def projection_head(study: Study, source, epochs: float) -> dict:
  """The paper's Figure 8: no head, a linear one, nonlinear ones; the
  probe reads h (before the head) and g(h) (after it)."""
  heads = {}
  for name, (mode, layers) in HEADS.items():
    config = study.config(
        name.replace(', ', '_').replace(' ', '_'), train_epochs=epochs,
        train_batch_size=FLAGS.batch_size, proj_head_mode=mode,
        num_proj_layers=layers)
    outputs = ('final_avg_pool',) if mode == 'none' else (
        'final_avg_pool', 'proj_head_output')
    heads[name] = pretrain_and_probe(config, source, outputs,
                                     resume=FLAGS.resume)
  return {'heads': heads}


def batch_size(study: Study, source) -> dict:
  """The paper's Figure 9: a run per batch size and number of epochs."""
  runs = {}
  for size, epochs in itertools.product(FLAGS.batch_sizes,
                                        FLAGS.batch_size_epochs):
    size, epochs = int(size), float(epochs)
    chunk = FLAGS.max_chunk if size > FLAGS.max_chunk else 0
    config = study.config(f'b{size}_e{epochs:g}', train_epochs=epochs,
                          train_batch_size=size, contrastive_chunk_size=chunk)
    result = pretrain_and_probe(config, source, resume=FLAGS.resume)
    runs[f'{size}x{epochs:g}'] = {'batch_size': size, 'epochs': epochs,
                                  'gradient_caching_chunk': chunk,
                                  'steps': config_steps(config, study),
                                  **result}
  return {'runs': runs}


def config_steps(config: RunConfig, study: Study) -> int:
  return int(config.train.train_epochs * study.train_examples //
             config.train.train_batch_size)


# --- Charts --------------------------------------------------------------------


def heat_map(result: dict) -> np.ndarray:
  """Probe accuracy [first, second]: the diagonal one transformation, the
  rest pairs (a view applies a pair in one order whatever the order named,
  so the grid is symmetric)."""
  names = result['transformations']
  grid = np.full((len(names), len(names)), np.nan)
  for i, j in itertools.product(range(len(names)), repeat=2):
    a, b = sorted((i, j))
    grid[i, j] = result['cells'][f'{names[a]}+{names[b]}'][
        'final_avg_pool']['linear_probe']
  return grid


def plot_augmentations(result: dict, path: str, title: str):
  plt = charts.pyplot()
  names = result['transformations']
  grid = heat_map(result)
  fig, ax = plt.subplots(figsize=(6.2, 5.2))
  image = ax.imshow(grid, cmap='viridis')
  for i, j in itertools.product(range(len(names)), repeat=2):
    ax.text(j, i, f'{grid[i, j]:.1f}', ha='center', va='center', fontsize=7,
            color='white' if grid[i, j] < np.nanmean(grid) else 'black')
  ax.set_xticks(range(len(names)), names, rotation=45, ha='right')
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel('2nd transformation')
  ax.set_ylabel('1st transformation')
  ax.set_title(
      'SimCLR composition on both views: '
      f'{result["simclr_default"]["final_avg_pool"]["linear_probe"]:.1f}; '
      'random weights: '
      f'{result["random_weights"]["final_avg_pool"]["linear_probe"]:.1f}',
      fontsize=8)
  fig.colorbar(image, ax=ax, label='linear probe accuracy (%)')
  charts.save(fig, *os.path.split(path), title=title)


def plot_projection_head(result: dict, path: str, title: str):
  plt = charts.pyplot()
  # The JSON keeps keys sorted; the chart goes from no head to the deepest.
  names = [n for n in HEADS if n in result['heads']]
  fig, ax = plt.subplots(figsize=(7, 3.8))
  x = np.arange(len(names))
  for offset, (output, label) in zip(
      (-0.2, 0.2), (('final_avg_pool', 'h (before the head)'),
                    ('proj_head_output', 'g(h) (after it)'))):
    values = [result['heads'][n].get(output, {}).get('linear_probe', np.nan)
              for n in names]
    bars = ax.bar(x + offset, values, 0.4, label=label)
    ax.bar_label(bars, fmt='%.1f', fontsize=7)
  ax.axhline(result['random_weights']['final_avg_pool']['linear_probe'],
             color='gray', linestyle='--', linewidth=1,
             label='random weights')
  ax.set_xticks(x, names)
  ax.set_ylabel('linear probe accuracy (%)')
  low = min(v['final_avg_pool']['linear_probe'] for v in
            result['heads'].values())
  ax.set_ylim(low - 8, None)
  ax.legend(fontsize=8, loc='upper left')
  charts.save(fig, *os.path.split(path), title=title)


def plot_batch_size(result: dict, path: str, title: str):
  plt = charts.pyplot()
  runs = list(result['runs'].values())
  sizes = sorted({r['batch_size'] for r in runs})
  epochs = sorted({r['epochs'] for r in runs})
  fig, ax = plt.subplots(figsize=(6.2, 3.6))
  width = 0.8 / len(sizes)
  for k, size in enumerate(sizes):
    values = [next(r['final_avg_pool']['linear_probe'] for r in runs
                   if r['batch_size'] == size and r['epochs'] == e)
              for e in epochs]
    label = f'batch {size}' + (' (gradient caching)' if any(
        r['gradient_caching_chunk'] for r in runs
        if r['batch_size'] == size) else '')
    ax.bar(np.arange(len(epochs)) + (k - (len(sizes) - 1) / 2) * width,
           values, width, label=label)
  ax.axhline(result['random_weights']['final_avg_pool']['linear_probe'],
             color='gray', linestyle='--', linewidth=1,
             label='random weights')
  ax.set_xticks(range(len(epochs)), [f'{e:g}' for e in epochs])
  ax.set_xlabel('training epochs')
  ax.set_ylabel('linear probe accuracy (%)')
  low = min(r['final_avg_pool']['linear_probe'] for r in runs)
  ax.set_ylim(low - 3, None)
  ax.legend(fontsize=7, ncol=2)
  charts.save(fig, *os.path.split(path), title=title)


PLOTS = {'augmentations': plot_augmentations,
         'projection_head': plot_projection_head,
         'batch_size': plot_batch_size}


def plot(result: dict, directory: str):
  PLOTS[result['study']](result,
                         os.path.join(directory, f'{result["study"]}.png'),
                         textwrap.fill(result['title'], 100))


def main(_):
  if FLAGS.replot:
    with open(os.path.join(FLAGS.output, f'{FLAGS.study}.json')) as f:
      plot(json.load(f), FLAGS.output)
    return
  tf.config.experimental.enable_op_determinism()
  study = Study(name=FLAGS.study, dataset=FLAGS.dataset,
                data_dir=FLAGS.data_dir, model_dir=FLAGS.model_dir,
                seed=FLAGS.seed, train_examples=FLAGS.train_examples,
                probe_examples=FLAGS.probe_examples,
                width_multiplier=FLAGS.width_multiplier,
                image_size=FLAGS.image_size, precision=FLAGS.precision,
                recipe=FLAGS.recipe)
  epochs = FLAGS.epochs or DEFAULT_EPOCHS.get(study.name)
  base = study.config('random_weights', train_epochs=epochs or 1)
  source = catalog.make_source(base.data)
  started = time.monotonic()
  if study.name == 'augmentations':
    result = augmentations(study, source, epochs)
  elif study.name == 'projection_head':
    result = projection_head(study, source, epochs)
  else:
    result = batch_size(study, source)
  result['random_weights'] = random_weights(study, source)
  minutes = (time.monotonic() - started) / 60
  examples = study.train_examples or source.num_examples('train')
  title = (f'{study.name}: ResNet-18 x{study.width_multiplier:g}, '
           f'{base.model.precision}, {examples} {study.dataset} images at '
           f'{base.augment.image_size} px'
           + (f', {epochs:g} epochs' if study.name != 'batch_size' else '')
           + f', seed {study.seed} ({minutes:.0f} min on this machine)')
  result.update(
      study=study.name, title=title, minutes=round(minutes, 1),
      settings={**dataclasses.asdict(study), 'epochs': epochs,
                'batch_size': FLAGS.batch_size,
                'recipe': registry.flatten(base)},
      date=time.strftime('%Y-%m-%d'))
  os.makedirs(FLAGS.output, exist_ok=True)
  records.write_json(os.path.join(FLAGS.output, f'{study.name}.json'), result)
  plot(result, FLAGS.output)
  print(title)


if __name__ == '__main__':
  flags.mark_flag_as_required('study')
  app.run(main)
