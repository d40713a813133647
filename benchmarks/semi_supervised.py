"""The paper's second headline on Fashion-MNIST: fine-tuning on 1% and 10%
of the labels, from the SimCLR encoder and from random weights.

  python -m benchmarks.semi_supervised --encoder=/tmp/simclr_fashion_mnist/pretrain

`--encoder` is the pretraining run of benchmarks/fashion_mnist.py (its
latest checkpoint is used). The protocol:

* Labeled subsets are class-balanced and seeded (`--label_fraction`, as
  run.py draws them), taken from the first 50,000 training images: 600 images
  (1% of Fashion-MNIST's 60,000) and 6,000 (10%). The last 10,000 training
  images are the validation set on which each method's learning rate and
  weight decay are chosen (subset seed 0); the test set only reports.
* (a) SimCLR: fine-tuned as the SimCLR code fine-tunes: the whole network,
  the new head on the first projection layer (`--ft_proj_selector=1`) and
  zero-initialised, momentum SGD, crop + flip only. (b) The same network from
  random weights with the same steps, batch and augmentation, its own
  learning rate (from its own grid) and weight decay chosen the same way.
  (c) Ceiling: the same network trained from random weights on all 60,000
  labels. For reference, also the frozen SimCLR encoder with the linear
  probe fitted on the subset only.
* `--crop_search` instead tries crop lower bounds on 1% (subset 0) for both
  methods; `--min_crop_area` / `--random_min_crop_area` then set them.
* 1% is repeated for `--seeds` (other subsets, augmentation orders and head
  initialisations) and reported as mean and spread.

Writes result.json and semi_supervised.png (or crop_search.json) to
--output.
"""

import dataclasses
import itertools
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import keras
import tensorflow as tf

from benchmarks import charts
from benchmarks import fine_tuning
from simclr_tf import modes
from simclr_tf.config import DataConfig, RunConfig
from simclr_tf.evaluation import evaluators
from simclr_tf.evaluation import features
from simclr_tf.inputs import catalog
from simclr_tf.run_context import RunContext
from simclr_tf.settings import setting_flags
from simclr_tf.storage import checkpoints
from simclr_tf.storage import records
from simclr_tf.training.train import train

flags.DEFINE_string('encoder', '/tmp/simclr_fashion_mnist/pretrain',
                    'The pretraining run (directory or checkpoint prefix).')
flags.DEFINE_string('output', 'benchmarks/results/semi_supervised',
                    'Directory for result.json and the chart.')
# The settings this benchmark takes, defined as run.py defines them.
setting_flags.define(
    flags.FLAGS, ['model_dir', 'data_dir', 'min_crop_area'],
    defaults={'model_dir': '/tmp/simclr_semi_supervised'})
flags.DEFINE_list('simclr_learning_rates', ['0.001', '0.003', '0.01'],
                  'Base learning rates (times sqrt(batch size)) tried when '
                  'fine-tuning the SimCLR encoder.')
flags.DEFINE_list('random_learning_rates', ['0.01', '0.03', '0.1'],
                  'Base learning rates tried from random weights (a '
                  'pretrained network wants smaller steps).')
flags.DEFINE_list('weight_decays', ['0', '0.0005'], 'Grid of weight decays '
                  '(searched at 1%; 10% uses each method\'s choice at 1%).')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Subset seeds of the 1% runs.')
flags.DEFINE_integer('epochs_1pct', 40, 'Fine-tuning epochs on 1%.')
flags.DEFINE_integer('epochs_10pct', 20, 'Fine-tuning epochs on 10% (0 '
                     'skips 10%).')
flags.DEFINE_integer('batch_1pct', 64, 'Batch size on 1%.')
flags.DEFINE_integer('batch_10pct', 256, 'Batch size on 10%.')
flags.DEFINE_integer('ceiling_epochs', 5, 'Epochs of the all-labels '
                     'ceiling (0 skips it).')
flags.DEFINE_float('random_min_crop_area', None, 'The same for the runs from '
                   'random weights (default: --min_crop_area).')
