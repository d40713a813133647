"""What is read from evaluation data (inputs/pipeline.EvalData):
supervised-head accuracy, frozen features, pixels; and top-k accuracy of
scores (kNN and probe use it)."""

import numpy as np
import tensorflow as tf

from simclr_tf.inputs import pipeline
from simclr_tf.training.objective import top_k_correct


def label_accuracy(model, strategy, data: pipeline.EvalData) -> dict:
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


def extract_features(model, strategy, data: pipeline.EvalData, dtype=np.float32,
                     output: str = 'final_avg_pool'):
  """(the model's `output` [N, F] in `dtype`: by default the representation
  h, `proj_head_output` for g(h); labels [N]) for every example once."""

  @tf.function
  def step(batch):
    def replica_fn(batch):
      features = model(batch['image'], training=False)[output]
      return tf.cast(features, tf.float32), batch['label'], batch['mask']
    # Every replica's rows, on every worker (each worker reads a shard).
    return [strategy.gather(value, axis=0)
            for value in strategy.run(replica_fn, args=(batch,))]

  features, labels, masks = [], [], []
  for _, batch in zip(range(data.num_steps()), data.distributed(strategy)):
    f, l, m = step(batch)
    features.append(f.numpy().astype(dtype, copy=False))
    labels.append(l.numpy())
    masks.append(m.numpy())
  keep = np.concatenate(masks) > 0
  return np.concatenate(features)[keep], np.concatenate(labels)[keep]


def extract_pixels(data: pipeline.EvalData):
  """(flattened evaluation-preprocessed images [N, P] in [0, 1], labels [N])
  for every example once: the raw-pixel baseline's features. Grayscale
  images stored as three equal channels give one."""
  dataset = pipeline.eval_dataset(
      data.source, data.split, global_batch_size=data.batch_size,
      augment_config=data.augment)
  images, labels = [], []
  for batch in dataset.take(data.num_steps()).as_numpy_iterator():
    keep = batch['mask'] > 0
    images.append(batch['image'][keep])
    labels.append(batch['label'][keep])
  images, labels = np.concatenate(images), np.concatenate(labels)
  if np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(
      images[..., 0], images[..., 2]):
    images = images[..., :1]
  return images.reshape(len(images), -1).astype(np.float32), labels


def accuracy(scores, labels, k=1):
  top = np.argsort(-scores, axis=1)[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))
