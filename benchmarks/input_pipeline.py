"""The pretraining input pipeline at scale: speed, memory, start-up.

  python -m benchmarks.input_pipeline --output=benchmarks/results/input_pipeline.json

1. speed: images/s of decode + two augmented views (batch 128, the first
   batches, which include tracing, excluded) on images in memory and on a
   folder of 224 px JPEG files, with tf.data on all cores and on one, which
   gives images/s per core and the cores that feed one GPU.
2. memory: peak resident memory of the input pipeline (source built, then
   `--memory_batches` batches read; a fresh process per case, less the
   process's memory after imports) for an image folder and for TFDS
   datasets in TFRecord and ArrayRecord files built locally from 224 px
   JPEGs, each at two sizes: flat in the dataset's size means the
   pipeline does not hold the dataset.
3. start-up: building a folder source of `--startup_files` files, cold
   (every header checked) and with the scan cached under --data_dir.
4. mix: distinct classes per training batch of `--mix_batch_size` from the
   largest folder (1000 class folders, stored class after class, as
   ImageNet), next to what uniform draws give.
5. resume: seconds to the first batch of a pipeline started at step 0 and
   at `--resume_epochs` epochs in, for the largest folder and the largest
   TFRecord dataset.
"""

import functools
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_string('output', None, 'JSON file for the results.')
flags.DEFINE_string('workdir', '/tmp/simclr_input_benchmark',
                    'Generated datasets (kept for re-runs).')
flags.DEFINE_list('cases', ['speed', 'memory', 'startup', 'mix', 'resume'],
                  'What to run.')
flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
flags.DEFINE_integer('warmup_batches', 3, 'Batches excluded from timing.')
flags.DEFINE_integer('timed_images', 2048, 'Images timed per speed case.')
flags.DEFINE_list('folder_sizes', ['50000', '500000'], 'Files of the '
                  'folders whose memory is measured.')
flags.DEFINE_list('tfds_sizes', ['20000', '200000'], 'Records of the TFDS '
                  'datasets whose memory is measured.')
flags.DEFINE_integer('memory_batches', 50, 'Batches read per memory case.')
flags.DEFINE_integer('startup_files', 1_000_000, 'Files of the start-up '
                     'folder.')
flags.DEFINE_integer('mix_batch_size', 256, 'Batch size of the mix case.')
flags.DEFINE_integer('mix_batches', 20, 'Batches counted in the mix case.')
flags.DEFINE_float('resume_epochs', 2.5, 'Where the resume case starts.')
# Internal: one memory measurement in a fresh process.
flags.DEFINE_string('measure', None, 'KIND:PATH (internal).')
FLAGS = flags.FLAGS

# A modern GPU's SimCLR ResNet-50 step at 224 px, estimated from published
# ResNet-50 training throughput (an A100 trains ~2,500 images/s; SimCLR's
# two views and its larger head make it ~1,000-1,200).
GPU_IMAGES_PER_SECOND = 1100


def _rss_bytes():
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  return 0