flags.DEFINE_list('crop_search', [], 'Only try these crop lower bounds on '
                  '1% (seed 0, each method\'s first learning rate and first '
                  'weight decay); writes crop_search.json.')
FLAGS = flags.FLAGS

NUM_TRAIN = fine_tuning.NUM_TRAIN
VALIDATION = fine_tuning.VALIDATION
METHODS = ('SimCLR', 'random weights')


@dataclasses.dataclass(frozen=True)
class Setting:
  """One fine-tuning run's varying part."""
  method: str  # One of METHODS.
  labels: int  # Labeled images: 600, 6000 or 60000.
  seed: int
  learning_rate: float
  weight_decay: float
  # The crop area lower bound (--min_crop_area, --random_min_crop_area).
  min_crop_area: float

  @property
  def name(self):
    return (f'{self.method.replace(" ", "_")}-{self.labels}-s{self.seed}-'
            f'lr{self.learning_rate:g}-wd{self.weight_decay:g}-'
            f'crop{self.min_crop_area:g}')


def min_crop_area(method: str) -> float:
  """The crop lower bound of `method`'s runs, as the flags ask."""
  if method == 'random weights' and FLAGS.random_min_crop_area is not None:
    return FLAGS.random_min_crop_area
  return FLAGS.min_crop_area


def make_setting(method: str, labels: int, seed: int, learning_rate: float,
                 weight_decay: float, crop: float | None = None) -> Setting:
  return Setting(method, labels, seed, learning_rate, weight_decay,
                 min_crop_area(method) if crop is None else crop)


def fine_tuning_config(setting: Setting, model_dir: str, *, epochs: int,
                       batch_size: int, encoder: str | None) -> RunConfig:
  """The fashion_mnist preset with --encoder's architecture (whatever the
  preset says), fine-tuned the SimCLR code's way."""
  return fine_tuning.config(
      {**fine_tuning.recorded_architecture(FLAGS.encoder),
       **fine_tuning.subset_settings(setting.labels, setting.seed),
       'checkpoint': encoder},
      model_dir=model_dir, data_dir=FLAGS.data_dir, epochs=epochs,
      batch_size=batch_size, learning_rate=setting.learning_rate,
      weight_decay=setting.weight_decay, min_crop_area=setting.min_crop_area)


def fine_tune(setting: Setting, source, encoder: str, *, epochs: int,
              batch_size: int) -> dict:
  """Trains one setting; its validation and test top-1."""
  model_dir = os.path.join(FLAGS.model_dir, setting.name)
  if tf.io.gfile.exists(model_dir):
    tf.io.gfile.rmtree(model_dir)
  config = fine_tuning_config(
      setting, model_dir, epochs=epochs, batch_size=batch_size,
      encoder=encoder if setting.method == 'SimCLR' else None)
  strategy = tf.distribute.get_strategy()
  # Seeded as run.py seeds: the initialisation of the head and, from random
  # weights, of the encoder.
  keras.utils.set_random_seed(setting.seed)
  started = time.monotonic()
  run = RunContext(config, strategy, source)
  trained = train(run)
  seconds = time.monotonic() - started
  labeled = run.labeled_indices
  result = {
      **dataclasses.asdict(setting), 'epochs': epochs,
      'min_crop_area': config.augment.min_crop_area,
      'batch_size': batch_size, 'steps': trained.global_step,
      'train_labels': NUM_TRAIN if labeled is None else len(labeled),
      'train_seconds': seconds,
      'validation_top_1': features.label_accuracy(
          trained.model, strategy,
          run.eval_data(VALIDATION))['label_top_1_accuracy'],
      'test_top_1': features.label_accuracy(
          trained.model, strategy,
          run.eval_data('test'))['label_top_1_accuracy']}
  logging.info('%s: %s', setting.name, result)
  tf.io.gfile.rmtree(model_dir)
  return result


