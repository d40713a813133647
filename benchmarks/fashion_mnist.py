"""How good is the representation after a fixed CPU budget? SimCLR on
Fashion-MNIST against the baselines, with a learning curve.

  python -m benchmarks.fashion_mnist --output=benchmarks/results/fashion_mnist

1. Pretrains the recipe below (no labels) in `--precision` for at most
   `--budget_minutes`, keeping a checkpoint every `--checkpoint_epochs` and
   the pretraining time at which each was written (tracing included,
   evaluation excluded).
2. Evaluates every checkpoint's frozen encoder: a linear probe (logistic
   regression solved to convergence, its L2 chosen on held-out training
   images) fitted on all 60k training labels and a kNN classifier, both
   tested on the 10k test images. That is the learning curve.
3. Baselines, probed the same way: raw pixels; the same encoder with random
   weights at standard initialisation (batch-norm gamma = 1), next to two
   other random variants as a check (the zero-gamma training start, and
   gamma = 1 with batch-norm statistics re-estimated on training images);
   and the same encoder trained with labels (cross-entropy, crop+flip) for
   the same wall-clock time as the pretraining (`--supervised_minutes`).

Writes result.json, methods.png (bar chart) and learning_curve.png.
"""

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import keras
import tensorflow as tf

from benchmarks import charts
from simclr_tf import modes
from simclr_tf.config import RunConfig
from simclr_tf.evaluation import evaluators
from simclr_tf.evaluation import features
from simclr_tf.inputs import catalog
from simclr_tf.run_context import RunContext
from simclr_tf.settings import recipes
from simclr_tf.settings import resolver
from simclr_tf.settings import setting_flags
from simclr_tf.storage import checkpoints
from simclr_tf.storage import records
from simclr_tf.training import hooks
from simclr_tf.training import loop
from simclr_tf.training.task import build_model, make_plan
from simclr_tf.training.train import train

flags.DEFINE_string('output', 'benchmarks/results/fashion_mnist',
                    'Directory for result.json and the PNG charts.')
# The settings this benchmark takes, defined as run.py defines them.
setting_flags.define(
    flags.FLAGS,
    ['model_dir', 'data_dir', 'train_epochs', 'checkpoint_epochs',
     'width_multiplier', 'contrastive_chunk_size', 'temperature',
     'num_small_crops', 'small_crop_size', 'small_crop_min_area',
     'small_crop_max_area', 'learning_rate', 'view_size', 'min_crop_area',
     'color_jitter_strength'],
    defaults={'model_dir': '/tmp/simclr_fashion_mnist', 'train_epochs': None,
              'checkpoint_epochs': 6, 'width_multiplier': None,
              'temperature': None, 'learning_rate': None, 'view_size': None,
              'min_crop_area': None, 'color_jitter_strength': None})
flags.DEFINE_boolean('resume', False, 'Keep the pretraining checkpoints '
                     'and continue.')
flags.DEFINE_float('budget_minutes', 60, 'Pretraining time limit; training '
                   'stops at the first checkpoint past it.')
flags.DEFINE_integer('batch_size', None, 'Pretraining batch size (default: '
                     'the preset\'s).')
flags.DEFINE_enum('precision', 'auto', ['auto', 'float32', 'bfloat16'],
                  'Compute precision of every training run; auto: as '
                  'run.py\'s --mixed_precision=auto (bfloat16 on CPUs with '
                  'bfloat16 units).')
flags.DEFINE_boolean('only_supervised', False, 'Run only the supervised '
                     'baseline for --supervised_minutes; writes '
                     'supervised.json and adds it to a result.json '
                     'already in --output.')
flags.DEFINE_boolean('baselines', True, 'Also probe raw pixels and the '
                     'random-weights encoders.')
flags.DEFINE_float('supervised_minutes', None, 'Budget of the supervised '
                   'baseline (default: the pretraining time); 0 skips it.')
FLAGS = flags.FLAGS

NUM_TRAIN = 60000


