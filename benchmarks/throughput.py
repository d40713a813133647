"""Steady-state SimCLR pretraining throughput, split into its parts.

  python -m benchmarks.throughput --output=benchmarks/results/throughput_cpu.json

For each configuration (default: ResNet-18 at 32 px batch 128, ResNet-50 at
32 px batch 128, ResNet-50 at 224 px batch 32; CIFAR stem at 32 px, LARS,
the 2-layer projection head and the linear head trained alongside, as the
original code's pretraining), in a fresh process each:

* `train`: `simclr_tf.training.train.train`, the loop that run.py runs with its
  hooks (input pipeline, model, NT-Xent, LARS, progress, summaries, NaN
  guard), on in-memory random images; images/s after the first calls
  (tracing, warm-up);
* `input`: the augmentation pipeline alone (two views per image);
* `model`: the training step alone, on one cached batch;
* peak resident memory of the process after `train` (before the others run);
* GFLOP/s achieved: 3 x forward FLOPs (forward + backward) x 2 views per
  image, forward FLOPs counted by TensorFlow's profiler.
"""

import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from benchmarks.flops import forward_flops
from simclr_tf.config import PRECISIONS, DataConfig
from simclr_tf.devices import precision
from simclr_tf.inputs import array_source
from simclr_tf.inputs import pipeline
from simclr_tf.run_context import RunContext
from simclr_tf.settings import resolver
from simclr_tf.settings import setting_flags
from simclr_tf.storage import records
from simclr_tf.training import hooks
from simclr_tf.training.task import TrainTask, make_plan
from simclr_tf.training.train import train

CONFIGS = {  # name: (depth, width, image size, batch size, stored size)
    'resnet18_32px_b128': (18, 1.0, 32, 128, 32),
    'resnet50_32px_b128': (50, 1.0, 32, 128, 32),
    'resnet50_224px_b32': (50, 1.0, 224, 32, 256),
    # The quickstart's and the learning benchmark's model.
    'resnet18x0.25_28px_b512': (18, 0.25, 28, 512, 28),
}

flags.DEFINE_list('configs', list(CONFIGS), f'Any of {list(CONFIGS)}.')
flags.DEFINE_enum('mixed_precision', 'auto',
                  ['auto', *PRECISIONS], 'As run.py.')
# The settings this benchmark takes, defined as run.py defines them.
setting_flags.define(
    flags.FLAGS, ['jit_compile', 'steps_per_loop', 'lineareval_view',
                  'recompute'],
    defaults={'steps_per_loop': 1})
flags.DEFINE_integer('warmup_calls', 2, 'Untimed loop calls (tracing).')
flags.DEFINE_integer('timed_steps', 6, 'Timed training steps.')
flags.DEFINE_integer('inter_op_threads', 0, 'TensorFlow\'s inter-op '
                     'threads (0: its default); 1 runs one op at a time, so '
                     'profiled op times add up to the step.')
flags.DEFINE_string('output', None, 'JSON file for the results.')
flags.DEFINE_string('profile_dir', None, 'Also profile two model steps per '
                    'configuration into DIR/<config> (TensorBoard\'s profile '
                    'tab) and add the time per op type to the results.')
# XLA auto-clustering of some ops only, while oneDNN keeps the convolutions
# and matmuls (TensorFlow reads TF_XLA_FLAGS when it first builds a
# function's graph).
XLA_CLUSTERS = {
    'none': None,
    # Elementwise ops, reductions, batch norm and data movement.
    'fusible': '--tf_xla_auto_jit=fusible --tf_xla_cpu_global_jit',
    # Elementwise ops only.
    'pointwise': '--tf_xla_auto_jit=1 --tf_xla_cpu_global_jit '
                 '--tf_xla_ops_to_cluster=PW',
}
flags.DEFINE_enum('xla_clusters', 'none', list(XLA_CLUSTERS), 'Which ops '
                  'XLA compiles into fused clusters beside oneDNN\'s '
                  'kernels (TF_XLA_FLAGS in each configuration\'s process).')
