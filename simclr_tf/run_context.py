"""The context of one run: its configuration, dataset source and strategy,
and the evaluation data and training subsets read from them."""

import functools

import numpy as np
import tensorflow as tf

from simclr_tf.config import RunConfig
from simclr_tf.devices import distribute
from simclr_tf.inputs import pipeline
from simclr_tf.inputs import sources
from simclr_tf.inputs import subsets


class RunContext:
  """A run's configuration, dataset source and strategy."""

  def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy,
               source: sources.Source):
    self.config = config
    self.strategy = strategy
    self.source = source
    self.chief = distribute.is_chief(strategy)
    self.multi_worker = distribute.is_multi_worker(strategy)

  @property
  def model_dir(self):
    return self.config.train.model_dir

  @property
  def eval_split(self):
    return self.config.data.eval_split or self.source.default_eval_split

  def eval_data(self, split: str,
                indices: np.ndarray | None = None) -> pipeline.EvalData:
    return pipeline.EvalData(
        self.source, pipeline.Split(split, indices), self.config.augment,
        self.config.eval.eval_batch_size, self.config.eval.eval_steps)

  @functools.cached_property
  def labeled_indices(self) -> np.ndarray | None:
    """The training examples whose labels evaluations may fit on: a
    fine-tuning or distillation run's label-fraction subset, or None
    (all)."""
    return subsets.labeled_indices(self.config, self.source)

  def train_subset(self, count: int) -> subsets.TrainSubset:
    """A seeded random subset of `count` labeled training examples (all of
    them when there are not more)."""
    pool = self.labeled_indices
    if pool is None:
      pool = np.arange(self.source.num_examples(self.config.data.train_split))
    return subsets.TrainSubset.of(pool, count, self.config.data.seed)
