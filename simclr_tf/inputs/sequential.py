"""Shuffled reading of record files that have no random access (TFDS
TFRecord shards).

Each epoch reads the files in a new seeded order, in groups of
`files_per_group` files interleaved record by record, and permutes
consecutive windows of `window` records. Like the random-access path, the
stream is a pure function of the seed and the position: resuming at a
position skips whole groups without reading them and reads at most one
group up to that position, and no iterator state (let alone a buffer of
images) goes into checkpoints. Memory is the window (about 2 x window x the
mean encoded record size, batched and then permuted) plus the file readers.
"""

import dataclasses

import numpy as np
import tensorflow as tf

DEFAULT_WINDOW = 8192
DEFAULT_FILES_PER_GROUP = 16


@dataclasses.dataclass(frozen=True)
class RecordFile:
  """The records of one split in one file: `take` records after `skip`;
  the first is example `first_index` of the split."""

  filename: str
  skip: int
  take: int
  first_index: int


def _file_order(num_files: int, seed: int, epoch) -> tf.Tensor:
  """The files' reading order in `epoch` (a seeded permutation)."""
  return tf.random.experimental.index_shuffle(
      tf.range(num_files, dtype=tf.int64),
      seed=tf.stack([tf.constant(seed, tf.int64),
                     tf.cast(epoch, tf.int64)]),
      max_index=tf.constant(num_files - 1, tf.int64))


def shuffled_stream(files: list[RecordFile], parse, *, seed: int,
                    first: int = 0, keep: np.ndarray | None = None,
                    window: int = DEFAULT_WINDOW,
                    files_per_group: int = DEFAULT_FILES_PER_GROUP):
  """Endless `(position, record)` from position `first` on.

  Args:
    files: the split's record files, in split order.
    parse: serialized record -> `{'record', 'label'}`.
    keep: a boolean mask over the split's examples (a label-fraction
      subset); positions count kept examples only.
  """
  num_files = len(files)
  names = tf.constant([f.filename for f in files])
  skips = tf.constant([f.skip for f in files], tf.int64)
  takes = tf.constant([f.take for f in files], tf.int64)
  starts = tf.constant([f.first_index for f in files], tf.int64)
  if keep is not None:
    kept_per_file = np.array([keep[f.first_index:f.first_index + f.take].sum()
                              for f in files], np.int64)
    keep_mask = tf.constant(keep)
  else:
    kept_per_file = np.array([f.take for f in files], np.int64)
  epoch_size = int(kept_per_file.sum())
  if epoch_size == 0:
    raise ValueError('No records to read.')
  num_groups = -(-num_files // files_per_group)

  def read_file(name, skip, take, start):
    records = tf.data.TFRecordDataset(name).skip(skip).take(take)
    records = tf.data.Dataset.zip(
        (tf.data.Dataset.range(start, start + take), records))
    if keep is not None:
      records = records.filter(lambda index, _: tf.gather(keep_mask, index))
    return records.map(lambda _, serialized: serialized)

  def group_records(epoch, group, skip_windows):
    order = _file_order(num_files, seed, epoch)
    ids = order[group * files_per_group:(group + 1) * files_per_group]
    files_of_group = tf.data.Dataset.from_tensor_slices(
        (tf.gather(names, ids), tf.gather(skips, ids), tf.gather(takes, ids),
         tf.gather(starts, ids)))
    records = files_of_group.interleave(
        read_file, cycle_length=files_per_group, block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def permute(window_index, block):
      order = tf.argsort(tf.random.stateless_uniform(
          tf.shape(block), tf.stack([seed * 1_000_003 + epoch,
                                     group * 1_000_003 + window_index])))
      return tf.data.Dataset.from_tensor_slices(tf.gather(block, order))

    windows = records.skip(skip_windows * window).batch(window)
    return windows.enumerate(start=skip_windows).flat_map(permute)

  def epoch_records(epoch, first_group=0):
    return tf.data.Dataset.range(first_group, num_groups).flat_map(
        lambda group: group_records(epoch, group, 0))

  # Where `first` falls: epoch, group, window, and records into the window.
  first_epoch, offset = divmod(first, epoch_size)
  order = _file_order(num_files, seed, first_epoch).numpy()
  group_sizes = [int(kept_per_file[order[g * files_per_group:
                                         (g + 1) * files_per_group]].sum())
                 for g in range(num_groups)]
  group_ends = np.cumsum(group_sizes)
  first_group = int(np.searchsorted(group_ends, offset, side='right'))
  into_group = offset - (group_ends[first_group - 1] if first_group else 0)
  first_window, into_window = divmod(int(into_group), window)

  head = group_records(tf.constant(first_epoch, tf.int64),
                       tf.constant(first_group, tf.int64),
                       first_window).skip(into_window)
  head = head.concatenate(epoch_records(tf.constant(first_epoch, tf.int64),
                                        first_group + 1))
  rest = tf.data.Dataset.range(first_epoch + 1, 2**62).flat_map(
      epoch_records)
  stream = head.concatenate(rest).map(parse)
  return stream.enumerate(start=first)