def recipe(model_dir: str, train_mode: str = 'pretrain', *,
           epochs: float | None) -> RunConfig:
  """The preset `fashion_mnist` (simclr_tf/settings/recipes.py) with this
  script's flags (None: the preset's value); fine-tuning crops as the paper
  does."""
  pretrain = train_mode == 'pretrain'
  if epochs is None:
    epochs = recipes.PRESETS['fashion_mnist']['train_epochs']
  optional = {'train_batch_size': FLAGS.batch_size,
              'width_multiplier': FLAGS.width_multiplier,
              'temperature': FLAGS.temperature,
              'learning_rate': FLAGS.learning_rate,
              'color_jitter_strength': FLAGS.color_jitter_strength}
  given = {
      'data_dir': FLAGS.data_dir, 'model_dir': model_dir,
      'train_mode': train_mode,
      'train_epochs': epochs, 'warmup_epochs': min(2, epochs / 10),
      'checkpoint_epochs': FLAGS.checkpoint_epochs if pretrain else epochs,
      'keep_checkpoint_max': 1000, 'log_every_seconds': 30,
      'lineareval_while_pretraining': False, 'image_size': 28,
      'num_classes': None if pretrain else 10, 'jit_compile': False,
      'contrastive_chunk_size': FLAGS.contrastive_chunk_size if pretrain
                                else 0,
      **{name: value for name, value in optional.items()
         if value is not None}}
  if pretrain:
    given.update(num_small_crops=FLAGS.num_small_crops,
                 small_crop_size=FLAGS.small_crop_size,
                 small_crop_min_area=FLAGS.small_crop_min_area,
                 small_crop_max_area=FLAGS.small_crop_max_area)
    given.update({name: value for name, value in (
        ('view_size', FLAGS.view_size),
        ('min_crop_area', FLAGS.min_crop_area)) if value is not None})
  else:  # The paper's fine-tuning crops, at the image size.
    given.update(min_crop_area=0.08, view_size=0)
  return resolver.resolve(given, preset='fashion_mnist',
                          mixed_precision=FLAGS.precision)


_TIMES_FILE = 'pretrain_seconds.json'


class CheckpointTimes(loop.Hook):
  """Keeps the training time of each checkpoint next to it (so that
  --resume, after a crash in the evaluations, still draws the curve) and
  stops at the first checkpoint after which the next would pass the
  budget."""

  def __init__(self, times_path: str, checkpoint_steps: int,
               budget_seconds: float):
    self.path = times_path
    self.every = checkpoint_steps
    self.budget_seconds = budget_seconds
    self.times = {}
    if tf.io.gfile.exists(times_path):
      with tf.io.gfile.GFile(times_path) as f:
        self.times = {int(k): v for k, v in json.load(f).items()}
    self.started = None

  def begin(self, state):
    self.started = time.monotonic() - max(self.times.values(), default=0.0)

  def next_step(self, step):
    return loop.next_multiple(step, self.every)

  def after_steps(self, state):
    if not state.at(self.every):
      return
    previous = max(self.times.values(), default=0.0)
    self.times[state.step] = time.monotonic() - self.started
    records.write_json(self.path, self.times)
    if not state.at_end and 2 * self.times[state.step] - previous > (
        self.budget_seconds):
      logging.warning('Pretraining budget spent; stopping at step %d.',
                      state.step)
      state.request_stop('budget')


def pretrain(config: RunConfig, source, budget_seconds: float):
  """Trains; returns [(checkpoint path, seconds of training)]."""
  times = CheckpointTimes(
      os.path.join(config.train.model_dir, _TIMES_FILE),
      make_plan(config, NUM_TRAIN).checkpoint_steps, budget_seconds)
  train(RunContext(config, tf.distribute.get_strategy(), source),
        hooks=[times])
  state = tf.train.get_checkpoint_state(config.train.model_dir)
  return [(path, times.times.get(checkpoints.step_of(path)))
          for path in state.all_model_checkpoint_paths]


def probe_and_knn(run: RunContext, model) -> dict:
  """kNN (its k and temperature chosen on training features) and the
  converged linear probe on frozen features."""
  return evaluators.feature_metrics(run, model, knn=True, probe=True)


def recalibrate_batch_norm(run: RunContext, model, batches: int = 60):
  """Re-estimates every batch norm's moving statistics on training images
  (momentum 0.9: 60 batches leave 0.2% of the initial values)."""
  data = run.eval_data('train')
  dataset = data.distributed(run.strategy)

  @tf.function
  def update(batch):
    run.strategy.run(lambda b: model(b['image'], training=True),
                     args=(batch,))

  for _, batch in zip(range(batches), dataset):
    update(batch)
  return model


