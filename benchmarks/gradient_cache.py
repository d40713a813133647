"""Memory and speed of gradient caching (--contrastive_chunk_size), and of
plain batches of several sizes (memory's share per image and its share
whatever the batch, with --mixed_precision and --recompute as throughput
takes them).

  python -m benchmarks.gradient_cache \
      --output=benchmarks/results/gradient_cache.json

Each case runs in its own process (its peak memory is its own): the training
loop that run.py runs (`simclr_tf.training.train.train`, as benchmarks/throughput.py
times it) on in-memory random images, with plain batches or with one batch
computed in chunks. Images/s are steady state (after the first calls).
"""

import json
import resource
import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

from benchmarks import throughput
from simclr_tf.run_context import RunContext
from simclr_tf.training import hooks
from simclr_tf.training.train import train

# name: (throughput configuration (model, image size), batch, chunk size)
CASES = {
    'resnet18_32px_b64': ('resnet18_32px_b128', 64, 0),
    'resnet18_32px_b128': ('resnet18_32px_b128', 128, 0),
    'resnet18_32px_b512': ('resnet18_32px_b128', 512, 0),
    'resnet18_32px_b512_chunks64': ('resnet18_32px_b128', 512, 64),
    'resnet50_224px_b16': ('resnet50_224px_b32', 16, 0),
    'resnet50_224px_b64': ('resnet50_224px_b32', 64, 0),
    'resnet50_224px_b64_chunks16': ('resnet50_224px_b32', 64, 16),
}

flags.DEFINE_list('cases', list(CASES), f'Any of {list(CASES)}.')
# --timed_steps (timed training steps), --output (the JSON file),
# --mixed_precision and --recompute come from benchmarks.throughput.
flags.DEFINE_string('case', None, 'Internal: run one case here.')
FLAGS = flags.FLAGS


def measure(name):
  config_name, batch, chunk = CASES[name]
  depth, width, image_size, _, stored_size = throughput.CONFIGS[config_name]
  strategy = tf.distribute.get_strategy()
  warmup = 2
  steps = warmup + FLAGS.timed_steps + 1  # The last one writes a checkpoint.
  with tempfile.TemporaryDirectory() as model_dir:
    config, source = throughput.run_config(
        depth, width, image_size, batch, stored_size, strategy, model_dir,
        steps, contrastive_chunk_size=chunk)
    timer = hooks.StepTimesHook()
    started = time.perf_counter()
    train(RunContext(config, strategy, source), hooks=[timer])
    wall = time.perf_counter() - started
  return {'case': name, 'resnet_depth': depth, 'image_size': image_size,
          'batch_size': batch, 'contrastive_chunk_size': chunk,
          'precision': config.model.precision,
          'recompute': config.model.encoder.recompute,
          'images_per_second': timer.images_per_second(batch,
                                                       skip_calls=warmup),
          'peak_memory_gb':
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
          'wall_seconds': wall}


def main(_):
  if FLAGS.case:
    print('RESULT ' + json.dumps(measure(FLAGS.case)), flush=True)
    return
  results = []
  for name in FLAGS.cases:
    if name not in CASES:
      raise app.UsageError(f'--cases: unknown {name!r}; use any of '
                           f'{list(CASES)}.')
    results.append(throughput.in_own_process(
        'benchmarks.gradient_cache',
        [f'--case={name}', f'--timed_steps={FLAGS.timed_steps}',
         f'--mixed_precision={FLAGS.mixed_precision}',
         f'--recompute={FLAGS.recompute}']))
  throughput.write_record(FLAGS.output, results)


if __name__ == '__main__':
  app.run(main)