def _smooth_jpegs(count, side=224, seed=0):
  """Encoded JPEGs that compress like photos (pure noise would not)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (count, side // 8, side // 8, 3), np.uint8)
  return [tf.io.encode_jpeg(
      tf.cast(tf.image.resize(b, [side, side]), tf.uint8),
      quality=90).numpy() for b in base]


def _write_files(directory, count, contents, classes=1000):
  """`count` files in `classes` sub-folders (sorted by class, as ImageNet
  is), cycling through `contents`; skipped when already there."""
  marker = os.path.join(directory, '.complete')
  if os.path.exists(marker):
    return directory
  shutil.rmtree(directory, ignore_errors=True)
  per_class = -(-count // classes)
  for i in range(count):
    folder = os.path.join(directory, f'n{i // per_class:05d}')
    if i % per_class == 0:
      os.makedirs(folder)
    data = contents[i % len(contents)]
    suffix = '.jpg' if data[:2] == b'\xff\xd8' else '.png'
    with open(os.path.join(folder, f'{i:08d}{suffix}'), 'wb') as f:
      f.write(data)
  open(marker, 'w').close()
  return directory


def _tiny_png():
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buffer, 'PNG')
  return buffer.getvalue()


@functools.cache  # TFDS registers a builder class once per process.
def _benchmark_builder():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class SimclrBenchmarkJpegs(tfds.core.GeneratorBasedBuilder):
    """`num_examples` 224 px JPEGs in 1000 classes, sorted by class."""

    VERSION = tfds.core.Version('1.0.0')
    num_examples = 0

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=(
          tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(224, 224, 3),
                                           encoding_format='jpeg'),
              'label': tfds.features.ClassLabel(num_classes=1000)})))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):  # pylint: disable=arguments-differ
      jpegs = _smooth_jpegs(64)
      for i in range(self.num_examples):
        yield i, {'image': io.BytesIO(jpegs[i % len(jpegs)]),
                  'label': i * 1000 // self.num_examples}
  return SimclrBenchmarkJpegs


def _tfds_dataset(file_format, count):
  """A TFDS dataset of `count` 224 px JPEGs, prepared once under --workdir."""
  builder_class = _benchmark_builder()
  builder_class.num_examples = count
  builder = builder_class(
      data_dir=os.path.join(FLAGS.workdir, f'tfds_{file_format}_{count}'),
      file_format=file_format)
  builder.download_and_prepare()
  return builder


def _png_folder(count):
  """A folder of `count` tiny PNG files in 1000 class folders."""
  return _write_files(os.path.join(FLAGS.workdir, f'folder_{count}'), count,
                      [_tiny_png()])


def _pipeline(source, image_size=224, start_step=0, views=2,
              batch_size=None):
  # pylint: disable=g-import-not-at-top
  from simclr_tf.config import AugmentConfig, DataConfig
  from simclr_tf.inputs import pipeline
  from simclr_tf.inputs.augmentation_names import default_use_blur
  # The ImageNet recipe's augmentation (colour jitter strength 1).
  config = AugmentConfig(image_size=image_size, color_jitter_strength=1.0,
                         use_blur=default_use_blur(image_size))
  return pipeline.train_dataset(
      source, pipeline.Split('train'),
      global_batch_size=batch_size or FLAGS.batch_size, augment_config=config,
      data=DataConfig(seed=0), views=views, start_step=start_step)


def _images_per_second(source, image_size, threads=None):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  dataset = _pipeline(source, image_size)
  if threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    dataset = dataset.with_options(options)
  iterator = iter(dataset)
  for _ in range(FLAGS.warmup_batches):
    next(iterator)
  batches = max(1, FLAGS.timed_images // FLAGS.batch_size)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * FLAGS.batch_size / (time.perf_counter() - start)


def speed():
  from simclr_tf.inputs import array_source  # pylint: disable=g-import-not-at-top
  from simclr_tf.inputs import folder_source  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  cases = [
      ('images in memory, 32 px', 32, array_source.ArraySource(
          'random32', {'train': rng.integers(0, 256, (2048, 32, 32, 3),
                                             np.uint8)},
          {'train': np.zeros(2048, np.int64)}, None)),
      ('images in memory, 256 -> 224 px', 224, array_source.ArraySource(
          'random256', {'train': rng.integers(0, 256, (512, 256, 256, 3),
                                              np.uint8)},
          {'train': np.zeros(512, np.int64)}, None)),
      ('JPEG folder, 224 px', 224, folder_source.FolderSource(_write_files(
          os.path.join(FLAGS.workdir, 'jpeg_folder_512'), 512,
          _smooth_jpegs(512)))),
  ]
  results = []
  cores = os.cpu_count()
  for name, size, source in cases:
    all_cores = _images_per_second(source, size)
    one_core = _images_per_second(source, size, threads=1)
    result = {'case': name, 'image_size': size,
              'images_per_second': all_cores, 'cores': cores,
              'images_per_second_one_core': one_core}
    if size == 224:
      result['cores_to_feed_one_gpu'] = GPU_IMAGES_PER_SECOND / one_core
    print(f'{name:32s} {all_cores:8.1f} images/s on {cores} cores, '
          f'{one_core:8.1f} on one', flush=True)
    results.append(result)
  return results


def _measure(kind, path):
  """Runs in a fresh process: peak memory of one pipeline."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from simclr_tf.inputs import folder_source  # pylint: disable=g-import-not-at-top
  from simclr_tf.inputs import tfds_source  # pylint: disable=g-import-not-at-top
  del tf
  baseline = _rss_bytes()
  started = time.perf_counter()
  if kind == 'folder':
    source = folder_source.FolderSource(path)
  else:
    source = tfds_source.TFDSSource(tfds.builder_from_directory(path))
  built = time.perf_counter() - started
  iterator = iter(_pipeline(source))
  started = time.perf_counter()
  for _ in range(FLAGS.memory_batches):
    next(iterator)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps({
      'examples': source.num_examples('train'),
      'source_seconds': built,
      'images_per_second': FLAGS.memory_batches * FLAGS.batch_size /
                           (time.perf_counter() - started),
      'peak_memory_gb': (peak - baseline) / 1e9}))


def _measure_in_subprocess(kind, path):
  output = subprocess.run(
      [sys.executable, '-m', 'benchmarks.input_pipeline',
       f'--measure={kind}:{path}', f'--batch_size={FLAGS.batch_size}',
       f'--memory_batches={FLAGS.memory_batches}'],
      check=True, capture_output=True, text=True).stdout
  return json.loads(output.strip().splitlines()[-1])