def random_baselines(run: RunContext, config: RunConfig) -> dict:
  """Random-weights encoders probed like SimCLR's: the standard one and two
  variants that show it is the strongest obvious choice."""
  standard = evaluators.standard_init_model(config)
  variants = {'standard': probe_and_knn(run, standard)}
  variants['standard, batch-norm statistics re-estimated'] = probe_and_knn(
      run, recalibrate_batch_norm(run, evaluators.standard_init_model(config)))
  keras.utils.set_random_seed(config.data.seed)
  variants['zero gamma (the training start)'] = probe_and_knn(
      run, build_model(config))
  return variants


def supervised_epochs(minutes: float, seconds: float,
                      timer: hooks.StepTimesHook, steps_per_epoch: int) -> int:
  """The epochs that fill `minutes`, from a timed run of one epoch that
  took `seconds` in all: its fixed cost (start-up, tracing, evaluation)
  once, then epochs at the steady rate `timer` saw after two calls."""
  steps_per_second = timer.images_per_second(batch_size=1, skip_calls=2)
  per_epoch = steps_per_epoch / steps_per_second
  fixed = max(0.0, seconds - per_epoch)
  return max(1, int((minutes * 60 - fixed) / per_epoch))


def supervised_baseline(source, model_dir: str, minutes: float) -> dict:
  """The same encoder trained with labels for about `minutes`."""
  # Supervised steps run ~2x faster per image than pretraining steps (one
  # view, no contrastive loss); time one epoch to pick the epochs.
  if tf.io.gfile.exists(model_dir):
    tf.io.gfile.rmtree(model_dir)
  config = recipe(model_dir, 'finetune', epochs=1)
  timer = hooks.StepTimesHook()
  started = time.monotonic()
  train(RunContext(config, tf.distribute.get_strategy(), source),
        hooks=[timer])
  epochs = supervised_epochs(minutes, time.monotonic() - started, timer,
                             make_plan(config, NUM_TRAIN).total_steps)
  logging.info('Supervised baseline: %d epochs in about %.1f minutes.',
               epochs, minutes)
  tf.io.gfile.rmtree(model_dir)
  config = recipe(model_dir, 'finetune', epochs=epochs)
  started = time.monotonic()
  run = RunContext(config, tf.distribute.get_strategy(), source)
  result = train(run)
  seconds = time.monotonic() - started
  metrics = probe_and_knn(run, result.model)
  metrics.update(features.label_accuracy(
      result.model, run.strategy, run.eval_data('test')))
  return {'epochs': epochs, 'train_seconds': seconds, **metrics}


def supervised_methods(supervised: dict | None) -> dict:
  """The supervised baseline's rows of the methods chart (none for None)."""
  if not supervised:
    return {}
  name = f'supervised ({supervised["train_seconds"] / 60:.0f} min)'
  return {f'{name}, its own head': supervised['label_top_1_accuracy'],
          f'{name}, linear probe': supervised['linear_probe_top_1_accuracy']}


def add_to_result(directory: str, supervised: dict):
  """Puts a separately run supervised baseline into the result.json that a
  pretraining run left in `directory` (replacing an earlier one), and
  redraws the charts; does nothing if there is none."""
  path = os.path.join(directory, 'result.json')
  if not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path) as f:
    result = json.load(f)
  methods = result['methods']
  for name in supervised_methods(result.get('supervised')):
    methods.pop(name, None)
  methods.update(supervised_methods(supervised))
  result['supervised'] = supervised
  records.write_json(path, result)
  plot(result, directory)
  logging.info('Added the supervised baseline to %s.', path)


def _chart_rank(method: str) -> int:
  families = ('raw pixels', 'random-weights', 'SimCLR', 'supervised')
  return next((i for i, family in enumerate(families)
               if method.startswith(family)), len(families))


