"""The FLOP count that benchmarks report GFLOP/s with, from TensorFlow's
profiler over the traced forward pass. No flags: tests import it beside
run.py's."""

import tensorflow as tf


def forward_flops(model, image_size) -> int:
  """FLOPs of one image's forward pass (multiply-add = 2)."""

  @tf.function
  def forward(images):
    return model(images, training=False)['proj_head_output']

  graph = forward.get_concrete_function(
      tf.TensorSpec([1, image_size, image_size, 3])).graph
  options = (tf.compat.v1.profiler.ProfileOptionBuilder(
      tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
             .with_empty_output().build())
  return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
