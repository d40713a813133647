"""tf.data input pipelines: pretraining, fine-tuning and evaluation.

Each builder takes an optional `tf.distribute.InputContext` and returns the
per-replica-batched dataset of one input pipeline, which is what
`strategy.distribute_datasets_from_function` expects.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from simclr_tf.config import AugmentConfig, DataConfig
from simclr_tf.inputs import augment
from simclr_tf.inputs import sequential
from simclr_tf.inputs.sources import UNLABELED, Source, select


@dataclasses.dataclass(frozen=True)
class Split:
  """Which examples of a source a pipeline reads."""

  name: str
  # Indices (in `Source.records` order) to keep, e.g. a label-fraction subset.
  indices: np.ndarray | None = None
  # Indices (same order) whose labels training sees; the others' read
  # UNLABELED. None: every label. (Distillation's labeled subset.)
  labeled: np.ndarray | None = None

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


def shuffled_positions(num_examples: int, seed: int, start: int = 0,
                       every: int = 1) -> tf.data.Dataset:
  """Endless `(position, index)` pairs for positions start, start + every,
  ... of a stream in which epoch e (positions e * n to e * n + n - 1) visits
  all n indices in a permutation seeded by (seed, e).

  Each index is computed from its position alone
  (`tf.random.experimental.index_shuffle`), so memory does not grow with n
  and starting at any position costs nothing.
  """
  def index_of(position):
    epoch_seed = tf.stack([tf.constant(seed, tf.int64),
                           position // num_examples])
    return position, tf.random.experimental.index_shuffle(
        position % num_examples, seed=epoch_seed,
        max_index=tf.constant(num_examples - 1, tf.int64))
  return tf.data.Dataset.range(start, 2**62, every).map(index_of)


def _in_memory_lookup(source: Source, split: Split):
  """Reads a split's records (encoded images) into memory once: a source
  without random access then has it (`--cache_dataset`)."""
  records, labels = [], []
  for record in _records(source, split).as_numpy_iterator():
    records.append(record['record'])
    labels.append(record['label'])
  records = tf.constant(np.array(records, dtype=object))
  labels = tf.constant(np.array(labels, np.int64))
  return lambda index: {'record': tf.gather(records, index),
                        'label': tf.gather(labels, index)}


def _visible_labels(source: Source, split: Split) -> tf.Tensor:
  """Per example of `split` (in its own order): its label where
  `split.labeled` holds it, else UNLABELED."""
  ids = (split.indices if split.indices is not None
         else np.arange(source.num_examples(split.name)))
  labels = np.asarray(source.labels(split.name), np.int64)[ids]
  return tf.constant(np.where(np.isin(ids, split.labeled), labels,
                              UNLABELED).astype(np.int64))


def _keep_mask(source: Source, split: Split):
  if split.indices is None:
    return None
  keep = np.zeros(source.num_examples(split.name), bool)
  keep[split.indices] = True
  return keep


def train_dataset(source: Source, split: Split, *,
                  augment_config: AugmentConfig, data: DataConfig,
                  global_batch_size: int, views: int, input_context=None,
                  start_step: int = 0, eval_view: bool = False):
  """Endless shuffled, augmented batches for training.

  Args:
    data: the run's data section: its `seed`; `cache_dataset` reads the
      records of a source without random access (TFDS TFRecord files) into
      memory once, which gives it random access; `shuffle_buffer` records
      are permuted together when reading files without random access (see
      `sequential`), random access needs none.
    views: 2 for SimCLR pretraining (`view1`, `view2` from the pretraining
      augmentation, and with `num_small_crops` their `small_views` [S, s, s,
      3]); 1 for fine-tuning (`image`, crop and flip only).
    start_step: training steps already taken; the stream starts where an
      uninterrupted run would be at that step.
    eval_view: pretraining examples also carry `eval_view`, the image as
      evaluation preprocesses it (for the supervised head).

  The stream is a pure function of `seed` and the position, so resuming
  needs no iterator state. Example number i of the stream is augmented with
  seed (seed, i). With random access, epoch e is one permutation of the
  whole split seeded by (seed, e): every batch mixes the whole dataset
  whatever the order on disk, the input pipelines take turns along one
  stream, and skipping to the position reads nothing. Without it, each input
  pipeline reads its share of the files in a seeded order per epoch.
  """
  batch_size = _per_replica_batch(global_batch_size, input_context)
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  replicas = input_context.num_replicas_in_sync if input_context else 1
  # Examples one pipeline feeds per step: its replicas' batches.
  per_step = batch_size * (replicas // num_pipelines)

  if source.random_access or data.cache_dataset:
    lookup = (source.lookup(split.name, split.indices) if source.random_access
              else _in_memory_lookup(source, split))
    first = start_step * per_step * num_pipelines + pipeline_id
    stream = shuffled_positions(split.num_examples(source), data.seed, first,
                                num_pipelines)
    if split.labeled is not None:
      visible = _visible_labels(source, split)
      lookup_all = lookup
      lookup = lambda index: {**lookup_all(index),
                              'label': tf.gather(visible, index)}
    stream = stream.map(lambda position, index: (position, lookup(index)))
    augment_seed = data.seed
  else:
    if split.labeled is not None:
      raise ValueError(f'{source.name}: hiding some labels needs random '
                       'access to its records; add --cache_dataset.')
    augment_seed = _pipeline_seed(data.seed, input_context)
    files = source.record_files(split.name)[pipeline_id::num_pipelines]
    if not files:
      raise ValueError(
          f'{source.name} {split.name} has fewer files than the '
          f'{num_pipelines} input pipelines; use --cache_dataset or fewer '
          'workers.')
    stream = sequential.shuffled_stream(
        files, source.parse, seed=augment_seed, first=start_step * per_step,
        keep=_keep_mask(source, split), window=data.shuffle_buffer)

  def make_example(position, record):
    example_seed = tf.stack([tf.constant(augment_seed, tf.int64), position])
    image = source.decode(record['record'])
    if views == 2:
      seed1, seed2 = augment.split_seed(example_seed, 2)
      example = {'view1': augment.pretrain_view(image, seed1, augment_config),
                 'view2': augment.pretrain_view(image, seed2, augment_config,
                                                  second=True),
                 'label': record['label']}
      if eval_view:
        example['eval_view'] = augment.eval_view(image, augment_config)
      if augment_config.num_small_crops:
        example['small_views'] = tf.stack([
            augment.pretrain_view(image, small_seed, augment_config,
                                  small=True)
            for small_seed in augment.small_crop_seeds(
                example_seed, augment_config.num_small_crops)])
      return example
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

  if source.random_access and split.indices is not None:
    # A subset is looked up, not filtered out of the whole split.
    lookup = source.lookup(split.name, split.indices)
    records = tf.data.Dataset.range(num_examples).map(lookup)
  else:
    records = _records(source, split)
  records = _shard(records, input_context)

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


@dataclasses.dataclass(frozen=True)
class EvalData:
  """What to evaluate on: a source's split and how to read it."""

  source: Source
  split: Split
  augment: AugmentConfig
  batch_size: int
  max_steps: int = 0  # > 0: only the first batches.

  def num_steps(self) -> int:
    steps = eval_num_steps(self.split.num_examples(self.source),
                                    self.batch_size)
    return min(steps, self.max_steps) if self.max_steps else steps

  def distributed(self, strategy):
    return strategy.distribute_datasets_from_function(
        lambda ctx: eval_dataset(
            self.source, self.split, global_batch_size=self.batch_size,
            augment_config=self.augment, input_context=ctx))