flags.DEFINE_string('child', None, 'Internal: run one configuration here.')
FLAGS = flags.FLAGS

_NUM_IMAGES = 512


def run_config(depth, width, image_size, batch_size, stored_size, strategy,
               model_dir='/tmp/unused', train_steps=1, **settings):
  """(config, source): a throughput configuration over random images;
  `settings` are any others (e.g. contrastive_chunk_size)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, [_NUM_IMAGES, stored_size, stored_size, 3],
                        dtype=np.uint8)
  labels = rng.integers(0, 10, [_NUM_IMAGES]).astype(np.int64)
  source = array_source.ArraySource('random', {'train': images},
                                    {'train': labels}, num_classes=10)
  config = resolver.resolve({
      'dataset': 'random', 'model_dir': model_dir, 'resnet_depth': depth,
      'width_multiplier': width, 'image_size': image_size,
      'num_proj_layers': 2, 'train_batch_size': batch_size,
      'train_steps': train_steps, 'checkpoint_steps': train_steps,
      'steps_per_loop': FLAGS.steps_per_loop, 'jit_compile': FLAGS.jit_compile,
      'lineareval_view': FLAGS.lineareval_view, 'recompute': FLAGS.recompute,
      **settings},
      source=source, strategy=strategy,
      mixed_precision=FLAGS.mixed_precision)
  return config, source


def train_batches(config, source, task):
  """The pretraining input of `task` over `source`: two views and, when
  its supervised head learns from it, the evaluation view."""
  return pipeline.train_dataset(
      source, pipeline.Split('train'),
      global_batch_size=config.train.train_batch_size,
      augment_config=config.augment, data=DataConfig(seed=0), views=2,
      eval_view=task.objective.supervised_head_on_eval_view)


def _timed(task, iterator, calls):
  for _ in range(FLAGS.warmup_calls):
    task.run_steps(iterator, FLAGS.steps_per_loop)
  started = time.perf_counter()
  for _ in range(calls):
    task.run_steps(iterator, FLAGS.steps_per_loop)
  return time.perf_counter() - started


def measure(name):
  if FLAGS.inter_op_threads:
    tf.config.threading.set_inter_op_parallelism_threads(
        FLAGS.inter_op_threads)
  depth, width, image_size, batch_size, stored_size = CONFIGS[name]
  strategy = tf.distribute.get_strategy()
  calls = max(1, FLAGS.timed_steps // FLAGS.steps_per_loop)
  # One more call at the end, untimed: its pause writes the final checkpoint.
  steps = (FLAGS.warmup_calls + calls + 1) * FLAGS.steps_per_loop
  images = batch_size * calls * FLAGS.steps_per_loop
  # The training loop that run.py runs, with its hooks (progress, summaries,
  # NaN guard, checkpoint at the end); the timer reads the time after each
  # call, past the first calls (tracing, warm-up).
  with tempfile.TemporaryDirectory() as model_dir:
    config, source = run_config(depth, width, image_size, batch_size,
                                stored_size, strategy, model_dir, steps)
    timer = hooks.StepTimesHook()
    train(RunContext(config, strategy, source), hooks=[timer])
    train_seconds = images / timer.images_per_second(
        batch_size, skip_calls=FLAGS.warmup_calls)
  peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

  task = TrainTask(config, strategy,
                   make_plan(config, _NUM_IMAGES))
  cached = iter(train_batches(config, source, task).take(1).cache().repeat())
  model_seconds = _timed(task, cached, calls)
  # Profiled before the input pipeline is timed: its iterator would go on
  # filling its prefetch buffers beside the profiled steps.
  op_types = (profile(task, cached, os.path.join(FLAGS.profile_dir, name))
              if FLAGS.profile_dir else None)

  batches = iter(train_batches(config, source, task))
  for _ in range(3):
    next(batches)
  input_batches = max(20, 2000 // batch_size)
  started = time.perf_counter()
  for _ in range(input_batches):
    next(batches)
  input_seconds = time.perf_counter() - started

  flops = forward_flops(task.model, image_size) * 3 * 2
  return {
      'config': name, 'resnet_depth': depth, 'image_size': image_size,
      'batch_size': batch_size, 'precision': config.model.precision,
      'jit_compile': config.train.jit_compile,
      # What this process was started with (the parent sets it: set later,
      # after the imports, it is not read).
      'xla_clusters': next((mode for mode, value in XLA_CLUSTERS.items()
                            if value == os.environ.get('TF_XLA_FLAGS')),
                           'other'),
      'lineareval_view': config.model.supervised_head.lineareval_view,
      'steps_per_loop': FLAGS.steps_per_loop,
      'device': precision.device_type(strategy),
      'train_images_per_second': images / train_seconds,
      'model_images_per_second': images / model_seconds,
      'input_images_per_second': input_batches * batch_size / input_seconds,
      'peak_memory_gb': peak_bytes / 1e9,
      'training_gflop_per_image': flops / 1e9,
      'train_gflop_per_second': flops * images / train_seconds / 1e9,
      'model_gflop_per_second': flops * images / model_seconds / 1e9,
      'profile_op_time_share': op_types,
  }


def profile(task, iterator, directory, steps=2):
  """Traces `steps` model steps; returns {op type: share of op time}."""
  tf.profiler.experimental.start(directory)
  task.run_steps(iterator, steps)
  tf.profiler.experimental.stop()
  try:  # TensorBoard's op table, computed by TensorFlow's own converter.
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # pylint: disable=g-import-not-at-top
    paths = sorted(glob.glob(os.path.join(directory, '**', '*.xplane.pb'),
                             recursive=True))
    data, _ = _pywrap_profiler_plugin.xspace_to_tools_data(
        paths[-1:], 'framework_op_stats', {'tqx': 'out:csv;'})
    table = json.loads(data)[0]
  except (ImportError, IndexError, ValueError, KeyError):
    return None
  columns = [column['id'] for column in table['cols']]
  totals = {}
  for row in table['rows']:
    values = dict(zip(columns, [cell.get('v') if cell else None
                                for cell in row['c']]))
    if values['type'] != 'IDLE':
      totals[values['type']] = (totals.get(values['type'], 0) +
                                values['total_self_time'])
  total = sum(totals.values())
  return {op: round(t / total, 4) for op, t in
          sorted(totals.items(), key=lambda item: -item[1])[:12]}


def main(_):
  if FLAGS.child:
    print('RESULT ' + json.dumps(measure(FLAGS.child)), flush=True)
    return
  passed = [a for a in sys.argv[1:] if not a.startswith('--output')
            and not a.startswith('--configs')]
  if XLA_CLUSTERS[FLAGS.xla_clusters]:
    os.environ['TF_XLA_FLAGS'] = XLA_CLUSTERS[FLAGS.xla_clusters]
  results = []
  for name in FLAGS.configs:
    if name not in CONFIGS:
      raise app.UsageError(f'--configs: unknown {name!r}; use any of '
                           f'{list(CONFIGS)}.')
    results.append(in_own_process('benchmarks.throughput',
                                  [f'--child={name}', *passed]))
  write_record(FLAGS.output, results)


def in_own_process(module: str, args: list) -> dict:
  """Runs `python -m module args` (whose peak memory is then its own) and
  returns the dict it prints after 'RESULT '."""
  out = subprocess.run([sys.executable, '-m', module, *args], check=True,
                       capture_output=True, text=True).stdout
  result = json.loads(out.split('RESULT ', 1)[1])
  print(json.dumps(result), flush=True)
  return result


def write_record(path: str | None, results: list):
  """The results with the date, machine and TensorFlow version."""
  if path:
    records.write_json(path, {'date': time.strftime('%Y-%m-%d'),
                              'machine': _machine(),
                              'tensorflow': tf.__version__,
                              'results': results})


def _machine():
  cpu = 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f
                 if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  gpus = [tf.config.experimental.get_device_details(g).get('device_name')
          for g in tf.config.list_physical_devices('GPU')]
  return {'cpu': cpu, 'cpu_cores': os.cpu_count(), 'gpus': gpus}


if __name__ == '__main__':
  app.run(main)
