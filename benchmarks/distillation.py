"""SimCLRv2's third stage on Fashion-MNIST with 1% of the labels: teachers
fine-tuned from the hour's encoder, distilled into students on every image.

  python -m benchmarks.distillation --encoder=/tmp/simclr_fashion_mnist/pretrain

For each labeled subset (`--seeds`; semi_supervised.py's subsets of 600
images from the first 50,000, the last 10,000 validating):

1. the teacher: --encoder fine-tuned on the subset (semi_supervised.py's
   protocol, `--teacher_learning_rate`, `--epochs_1pct` epochs at batch
   `--batch_1pct`);
2. self-distillation: a student of the teacher's architecture, initialised
   from --encoder, distilled on the 50,000 images (their labels hidden) for
   `--distill_epochs`, with `--distill_label_weight` times the
   cross-entropy on the subset;
3. big to small: ResNet-18 x`--small_width`, initialised from
   `--small_encoder` (a pretraining run of that width; none: random
   weights), distilled the same way, against the same network fine-tuned on
   the subset alone (its baseline); the small student also exported to
   TFLite int8 and tested through the interpreter.

Writes result.json (test top-1 of each, mean and spread over subsets,
the students' test top-1 after each epoch, training time without those
evaluations, parameters, the int8 student) to --output.
"""

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from benchmarks import fine_tuning
from simclr_tf.config import DataConfig, RunConfig
from simclr_tf.evaluation import features
from simclr_tf.inputs import catalog
from simclr_tf.inputs import idx
from simclr_tf.run_context import RunContext
from simclr_tf.serving import formats
from simclr_tf.serving import tflite_format
from simclr_tf.settings import resolver
from simclr_tf.settings import setting_flags
from simclr_tf.storage import checkpoints
from simclr_tf.storage import records
from simclr_tf.training.train import EveryNthCheckpoint
from simclr_tf.training.train import train

flags.DEFINE_string('encoder', '/tmp/simclr_fashion_mnist/pretrain',
                    'The pretraining run of benchmarks/fashion_mnist.py.')
flags.DEFINE_string('small_encoder', None, 'A pretraining run of ResNet-18 '
                    'x--small_width (e.g. the quickstart\'s) that the small '
                    'student starts from; none: random weights.')
flags.DEFINE_float('small_width', 0.25, 'The small student\'s width.')
flags.DEFINE_string('output', 'benchmarks/results/distillation',
                    'Directory for result.json.')
# The settings this benchmark takes, defined as run.py defines them; crops
# of fine-tuning and distillation at the paper's 8% by default.
setting_flags.define(
    flags.FLAGS, ['model_dir', 'data_dir', 'distill_temperature',
                  'distill_label_weight', 'min_crop_area'],
    defaults={'model_dir': '/tmp/simclr_distillation'})
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Labeled subsets (1%).')
flags.DEFINE_float('teacher_learning_rate', 0.01, 'Base learning rate '
                   '(times sqrt(batch size)) of the teachers and of the '
                   'small baseline (semi_supervised.py\'s choice at 1%).')
flags.DEFINE_integer('epochs_1pct', 40, 'Fine-tuning epochs on 1%.')
flags.DEFINE_integer('batch_1pct', 64, 'Fine-tuning batch size on 1%.')
flags.DEFINE_float('distill_learning_rate', 0.01, 'Base learning rate of '
                   'the students (times sqrt(batch size)).')
flags.DEFINE_float('distill_epochs', 5, 'Distillation epochs over the '
                   '50,000 images.')
flags.DEFINE_integer('distill_batch_size', 256, 'Distillation batch size.')
FLAGS = flags.FLAGS

LABELS = 600  # 1% of Fashion-MNIST's 60,000 training images.


