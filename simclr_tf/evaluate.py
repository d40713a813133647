"""Evaluation: supervised-head top-k accuracy, features, kNN and a linear
probe on frozen features."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from simclr_tf import pipeline
from simclr_tf.config import AugmentConfig
from simclr_tf.datasets import Source


@dataclasses.dataclass(frozen=True)
class EvalData:
  """What to evaluate on: a source's split and how to read it."""

  source: Source
  split: pipeline.Split
  augment: AugmentConfig
  batch_size: int
  max_steps: int = 0  # > 0: only the first batches.

  def num_steps(self) -> int:
    steps = pipeline.eval_num_steps(self.split.num_examples(self.source),
                                    self.batch_size)
    return min(steps, self.max_steps) if self.max_steps else steps

  def distributed(self, strategy):
    return strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.eval_dataset(
            self.source, self.split, global_batch_size=self.batch_size,
            augment_config=self.augment, input_context=ctx))


def top_k_correct(labels, logits, k):
  """1.0 where `labels` is among the `k` highest logits (labels < 0 never)."""
  k = min(k, logits.shape[-1])
  top = tf.math.top_k(logits, k).indices
  hits = tf.reduce_any(tf.equal(top, tf.cast(labels, top.dtype)[:, None]),
                       axis=1)
  return tf.cast(hits, tf.float32)


def label_accuracy(model, strategy, data: EvalData) -> dict:
  """Top-1 / top-5 of the supervised head over every example once."""

  @tf.function
  def eval_step(batch):
    def replica_fn(batch):
      logits = model(batch['image'], training=False)['logits_sup']
      mask = batch['mask']
      return (tf.reduce_sum(top_k_correct(batch['label'], logits, 1) * mask),
              tf.reduce_sum(top_k_correct(batch['label'], logits, 5) * mask),
              tf.reduce_sum(mask))
    per_replica = strategy.run(replica_fn, args=(batch,))
    return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for v in per_replica]

  totals = np.zeros(3)
  for _, batch in zip(range(data.num_steps()), data.distributed(strategy)):
    totals += [float(v) for v in eval_step(batch)]
  top1, top5, count = totals
  return {'label_top_1_accuracy': top1 / count,
          'label_top_5_accuracy': top5 / count,
          'num_eval_examples': int(count)}


def extract_features(model, strategy, data: EvalData):
  """(`final_avg_pool` features [N, F], labels [N]) for every example once."""

  @tf.function
  def step(batch):
    def replica_fn(batch):
      features = model(batch['image'], training=False)['final_avg_pool']
      return tf.cast(features, tf.float32), batch['label'], batch['mask']
    # Every replica's rows, on every worker (each worker reads a shard).
    return [strategy.gather(value, axis=0)
            for value in strategy.run(replica_fn, args=(batch,))]

  features, labels, masks = [], [], []
  for _, batch in zip(range(data.num_steps()), data.distributed(strategy)):
    f, l, m = step(batch)
    features.append(f.numpy())
    labels.append(l.numpy())
    masks.append(m.numpy())
  keep = np.concatenate(masks) > 0
  return np.concatenate(features)[keep], np.concatenate(labels)[keep]


def knn_scores(train_features, train_labels, test_features, num_classes,
               k=200, temperature=0.1, chunk_size=1024):
  """Weighted k-NN votes [N_test, num_classes] (Wu et al. 2018).

  Each of the k most cosine-similar training examples votes for its class
  with weight exp(similarity / temperature).
  """
  train = tf.math.l2_normalize(tf.constant(train_features, tf.float32), -1)
  train_labels = tf.constant(train_labels, tf.int32)
  k = min(k, len(train_features))
  scores = []
  for start in range(0, len(test_features), chunk_size):
    test = tf.math.l2_normalize(
        tf.constant(test_features[start:start + chunk_size], tf.float32), -1)
    similarity, neighbours = tf.math.top_k(
        tf.matmul(test, train, transpose_b=True), k)
    weights = tf.exp(similarity / temperature)
    votes = tf.one_hot(tf.gather(train_labels, neighbours), num_classes)
    scores.append(tf.reduce_sum(votes * weights[..., None], axis=1).numpy())
  return np.concatenate(scores)


def accuracy(scores, labels, k=1):
  top = np.argsort(-scores, axis=1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


def linear_probe(train_features, train_labels, test_features, num_classes,
                 steps=500, learning_rate=0.1, l2=1e-4, standardize=True):
  """Logistic regression on (standardised) frozen features; test scores.

  Full-batch Adam on the softmax cross-entropy: features fit in memory and
  the problem is convex, so this converges without tuning a batch size.
  Inputs with a natural common scale (pixels) need no standardising, which
  would blow up nearly constant ones (the border of Fashion-MNIST images).
  """
  mean = train_features.mean(0) if standardize else 0.0
  std = train_features.std(0) + 1e-6 if standardize else 1.0
  x = tf.constant((train_features - mean) / std, tf.float32)
  y = tf.constant(train_labels, tf.int32)
  weights = keras.Variable(np.zeros([x.shape[1], num_classes], np.float32))
  bias = keras.Variable(np.zeros([num_classes], np.float32))
  adam = keras.optimizers.Adam(learning_rate)
  adam.build([weights, bias])

  @tf.function
  def fit():
    for _ in tf.range(steps):
      with tf.GradientTape() as tape:
        logits = tf.matmul(x, weights) + bias
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            y, logits)) + l2 * tf.reduce_sum(tf.square(weights))
      adam.apply(tape.gradient(loss, [weights, bias]), [weights, bias])

  fit()
  test = tf.constant((test_features - mean) / std, tf.float32)
  return (tf.matmul(test, weights) + bias).numpy()