def best(results: list[dict], method: str, labels: int) -> dict:
  """The run of `method` with the best validation accuracy (seed 0)."""
  candidates = [r for r in results if r['method'] == method
                and r['labels'] == labels and r['seed'] == 0]
  return max(candidates, key=lambda r: r['validation_top_1'])


def probe_config(labels: int, seed: int) -> RunConfig:
  """The configuration of a frozen probe on the subset (`labels`, `seed`):
  nothing trains, so its optimizer settings are any valid ones."""
  return fine_tuning_config(make_setting('SimCLR', labels, seed, 0.1, 0.0),
                            '/tmp/unused', epochs=1, batch_size=64,
                            encoder=None)


def frozen_probe(source, encoder: str, labels: int, seed: int) -> dict:
  """The frozen SimCLR encoder, linear probe fitted on the subset only."""
  config = probe_config(labels, seed)
  # The encoder's own architecture: pretrained, without a head.
  pretrain_config = dataclasses.replace(config, model=dataclasses.replace(
      config.model, train_mode='pretrain',
      supervised_head=dataclasses.replace(config.model.supervised_head,
                                          num_classes=None)))
  strategy = tf.distribute.get_strategy()
  model, _ = modes.restored_model(
      RunContext(pretrain_config, strategy, source), encoder)
  metrics = evaluators.feature_metrics(RunContext(config, strategy,
                                                  source),
                                       model, knn=True, probe=True)
  return {'labels': labels, 'seed': seed, **metrics}


def plot(table: dict, title: str, directory: str, ceiling: dict | None):
  plt = charts.pyplot()
  # Fine-tuned rows first (result.json stores them sorted by name).
  rows = sorted(table, key=lambda row: ('frozen' in row, 'random' in row))
  columns = list(table[rows[0]])
  fig, ax = plt.subplots(figsize=(7, 4))
  width = 0.8 / len(rows)
  for i, row in enumerate(rows):
    cells = [table[row].get(col) for col in columns]
    means = [100 * cell['mean'] if cell else 0 for cell in cells]
    spreads = [100 * cell['std'] if cell else 0 for cell in cells]
    positions = [j + (i - (len(rows) - 1) / 2) * width
                 for j in range(len(columns))]
    bars = ax.bar(positions, means, width, yerr=spreads, capsize=3,
                  label=row)
    ax.bar_label(bars, fmt='%.1f', fontsize=7, padding=2)
  if ceiling:
    ax.axhline(100 * ceiling['test_top_1'], ls='--', color='gray',
               label=f'random weights, all labels, {ceiling["epochs"]} epochs')
  ax.set_xticks(range(len(columns)), columns)
  ax.set_ylim(50, 100)
  ax.set_ylabel('Fashion-MNIST test top-1 (%)')
  ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.1),
            ncol=2)
  ax.grid(axis='y', alpha=0.3)
  charts.save(fig, directory, 'semi_supervised.png', title)


