"""Where a training process's memory goes, stage by stage.

  python -m benchmarks.memory_stages --config=resnet18_32px_b128 \
      --mixed_precision=bfloat16 --recompute=blocks \
      --output=benchmarks/results/amd_epyc_bf16/memory_stages_blocks.json

In one process, the resident memory (and the peak so far) after each stage
of what a run does before and during its steps: importing TensorFlow and
this package, building the model and optimizer (TrainTask), the input
pipeline's first batch, the first training step (tracing it), and a few
steps more. What a stage adds is what it keeps resident; the peak of the
steps less what was resident before them is what a step needs on top.
"""

import resource
import sys
import time


def _resident_bytes() -> int:
  with open('/proc/self/statm') as f:
    pages = int(f.read().split()[1])
  return pages * resource.getpagesize()


def _peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_STAGES = []


def _stage(name: str):
  _STAGES.append({'stage': name, 'resident_gb': _resident_bytes() / 1e9,
                  'peak_gb': _peak_bytes() / 1e9})
  print(f'{name:40s} resident {_STAGES[-1]["resident_gb"]:.3f} GB  '
        f'peak {_STAGES[-1]["peak_gb"]:.3f} GB', flush=True)


# The imports below are stages of their own: each is measured after it.
_stage('python')
import tensorflow as tf
_stage('import tensorflow')
from absl import app
from absl import flags

from benchmarks import throughput
from simclr_tf.training.task import TrainTask, make_plan

# --mixed_precision, --recompute and --output come from benchmarks.throughput.
flags.DEFINE_enum('config', 'resnet18_32px_b128', list(throughput.CONFIGS),
                  'The throughput configuration (model, image size, batch).')
flags.DEFINE_integer('steps', 4, 'Training steps after the first.')
FLAGS = flags.FLAGS


def main(_):
  _stage('import simclr_tf and the benchmarks')
  depth, width, image_size, batch_size, stored_size = throughput.CONFIGS[
      FLAGS.config]
  strategy = tf.distribute.get_strategy()
  config, source = throughput.run_config(depth, width, image_size,
                                         batch_size, stored_size, strategy)
  task = TrainTask(config, strategy, make_plan(config, batch_size))
  _stage('model and optimizer built')
  batches = iter(throughput.train_batches(config, source, task))
  next(batches)
  _stage('input pipeline, first batch')
  started = time.perf_counter()
  task.run_steps(batches, 1)
  _stage('first step (traced)')
  traced_seconds = time.perf_counter() - started
  for _ in range(FLAGS.steps):
    task.run_steps(batches, 1)
  _stage(f'{FLAGS.steps} steps more')
  if FLAGS.output:
    throughput.write_record(FLAGS.output, [{
        'config': FLAGS.config, 'precision': config.model.precision,
        'recompute': config.model.encoder.recompute,
        'first_step_seconds': traced_seconds, 'stages': _STAGES,
        'command': ' '.join(sys.argv)}])


if __name__ == '__main__':
  app.run(main)