def plot(result: dict, directory: str):
  plt = charts.pyplot()
  methods = result['methods']
  # Baselines, then SimCLR, then supervised, also when the methods come
  # from a file (records.write_json sorts keys).
  names = sorted(methods, key=_chart_rank)
  values = [100 * methods[n] for n in names]
  fig, ax = plt.subplots(figsize=(7, 3.2))
  bars = ax.barh(names[::-1], values[::-1], color='tab:blue')
  ax.bar_label(bars, fmt='%.1f', padding=3)
  ax.set_xlim(min(values) - 10, 100)
  ax.set_xlabel('Fashion-MNIST test accuracy (%)')
  charts.save(fig, directory, 'methods.png', result['title'])

  curve = result['curve']
  # Epochs, not minutes: the curve then does not depend on the machine.
  epochs = [p['epochs'] for p in curve]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(epochs, [100 * p['linear_probe_top_1_accuracy'] for p in curve],
          'o-', label='SimCLR, linear probe')
  ax.plot(epochs, [100 * p['knn_top_1_accuracy'] for p in curve], 's-',
          label='SimCLR, kNN')
  for name, style, color in (
      ('raw pixels, logistic regression', '--', 'tab:blue'),
      ('raw pixels, kNN', '--', 'tab:orange'),
      ('random-weights encoder, linear probe', ':', 'tab:blue'),
      ('random-weights encoder, kNN', ':', 'tab:orange')):
    if name in methods:
      ax.axhline(100 * methods[name], ls=style, color=color, alpha=0.6,
                 label=name)
  ax.set_xlabel('pretraining epochs')
  ax.set_ylabel('test accuracy (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='best')
  charts.save(fig, directory, 'learning_curve.png')


def main(_):
  tf.io.gfile.makedirs(FLAGS.output)
  pretrain_dir = os.path.join(FLAGS.model_dir, 'pretrain')
  config = recipe(pretrain_dir, epochs=FLAGS.train_epochs)
  source = catalog.make_source(config.data)
  if FLAGS.only_supervised:
    supervised = supervised_baseline(
        source, os.path.join(FLAGS.model_dir, 'supervised'),
        FLAGS.supervised_minutes)
    supervised.update(precision=config.model.precision,
                      date=time.strftime('%Y-%m-%d'))
    records.write_json(os.path.join(FLAGS.output, 'supervised.json'),
                       supervised)
    add_to_result(FLAGS.output, supervised)
    print(json.dumps(supervised, indent=2))
    return
  # Each run replaces only its own directory (supervised_baseline likewise):
  # --only_supervised keeps the checkpoints semi_supervised.py reads.
  if not FLAGS.resume and tf.io.gfile.exists(pretrain_dir):
    tf.io.gfile.rmtree(pretrain_dir)
  run = RunContext(config, tf.distribute.get_strategy(), source)
  points = pretrain(config, source, FLAGS.budget_minutes * 60)
  curve = []
  for path, seconds in points:
    model, step = modes.restored_model(run, path)
    metrics = probe_and_knn(run, model)
    epochs = step * config.train.train_batch_size / NUM_TRAIN
    curve.append({'step': step, 'epochs': epochs, 'train_seconds': seconds,
                  **metrics})
    logging.info('Checkpoint %s (%.1f min): %s', path,
                 (seconds or 0) / 60, metrics)

  final = curve[-1]
  methods, random_init, raw_pixels = {}, None, None
  if FLAGS.baselines:
    random_init = random_baselines(run, config)
    raw_pixels = evaluators.pixel_metrics(run)
    standard = random_init['standard']
    methods.update({
        'raw pixels, logistic regression':
            raw_pixels['linear_probe_top_1_accuracy'],
        'raw pixels, kNN': raw_pixels['knn_top_1_accuracy'],
        'random-weights encoder, linear probe':
            standard['linear_probe_top_1_accuracy'],
        'random-weights encoder, kNN': standard['knn_top_1_accuracy'],
    })
  methods['SimCLR, linear probe'] = final['linear_probe_top_1_accuracy']
  methods['SimCLR, kNN'] = final['knn_top_1_accuracy']
  supervised = None
  minutes = (FLAGS.supervised_minutes if FLAGS.supervised_minutes is not None
             else final['train_seconds'] / 60)
  if minutes > 0:
    supervised = supervised_baseline(
        source, os.path.join(FLAGS.model_dir, 'supervised'), minutes)
    methods.update(supervised_methods(supervised))
  result = {
      'title': (f'ResNet-18 x{config.model.encoder.width_multiplier}, '
                f'{final["epochs"]:.0f} epochs of SimCLR pretraining in '
                f'{config.model.precision} '
                f'({final["train_seconds"] / 60:.0f} min '
                'on this machine)'),
      'recipe': dataclasses.asdict(config),
      'methods': methods,
      'curve': curve,
      'random_init': random_init,
      'raw_pixels': raw_pixels,
      'supervised': supervised,
      'date': time.strftime('%Y-%m-%d'),
  }
  records.write_json(os.path.join(FLAGS.output, 'result.json'), result)
  plot(result, FLAGS.output)
  print(json.dumps(methods, indent=2))


if __name__ == '__main__':
  app.run(main)