def main(_):
  tf.io.gfile.makedirs(FLAGS.output)
  try:
    encoder = checkpoints.locate(FLAGS.encoder)  # The latest checkpoint.
  except checkpoints.CheckpointError as e:
    raise app.UsageError(f'{e} Run benchmarks/fashion_mnist.py first.')
  source = catalog.make_source(DataConfig(dataset='fashion_mnist',
                                          data_dir=FLAGS.data_dir))
  learning_rates = {
      'SimCLR': [float(v) for v in FLAGS.simclr_learning_rates],
      'random weights': [float(v) for v in FLAGS.random_learning_rates]}
  weight_decays = [float(v) for v in FLAGS.weight_decays]
  seeds = [int(v) for v in FLAGS.seeds]
  budgets = {600: (FLAGS.epochs_1pct, FLAGS.batch_1pct)}
  if FLAGS.epochs_10pct > 0:
    budgets[6000] = (FLAGS.epochs_10pct, FLAGS.batch_10pct)
  columns = [(labels, f'{labels // 600}% labels') for labels in budgets]
  runs = []

  def run(chosen_setting):
    epochs, batch_size = budgets.get(chosen_setting.labels,
                                     (FLAGS.ceiling_epochs, 256))
    runs.append(fine_tune(chosen_setting, source, encoder, epochs=epochs,
                          batch_size=batch_size))
    records.write_json(os.path.join(FLAGS.model_dir, 'runs.json'), runs)

  if FLAGS.crop_search:
    for crop in FLAGS.crop_search:
      for method in METHODS:
        run(make_setting(method, 600, 0, learning_rates[method][0],
                         weight_decays[0], crop=float(crop)))
    records.write_json(os.path.join(FLAGS.output, 'crop_search.json'), runs)
    return

  chosen = {}
  for method in METHODS:
    # The grid on 1% (seed 0), then the learning rates on 10% with the
    # weight decay 1% chose, then the other 1% seeds with 1%'s choice.
    for lr, wd in itertools.product(learning_rates[method],
                                    weight_decays):
      run(make_setting(method, 600, 0, lr, wd))
    chosen[method, 600] = best(runs, method, 600)
    if 6000 in budgets:
      for lr in learning_rates[method]:
        run(make_setting(method, 6000, 0, lr,
                         chosen[method, 600]['weight_decay']))
      chosen[method, 6000] = best(runs, method, 6000)
    pick = chosen[method, 600]
    for seed in seeds[1:]:
      run(make_setting(method, 600, seed, pick['learning_rate'],
                       pick['weight_decay']))

  table = {}
  for method in METHODS:
    row = {}
    for labels, column in columns:
      pick = chosen[method, labels]
      matching = [r for r in runs if r['method'] == method
                  and r['labels'] == labels
                  and r['learning_rate'] == pick['learning_rate']
                  and r['weight_decay'] == pick['weight_decay']]
      row[column] = fine_tuning.summary([r['test_top_1'] for r in matching])
      row[column].update(learning_rate=pick['learning_rate'],
                         weight_decay=pick['weight_decay'],
                         min_crop_area=pick['min_crop_area'])
    table[f'{method}, fine-tuned'] = row
  probes = {labels: [frozen_probe(source, encoder, labels, seed)
                     for seed in (seeds if labels == 600 else seeds[:1])]
            for labels in budgets}
  table['SimCLR frozen, linear probe on the subset'] = {
      column: fine_tuning.summary([p['linear_probe_top_1_accuracy']
                       for p in probes[labels]])
      for labels, column in columns}
  architecture = probe_config(600, 0).model
  ceiling = None
  if FLAGS.ceiling_epochs > 0:
    pick = chosen['random weights', max(budgets)]
    run(make_setting('random weights', NUM_TRAIN, 0, pick['learning_rate'],
                     pick['weight_decay']))
    ceiling = runs[-1]
  result = {
      'title': (f'ResNet-{architecture.encoder.resnet_depth} '
                f'x{architecture.encoder.width_multiplier} on Fashion-MNIST, '
                'fine-tuned on 1% / 10% of the labels (test top-1, mean ± '
                'std over subsets)'),
      'encoder': encoder,
      'min_crop_area': {method: min_crop_area(method) for method in METHODS},
      'table': table, 'ceiling': ceiling, 'frozen_probes': probes,
      'runs': runs, 'date': time.strftime('%Y-%m-%d'),
      'budgets': {'1%': {'epochs': FLAGS.epochs_1pct,
                         'batch_size': FLAGS.batch_1pct},
                  '10%': {'epochs': FLAGS.epochs_10pct,
                          'batch_size': FLAGS.batch_10pct},
                  'ceiling': {'epochs': FLAGS.ceiling_epochs,
                              'batch_size': 256}},
  }
  records.write_json(os.path.join(FLAGS.output, 'result.json'), result)
  plot(table, result['title'], FLAGS.output, ceiling)
  print(json.dumps({'table': table, 'ceiling': ceiling and {
      k: ceiling[k] for k in ('test_top_1', 'epochs')}}, indent=2))


if __name__ == '__main__':
  app.run(main)
