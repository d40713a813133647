"""Seeded subsets of a split: class-balanced label fractions (the paper's
1% / 10% protocol) and per-class samples."""

import dataclasses

import numpy as np

from simclr_tf.config import RunConfig
from simclr_tf.inputs import pipeline
from simclr_tf.inputs.sources import UNLABELED, Source


def sample_per_class(labels: np.ndarray, count, seed: int, classes=None):
  """(chosen, rest): sorted indices of `count(class size)` seeded random
  examples of each of `classes` (default: every label, UNLABELED too), and
  of their other examples."""
  rng = np.random.RandomState(seed)
  chosen, rest = [], []
  for label in np.unique(labels) if classes is None else classes:
    members = np.flatnonzero(labels == label)
    members = members[rng.permutation(len(members))]
    take = min(count(len(members)), len(members))
    chosen.extend(members[:take])
    rest.extend(members[take:])
  return (np.sort(np.array(chosen, np.int64)),
          np.sort(np.array(rest, np.int64)))


def label_fraction_indices(labels: np.ndarray, fraction: float,
                           seed: int) -> np.ndarray:
  """Sorted indices of a class-balanced, seeded subset of labeled examples.

  Every class contributes the same number of examples, round(fraction * N /
  num_classes) (at least 1, at most what the class has), as in the paper's
  1% / 10% ImageNet subsets.
  """
  classes = np.unique(labels[labels != UNLABELED])
  per_class = max(1, int(round(fraction * len(labels) / len(classes))))
  return sample_per_class(labels, lambda members: per_class, seed,
                          classes)[0]

def labeled_indices(config: RunConfig, source: Source):
  """The training examples whose labels a run may use: when fine-tuning or
  distilling on a label fraction, that seeded class-balanced subset; else
  None (all)."""
  data = config.data
  if config.model.train_mode != 'pretrain' and data.label_fraction < 1:
    return label_fraction_indices(
        source.labels(data.train_split), data.label_fraction, data.seed)
  return None


def training_split(config: RunConfig, source: Source):
  """The training split; for fine-tuning, the label-fraction subset; for
  distillation, every image, its label seen only where
  --distill_label_weight uses the label-fraction subset's."""
  name = config.data.train_split
  if config.model.train_mode == 'distill':
    uses_labels = config.model.distill.distill_label_weight > 0
    return pipeline.Split(
        name, labeled=labeled_indices(config, source) if uses_labels else None)
  return pipeline.Split(name, labeled_indices(config, source))


@dataclasses.dataclass(frozen=True)
class TrainSubset:
  """Sorted indices of a training subset, and each one's rank in a seeded
  random order: the first m ranks are a random subset of m."""

  indices: np.ndarray | None  # None: the whole split, in order.
  ranks: np.ndarray

  @classmethod
  def of(cls, pool: np.ndarray, count, seed):
    """From `pool`, sorted indices of the split (all of it: arange)."""
    whole_split = np.array_equal(pool, np.arange(len(pool)))
    if count <= 0 or count >= len(pool):
      return cls(None if whole_split else pool, np.arange(len(pool)))
    chosen = pool[np.random.default_rng(seed).permutation(len(pool))[:count]]
    by_index = np.argsort(chosen)
    return cls(chosen[by_index], by_index)
