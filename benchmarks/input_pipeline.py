"""Images/s of the pretraining input pipeline (decode + two augmented views).

  python -m benchmarks.input_pipeline --output=benchmarks/results/input.json

Measures the steady state (the first batches, which include tracing, are
excluded) on synthetic images held in memory and, for 224 px, also on a
folder of JPEG files so that decoding is counted.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from simclr_tf import datasets
from simclr_tf import pipeline
from simclr_tf.config import AugmentConfig, default_use_blur

flags.DEFINE_string('output', None, 'JSON file for the results.')
flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
flags.DEFINE_integer('warmup_batches', 3, 'Batches excluded from timing.')
flags.DEFINE_integer('timed_images', 2048, 'Images timed per case.')
FLAGS = flags.FLAGS


def _array_source(side, n=2048):
  images = np.random.default_rng(0).integers(0, 256, (n, side, side, 3),
                                              dtype=np.uint8)
  return datasets.ArraySource(f'random{side}', {'train': images},
                              {'train': np.zeros(n, np.int64)}, None)


def _jpeg_folder_source(side, n=512):
  directory = tempfile.mkdtemp(prefix='simclr_bench_')
  rng = np.random.default_rng(0)
  # Smooth images compress like photos; pure noise would not.
  base = rng.integers(0, 256, (n, side // 8, side // 8, 3), dtype=np.uint8)
  for i in range(n):
    image = tf.image.resize(base[i], [side, side]).numpy().astype(np.uint8)
    tf.io.write_file(os.path.join(directory, f'{i}.jpg'),
                     tf.io.encode_jpeg(image, quality=90))
  return datasets.FolderSource(directory)


def measure(source, image_size, batch_size):
  config = AugmentConfig(image_size=image_size,
                         use_blur=default_use_blur(image_size))
  dataset = pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=batch_size,
      augment_config=config, views=2, seed=0)
  iterator = iter(dataset)
  for _ in range(FLAGS.warmup_batches):
    next(iterator)
  batches = max(1, FLAGS.timed_images // batch_size)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  return {'source': source.name, 'image_size': image_size,
          'use_blur': config.use_blur, 'batch_size': batch_size,
          'images_per_second': batches * batch_size / seconds}


def main(_):
  cases = [(_array_source(32), 32), (_array_source(256), 224),
           (_jpeg_folder_source(256), 224)]
  results = []
  for source, size in cases:
    result = measure(source, size, FLAGS.batch_size)
    print(f'{result["source"]:>40s}  {size:3d} px  blur={result["use_blur"]!s:5s}'
          f'  {result["images_per_second"]:8.1f} images/s')
    results.append(result)
  if FLAGS.output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, 'w') as f:
      json.dump({'cpu_count': os.cpu_count(), 'results': results}, f,
                indent=2)


if __name__ == '__main__':
  app.run(main)
