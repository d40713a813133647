"""Export time and serving_bytes latency per image on this machine.

  python -m benchmarks.export_latency --resnet_depth=18 --image_size=32
"""

import json
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from simclr_tf.config import (AugmentConfig, EncoderConfig, ModelConfig,
                              SupervisedHeadConfig)
from simclr_tf.network.model import SimCLRModel
from simclr_tf.serving import export
from simclr_tf.settings import setting_flags

# The settings this benchmark takes, defined as run.py defines them.
setting_flags.define(
    flags.FLAGS, ['resnet_depth', 'image_size'],
    defaults={'image_size': 32})
flags.DEFINE_integer('batch_size', 16, 'Images per serving_bytes request.')
flags.DEFINE_integer('repeats', 5, 'Timed requests after one untimed one.')
FLAGS = flags.FLAGS


def main(_):
  size = FLAGS.image_size
  model = SimCLRModel(ModelConfig(
      encoder=EncoderConfig(resnet_depth=FLAGS.resnet_depth,
                            cifar_stem=size <= 32),
      supervised_head=SupervisedHeadConfig(num_classes=10)))
  model(tf.zeros([1, size, size, 3]))
  directory = tempfile.mkdtemp()
  started = time.perf_counter()
  path = export.export(model, AugmentConfig(image_size=size), directory, 1)
  export_seconds = time.perf_counter() - started
  serve = tf.saved_model.load(path).signatures['serving_bytes']
  rng = np.random.default_rng(0)
  # JPEGs a little larger than the model input, as a client would send.
  side = size if size <= 32 else int(size / 0.875)
  jpegs = tf.constant([tf.io.encode_jpeg(
      rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).numpy()
                       for _ in range(FLAGS.batch_size)])
  serve(image_bytes=jpegs[:1])
  serve(image_bytes=jpegs)
  single, batched = [], []
  for _ in range(FLAGS.repeats):
    started = time.perf_counter()
    serve(image_bytes=jpegs[:1])['default'].numpy()
    single.append(time.perf_counter() - started)
    started = time.perf_counter()
    serve(image_bytes=jpegs)['default'].numpy()
    batched.append((time.perf_counter() - started) / FLAGS.batch_size)
  print(json.dumps({
      'resnet_depth': FLAGS.resnet_depth, 'image_size': size,
      'export_seconds': round(export_seconds, 2),
      'serving_bytes_ms_per_image_batch_1': round(1e3 * np.median(single), 1),
      f'serving_bytes_ms_per_image_batch_{FLAGS.batch_size}':
          round(1e3 * np.median(batched), 1)}))


if __name__ == '__main__':
  app.run(main)
