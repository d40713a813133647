"""Seconds per SimCLR pretraining step (model + NT-Xent + LARS) on a fixed
batch, tracing excluded.

  python -m benchmarks.step_time --resnet_depth=18 --image_size=32 --batch_size=128
"""

import json
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from simclr_tf import objective
from simclr_tf import optim
from simclr_tf.config import EncoderConfig, ModelConfig, OptimConfig
from simclr_tf.model import SimCLRModel

flags.DEFINE_integer('resnet_depth', 18, 'ResNet depth.')
flags.DEFINE_float('width_multiplier', 1.0, 'Width multiplier.')
flags.DEFINE_integer('image_size', 32, 'Image side (CIFAR stem at <= 32).')
flags.DEFINE_integer('batch_size', 128, 'Images per step (two views each).')
flags.DEFINE_integer('steps', 5, 'Timed steps after two untimed ones.')
FLAGS = flags.FLAGS


def main(_):
  config = ModelConfig(encoder=EncoderConfig(
      depth=FLAGS.resnet_depth, width_multiplier=FLAGS.width_multiplier,
      cifar_stem=FLAGS.image_size <= 32), num_classes=None)
  model = SimCLRModel(config)
  shape = [2 * FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3]
  images = tf.random.uniform(shape)
  model(images[:2], training=False)
  optimizer = optim.build_optimizer(OptimConfig(), 0.1)
  optimizer.build(model.trainable_variables)

  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      hidden = model(images, training=True)['proj_head_output']
      loss, _, _ = objective.contrastive_loss(hidden, 0.5)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return loss

  for _ in range(2):
    step(images).numpy()
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    step(images).numpy()
    times.append(time.perf_counter() - start)
  params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  print(json.dumps({
      'resnet_depth': FLAGS.resnet_depth, 'image_size': FLAGS.image_size,
      'batch_size': FLAGS.batch_size, 'params': params,
      'seconds_per_step': float(np.median(times)),
      'images_per_second': FLAGS.batch_size / float(np.median(times))}))


if __name__ == '__main__':
  app.run(main)