def run_config(name: str, seed: int, *, train_mode: str, init: str | None,
               learning_rate: float, epochs: float, batch_size: int,
               architecture: dict, teacher: str | None = None) -> RunConfig:
  """One run on labeled subset `seed`: fine-tuning, or distilling the
  `teacher` run (on the subset's 50,000-image pool, so that its labeled
  images are the teacher's)."""
  given = {**architecture, **fine_tuning.subset_settings(LABELS, seed),
           'checkpoint': init}
  if train_mode == 'distill':
    # A checkpoint each epoch, where the student's curve is read.
    given.update(teacher=teacher, checkpoint_epochs=1,
                 distill_temperature=FLAGS.distill_temperature,
                 distill_label_weight=FLAGS.distill_label_weight)
  return fine_tuning.config(
      given, model_dir=os.path.join(FLAGS.model_dir, f'{name}-s{seed}'),
      data_dir=FLAGS.data_dir, epochs=epochs, batch_size=batch_size,
      learning_rate=learning_rate, weight_decay=0.0,
      min_crop_area=FLAGS.min_crop_area, train_mode=train_mode)


def _train(config: RunConfig, source) -> tuple[dict, object]:
  """Trains a run from scratch (its directory replaced); its test top-1
  (and, distilling, after each epoch's checkpoint: its curve), time and
  size, and the trained model."""
  directory = config.train.model_dir
  if tf.io.gfile.exists(directory):
    tf.io.gfile.rmtree(directory)
  keras.utils.set_random_seed(config.data.seed)  # As run.py seeds.
  strategy = tf.distribute.get_strategy()
  run = RunContext(config, strategy, source)
  distilling = config.model.train_mode == 'distill'
  curve, evaluating = [], 0.0

  def test_top_1(model):
    return features.label_accuracy(model, strategy, run.eval_data('test'))[
        'label_top_1_accuracy']

  def read_curve(task, step):
    nonlocal evaluating
    started = time.monotonic()
    curve.append({'step': step, 'test_top_1': test_top_1(task.model)})
    evaluating += time.monotonic() - started

  started = time.monotonic()
  trained = train(run, teacher=(resolver.resolve_teacher(config)
                                if distilling else None),
                  at_checkpoints=(EveryNthCheckpoint(1, read_curve)
                                  if distilling else None))
  seconds = time.monotonic() - started - evaluating
  # What a teacher's run directory holds beside its checkpoint: the
  # configuration that builds its network (as run.py records it).
  records.write_json(os.path.join(directory, records.FLAGS_FILE),
                     {'config': dataclasses.asdict(config)}, default=str)
  result = {
      'test_top_1': test_top_1(trained.model),
      'train_seconds': round(seconds, 1), 'steps': trained.global_step,
      'parameters': int(sum(np.prod(v.shape) for v in
                            trained.model.trainable_variables))}
  if distilling:
    result['curve'] = curve + [{'step': trained.global_step,
                                'test_top_1': result['test_top_1']}]
  logging.info('%s: %s', directory, result)
  return result, trained


