"""tf.data input pipelines: pretraining, fine-tuning and evaluation.

Each builder takes an optional `tf.distribute.InputContext` and returns the
per-replica-batched dataset of one input pipeline, which is what
`strategy.distribute_datasets_from_function` expects.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from simclr_tf import augment
from simclr_tf.config import AugmentConfig
from simclr_tf.datasets import Source, select

# Shuffling permutes windows of this many records. Records are indices or
# paths (a window covers a whole CIFAR- or Fashion-MNIST-sized split) or, for
# TFDS, encoded images, whose files TFDS already shuffled when preparing them.
_SHUFFLE_WINDOW = 65_536


@dataclasses.dataclass(frozen=True)
class Split:
  """Which examples of a source a pipeline reads."""

  name: str
  # Indices (in `Source.records` order) to keep, e.g. a label-fraction subset.
  indices: np.ndarray | None = None

  def num_examples(self, source: Source) -> int:
    if self.indices is not None:
      return len(self.indices)
    return source.num_examples(self.name)


def _records(source: Source, split: Split) -> tf.data.Dataset:
  records = source.records(split.name)
  if split.indices is not None:
    records = select(records, split.indices, source.num_examples(split.name))
  return records


def _shard(dataset, input_context):
  if input_context and input_context.num_input_pipelines > 1:
    dataset = dataset.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  return dataset


def _per_replica_batch(global_batch_size, input_context):
  if input_context is None:
    return global_batch_size
  return input_context.get_per_replica_batch_size(global_batch_size)


def _pipeline_seed(seed, input_context):
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  return seed * 1000 + pipeline_id


def _with_options(dataset):
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return dataset.with_options(options)


def _shard_size(num_examples, input_context):
  if input_context is None or input_context.num_input_pipelines == 1:
    return num_examples
  return len(range(input_context.input_pipeline_id, num_examples,
                   input_context.num_input_pipelines))


def train_dataset(source: Source, split: Split, *, global_batch_size: int,
                  augment_config: AugmentConfig, views: int, seed: int,
                  cache: bool = False, input_context=None,
                  start_step: int = 0):
  """Endless shuffled, augmented batches for training.

  Args:
    views: 2 for SimCLR pretraining (`view1`, `view2` from the pretraining
      augmentation); 1 for fine-tuning (`image`, crop and flip only).
    start_step: training steps already taken; the stream starts where an
      uninterrupted run would be at that step.

  The stream is a pure function of `seed` and the position: epoch e is
  permuted with a seed made from (seed, e), and example number i of the
  stream is augmented with seed (seed, i). Resuming therefore needs no
  iterator state: skipping to the position costs only reading records.
  """
  pipeline_seed = _pipeline_seed(seed, input_context)
  records = _shard(_records(source, split), input_context)
  if cache:
    records = records.cache()
  num_records = _shard_size(split.num_examples(source), input_context)
  batch_size = _per_replica_batch(global_batch_size, input_context)
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  replicas = input_context.num_replicas_in_sync if input_context else 1
  consumed = start_step * batch_size * (replicas // num_pipelines)
  first_epoch, offset = divmod(consumed, num_records)
  window = min(num_records, _SHUFFLE_WINDOW)

  def epoch_records(epoch):
    # tf.data's shuffle takes no per-epoch tensor seed: permute each window
    # of records with a stateless permutation seeded by (seed, epoch, window).
    def permute(index, block):
      size = tf.shape(block['label'])[0]
      order = tf.argsort(tf.random.stateless_uniform(
          [size], tf.stack([pipeline_seed * 100_003 + epoch, index])))
      return tf.data.Dataset.from_tensor_slices(
          tf.nest.map_structure(lambda t: tf.gather(t, order), block))
    return records.batch(window).enumerate().flat_map(permute)

  stream = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_records)
  stream = stream.skip(offset).enumerate(start=consumed)

  def make_example(index, record):
    example_seed = tf.stack([tf.constant(pipeline_seed, tf.int64), index])
    image = source.decode(record['record'])
    if views == 2:
      seed1, seed2 = augment.split_seed(example_seed, 2)
      return {'view1': augment.pretrain_view(image, seed1, augment_config),
              'view2': augment.pretrain_view(image, seed2, augment_config),
              'label': record['label']}
    return {'image': augment.finetune_view(image, example_seed,
                                           augment_config),
            'label': record['label']}

  dataset = stream.map(make_example, num_parallel_calls=tf.data.AUTOTUNE)
  if source.decode_may_fail:
    dataset = dataset.ignore_errors(log_warning=True)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return _with_options(dataset.prefetch(tf.data.AUTOTUNE))


def eval_num_steps(num_examples: int, global_batch_size: int) -> int:
  """Steps that cover every example once with padded global batches."""
  return -(-num_examples // global_batch_size)


def eval_dataset(source: Source, split: Split, *, global_batch_size: int,
                 augment_config: AugmentConfig, input_context=None):
  """Every example of `split` exactly once, with a `mask`.

  The split is sharded across input pipelines; every replica gets the same
  number of full batches, the tail padded with zero images whose `mask` is 0,
  so metrics weighted by `mask` count each real example exactly once.
  """
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  replicas = (input_context.num_replicas_in_sync if input_context else 1)
  replicas_per_pipeline = replicas // num_pipelines
  batch_size = _per_replica_batch(global_batch_size, input_context)

  num_examples = split.num_examples(source)
  steps = eval_num_steps(num_examples, global_batch_size)
  # Slots this pipeline fills: its shard (at most ceil(N / pipelines)
  # examples) followed by padding.
  slots = steps * batch_size * replicas_per_pipeline

  records = _shard(_records(source, split), input_context)

  def make_example(record):
    return {'image': augment.eval_view(source.decode(record['record']),
                                       augment_config),
            'label': record['label'],
            'mask': tf.constant(1.0)}

  dataset = records.map(make_example, num_parallel_calls=tf.data.AUTOTUNE)
  if source.decode_may_fail:
    dataset = dataset.ignore_errors(log_warning=True)
  size = augment_config.image_size
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([size, size, 3]),
      'label': tf.constant(-1, tf.int64),
      'mask': tf.constant(0.0)}).repeat()
  dataset = dataset.concatenate(padding).take(slots)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return _with_options(dataset.prefetch(tf.data.AUTOTUNE))
