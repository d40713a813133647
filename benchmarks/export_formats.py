"""Every export format on this CPU: export time, the latency of one batch in
the format's runtime next to the SavedModel's, and how far its outputs are
from serving_default's; with --trained_model_dir, what dynamic-range int8
TFLite costs in linear-probe accuracy on Fashion-MNIST.

  python -m benchmarks.export_formats --output=benchmarks/results/export_formats
  python -m benchmarks.export_formats --trained_model_dir=models/fashion_mnist-pretrain

Architectures have random weights (latency does not depend on them) with
randomised batch-norm statistics. Each runtime uses its defaults (threads =
cores); the median over --repeats batches after two untimed ones.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from simclr_tf.config import (EncoderConfig, ModelConfig,
                              SupervisedHeadConfig)
from simclr_tf.evaluation import probe
from simclr_tf.inputs import idx
from simclr_tf.network.model import SimCLRModel
from simclr_tf.serving import formats
from simclr_tf.serving import onnx_format
from simclr_tf.serving import tflite_format
from simclr_tf.settings import registry
from simclr_tf.settings import setting_flags
from simclr_tf.storage import records

# name -> (depth, image size, CIFAR stem)
ARCHITECTURES = {'resnet18_32px': (18, 32, True),
                 'resnet50_224px': (50, 224, False)}
FORMATS = ('saved_model', 'onnx', 'tflite', 'tflite_int8', 'torch')

flags.DEFINE_list('architectures', list(ARCHITECTURES), 'What to time.')
flags.DEFINE_integer('batch_size', 16, 'Images per timed batch.')
flags.DEFINE_integer('repeats', 10, 'Timed batches per runtime.')
flags.DEFINE_string('trained_model_dir', None, 'A Fashion-MNIST pretraining '
                    'run: also probe its float32 and int8 TFLite features.')
flags.DEFINE_list('trained_flags', ['--preset=fashion_mnist',
                                    '--lineareval_while_pretraining=false'],
                  'run.py flags that give its architecture where its '
                  'model_dir has no flags.json (the default: a run of '
                  'benchmarks/fashion_mnist.py).')
# The settings this benchmark takes, defined as run.py defines them.
setting_flags.define(
    flags.FLAGS, ['probe_train_examples', 'data_dir'],
    defaults={'probe_train_examples': 10000})
flags.DEFINE_string('output', 'benchmarks/results/export_formats',
                    'Directory for result.json.')
FLAGS = flags.FLAGS


def _randomized(model):
  """tests/helpers.randomize_batch_norm's statistics (benchmarks do not
  import tests), so the differences measured are those the tests bound."""
  rng = np.random.default_rng(0)
  for variable in model.weights:
    if variable.name in ('gamma', 'moving_variance'):
      variable.assign(rng.uniform(0.5, 1.5, variable.shape)
                      .astype(np.float32))
    elif variable.name in ('beta', 'moving_mean'):
      variable.assign(rng.uniform(-0.2, 0.2, variable.shape)
                      .astype(np.float32))
  return model


def _runner(name, path):
  """A function of NHWC images that runs the export at `path`, with the
  session / interpreter / module loaded once."""
  if name == 'saved_model':
    signature = tf.saved_model.load(path).signatures['serving_default']
    return lambda x: signature(images=tf.constant(x))['default'].numpy()
  if name == 'onnx':
    import onnxruntime  # pylint: disable=g-import-not-at-top
    session = onnxruntime.InferenceSession(
        os.path.join(path, onnx_format.FILE),
        providers=['CPUExecutionProvider'])
    return lambda x: session.run(['default'], {'images': x})[0]
  if name in ('tflite', 'tflite_int8'):
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    runner = Interpreter(model_path=os.path.join(
        path, tflite_format.FILE)).get_signature_runner('serving_default')
    return lambda x: runner(images=x)['default']
  import torch  # pylint: disable=g-import-not-at-top
  from simclr_tf.serving import simclr_torch  # pylint: disable=g-import-not-at-top
  module = simclr_torch.load(path)

  def run_torch(x):
    with torch.no_grad():
      return module(torch.from_numpy(x).permute(0, 3, 1, 2))[
          'default'].numpy()
  return run_torch


def _median_ms(function, images, repeats):
  function(images)
  function(images)
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    function(images)
    times.append(time.perf_counter() - started)
  return round(1e3 * float(np.median(times)), 2)


def time_architecture(name, directory):
  depth, size, cifar_stem = ARCHITECTURES[name]
  model = SimCLRModel(ModelConfig(
      encoder=EncoderConfig(resnet_depth=depth, cifar_stem=cifar_stem),
      supervised_head=SupervisedHeadConfig(num_classes=10)))
  model(tf.zeros([1, size, size, 3]))
  _randomized(model)
  images = formats.check_images(size, FLAGS.batch_size, seed=1)
  rows = {}
  for fmt in FORMATS:
    started = time.perf_counter()
    config = registry.build({'model_dir': directory, 'image_size': size,
                             'export_formats': fmt})
    path = formats.export_all(model, config, 1)[fmt]
    seconds = time.perf_counter() - started
    size_mb = sum(os.path.getsize(os.path.join(root, f))
                  for root, _, files in os.walk(path) for f in files) / 2**20
    record = {'export_seconds': round(seconds, 1),
              'size_mib': round(size_mb, 1),
              f'ms_per_batch_of_{FLAGS.batch_size}': _median_ms(
                  _runner(fmt, path), images, FLAGS.repeats)}
    if fmt != 'saved_model':
      check = json.load(open(os.path.join(path, 'export.json')))['check']
      record['max_relative_difference'] = max(
          check['max_relative_difference'].values())
    rows[fmt] = record
    print(name, fmt, record, flush=True)
  return rows


def _fashion_mnist(split, count=None):
  directory = idx.find_fashion_mnist(
      [FLAGS.data_dir, '/usr/share/datasets/fashion-mnist'])
  images, labels = idx.load_fashion_mnist_split(directory, split)
  images = images[:count].astype(np.float32)[..., None] / 255.0
  return np.repeat(images, 3, axis=-1), labels[:count]


def _features(fmt, path, images, batch=250):
  runner = _runner(fmt, path)
  return np.concatenate([runner(images[i:i + batch])
                         for i in range(0, len(images), batch)])


def probe_int8(trained_model_dir):
  """Exports the run's latest checkpoint as float32 and int8 TFLite, and
  fits the same linear probe on each one's features."""
  exported = subprocess.run(
      [sys.executable, 'run.py', '--mode=export',
       f'--model_dir={trained_model_dir}', '--dataset=fashion_mnist',
       f'--data_dir={FLAGS.data_dir}', '--export_formats=tflite,tflite_int8',
       *FLAGS.trained_flags],
      capture_output=True, text=True, check=True).stdout
  # "Exported <checkpoint> to <model_dir>/<format>/<step>" per format.
  destinations = [line.split(' to ', 1)[1] for line in exported.splitlines()
                  if line.startswith('Exported ')]
  paths = {os.path.basename(os.path.dirname(d)): d for d in destinations}
  train_x, train_y = _fashion_mnist('train', FLAGS.probe_train_examples)
  test_x, test_y = _fashion_mnist('test')
  result = {}
  for fmt in ('tflite', 'tflite_int8'):
    started = time.perf_counter()
    train_f = _features(fmt, paths[fmt], train_x)
    test_f = _features(fmt, paths[fmt], test_x)
    fitted = probe.linear_probe(train_f, train_y, test_f, 10)
    result[fmt] = {
        **{k: v for k, v in fitted.metrics(test_y).items()
           if k in ('linear_probe_top_1_accuracy', 'linear_probe_c')},
        'seconds': round(time.perf_counter() - started, 1)}
    print(fmt, result[fmt], flush=True)
  return {'model_dir': trained_model_dir,
          'probe_train_examples': len(train_y), 'test_examples': len(test_y),
          **result}


def main(_):
  results = {'batch_size': FLAGS.batch_size, 'repeats': FLAGS.repeats,
             'architectures': {}}
  with tempfile.TemporaryDirectory() as directory:
    for name in FLAGS.architectures:
      results['architectures'][name] = time_architecture(
          name, os.path.join(directory, name))
  if FLAGS.trained_model_dir:
    results['int8_probe'] = probe_int8(FLAGS.trained_model_dir)
  records.write_json(os.path.join(FLAGS.output, 'result.json'), results)
  print(json.dumps(results, indent=1))


if __name__ == '__main__':
  app.run(main)