def _int8_accuracy(model, config: RunConfig, step: int) -> dict:
  """The model exported to TFLite int8 (dynamic range), its test top-1
  through the interpreter, and its size."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  path = formats.export_all(model, dataclasses.replace(
      config, train=dataclasses.replace(config.train,
                                        export_formats='tflite_int8')),
                            step)['tflite_int8']
  model_file = os.path.join(path, tflite_format.FILE)
  runner = Interpreter(model_path=model_file).get_signature_runner(
      'serving_default')
  directory = idx.find_fashion_mnist(
      [FLAGS.data_dir, '/usr/share/datasets/fashion-mnist'])
  images, labels = idx.load_fashion_mnist_split(directory, 'test')
  images = np.repeat(images.astype(np.float32)[..., None] / 255.0, 3, -1)
  logits = np.concatenate([runner(images=images[i:i + 500])['logits_sup']
                           for i in range(0, len(images), 500)])
  return {'test_top_1': float(np.mean(logits.argmax(-1) == labels)),
          'size_mib': round(os.path.getsize(model_file) / 2**20, 2)}


def main(_):
  encoder = checkpoints.locate(FLAGS.encoder)
  small_init = (checkpoints.locate(FLAGS.small_encoder)
                if FLAGS.small_encoder else None)
  big = fine_tuning.recorded_architecture(FLAGS.encoder)
  small = {**(fine_tuning.recorded_architecture(FLAGS.small_encoder)
              if FLAGS.small_encoder else {}),
           'resnet_depth': 18, 'width_multiplier': FLAGS.small_width}
  source = catalog.make_source(DataConfig(dataset='fashion_mnist',
                                          data_dir=FLAGS.data_dir))
  fine_tune = dict(learning_rate=FLAGS.teacher_learning_rate,
                   epochs=FLAGS.epochs_1pct, batch_size=FLAGS.batch_1pct)
  distill = dict(train_mode='distill',
                 learning_rate=FLAGS.distill_learning_rate,
                 epochs=FLAGS.distill_epochs,
                 batch_size=FLAGS.distill_batch_size)
  runs = {}
  for seed in [int(s) for s in FLAGS.seeds]:
    teacher_config = run_config('teacher', seed, train_mode='finetune',
                             init=encoder, architecture=big, **fine_tune)
    runs[f'teacher-s{seed}'], _ = _train(teacher_config, source)
    teacher_dir = teacher_config.train.model_dir
    runs[f'self-s{seed}'], _ = _train(run_config(
        'self', seed, init=encoder, architecture=big, teacher=teacher_dir,
        **distill), source)
    runs[f'small_fine_tuned-s{seed}'], _ = _train(run_config(
        'small_fine_tuned', seed, train_mode='finetune', init=small_init,
        architecture=small, **fine_tune), source)
    student_config = run_config('small', seed, init=small_init,
                             architecture=small, teacher=teacher_dir,
                             **distill)
    runs[f'small-s{seed}'], trained = _train(student_config, source)
    runs[f'small-s{seed}']['tflite_int8'] = _int8_accuracy(
        trained.model, student_config, trained.global_step)
    records.write_json(os.path.join(FLAGS.model_dir, 'runs.json'), runs)

  def of_kind(kind):
    """The runs of one kind ('self', 'small', ...) over the subsets."""
    return [r for name, r in runs.items() if name.rsplit('-s', 1)[0] == kind]

  table = {kind: fine_tuning.summary([r['test_top_1'] for r in of_kind(kind)])
           for kind in ('teacher', 'self', 'small_fine_tuned', 'small')}
  table['small, TFLite int8'] = fine_tuning.summary(
      [r['tflite_int8']['test_top_1'] for r in of_kind('small')])

  def curve(kind):
    """The mean test top-1 over subsets after each epoch."""
    return [{'step': points[0]['step'],
             'test_top_1': float(np.mean([p['test_top_1'] for p in points]))}
            for points in zip(*[r['curve'] for r in of_kind(kind)])]

  result = {
      'title': ('Fashion-MNIST, 1% of the labels: teachers fine-tuned from '
                f'ResNet-{teacher_config.model.encoder.resnet_depth} '
                f'x{teacher_config.model.encoder.width_multiplier}, '
                'distilled into the same '
                f'network and into ResNet-18 x{FLAGS.small_width} (test '
                'top-1, mean and spread over subsets)'),
      'encoder': encoder, 'small_encoder': small_init, 'table': table,
      'curves': {kind: curve(kind) for kind in ('self', 'small')},
      'runs': runs, 'date': time.strftime('%Y-%m-%d'),
      'settings': {name: FLAGS[name].value for name in (
          'seeds', 'teacher_learning_rate', 'epochs_1pct', 'batch_1pct',
          'distill_learning_rate', 'distill_epochs', 'distill_batch_size',
          'distill_temperature', 'distill_label_weight', 'min_crop_area',
          'small_width')}}
  tf.io.gfile.makedirs(FLAGS.output)
  records.write_json(os.path.join(FLAGS.output, 'result.json'), result)
  print(json.dumps(table, indent=2))


if __name__ == '__main__':
  app.run(main)