def memory():
  results = []
  for size in map(int, FLAGS.folder_sizes):
    results.append({'kind': 'folder (tiny PNG files)',
                    **_measure_in_subprocess('folder', _png_folder(size))})
    print(results[-1], flush=True)
  for file_format in ('tfrecord', 'array_record'):
    for size in map(int, FLAGS.tfds_sizes):
      builder = _tfds_dataset(file_format, size)
      results.append({'kind': f'TFDS {file_format} (224 px JPEGs)',
                      **_measure_in_subprocess('tfds', builder.data_dir)})
      print(results[-1], flush=True)
  return results


def startup():
  from simclr_tf.inputs import folder_source  # pylint: disable=g-import-not-at-top
  path = _write_files(
      os.path.join(FLAGS.workdir, f'startup_{FLAGS.startup_files}'),
      FLAGS.startup_files, [_tiny_png()])
  cache = os.path.join(FLAGS.workdir, 'scan_cache')
  shutil.rmtree(cache, ignore_errors=True)
  timings = {}
  for name in ('cold', 'cached'):
    started = time.perf_counter()
    source = folder_source.FolderSource(path, scan_cache_dir=cache)
    timings[f'{name}_seconds'] = time.perf_counter() - started
  result = {'files': source.num_examples('train') + source.num_examples(
      'test'), 'cores': os.cpu_count(), **timings}
  print(result, flush=True)
  return result


@functools.cache  # Built once for mix and resume: its scan takes a while.
def _largest_folder_source():
  from simclr_tf.inputs import folder_source  # pylint: disable=g-import-not-at-top
  return folder_source.FolderSource(_png_folder(max(map(int, FLAGS.folder_sizes))))


def mix():
  """Classes per batch of a class-sorted folder against uniform draws."""
  source = _largest_folder_source()
  dataset = _pipeline(source, image_size=8, views=1,
                      batch_size=FLAGS.mix_batch_size)
  distinct = [len(np.unique(batch['label'])) for batch in
              dataset.take(FLAGS.mix_batches).as_numpy_iterator()]
  classes = source.num_classes
  # Expected distinct classes among b uniform draws from c equal classes.
  uniform = classes * (1 - (1 - 1 / classes) ** FLAGS.mix_batch_size)
  result = {'examples': source.num_examples('train'), 'classes': classes,
            'batch_size': FLAGS.mix_batch_size,
            'distinct_classes_per_batch': float(np.mean(distinct)),
            'min_distinct_classes': int(np.min(distinct)),
            'uniform_draws_expectation': uniform}
  print(result, flush=True)
  return result


def _seconds_to_first_batch(source, start_step):
  started = time.perf_counter()
  next(iter(_pipeline(source, start_step=start_step)))
  return time.perf_counter() - started


def resume():
  """Time to the first batch at step 0 and deep into the stream."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from simclr_tf.inputs import tfds_source  # pylint: disable=g-import-not-at-top
  builder = _tfds_dataset('tfrecord', max(map(int, FLAGS.tfds_sizes)))
  sources = [('folder (random access)', _largest_folder_source()),
             ('TFDS tfrecord (sequential)',
              tfds_source.TFDSSource(tfds.builder_from_directory(
                  builder.data_dir)))]
  results = []
  for name, source in sources:
    examples = source.num_examples('train')
    step = int(FLAGS.resume_epochs * examples) // FLAGS.batch_size
    _seconds_to_first_batch(source, 0)  # Warm the file cache and tracing.
    result = {'source': name, 'examples': examples, 'resume_step': step,
              'seconds_at_step_0': _seconds_to_first_batch(source, 0),
              f'seconds_at_step_{step}': _seconds_to_first_batch(source,
                                                                 step)}
    print(result, flush=True)
    results.append(result)
  return results


CASES = {'speed': speed, 'memory': memory, 'startup': startup, 'mix': mix,
         'resume': resume}


def main(_):
  if FLAGS.measure:
    kind, path = FLAGS.measure.split(':', 1)
    _measure(kind, path)
    return
  os.makedirs(FLAGS.workdir, exist_ok=True)
  results = {}
  if FLAGS.output and os.path.exists(FLAGS.output):
    with open(FLAGS.output) as f:  # Cases not rerun keep their results.
      results = json.load(f)
  results.update(cpu_count=os.cpu_count(), batch_size=FLAGS.batch_size)
  for case in FLAGS.cases:
    results[case] = CASES[case]()
    results.setdefault('dates', {})[case] = time.strftime('%Y-%m-%d')
    if FLAGS.output:  # After every case: a later failure loses nothing.
      from simclr_tf.storage import records  # pylint: disable=g-import-not-at-top
      records.write_json(FLAGS.output, results)


if __name__ == '__main__':
  app.run(main)
