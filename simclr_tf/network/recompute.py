"""Residual blocks recomputed in the backward pass (--recompute=blocks):
memory for time.

A training step keeps every activation its backward pass needs: for
ResNet-18 at 32 px, batch 128 in bfloat16, ~670 MB of convolution and
batch-norm inputs (docs/benchmarks.md). A recomputed block keeps only its
input: its backward pass runs its forward pass again, under a tape, and
differentiates that. Batch norm in the repeat normalises with the same
batch statistics (the same input) but leaves the moving averages alone, so
they move once per step, as without recomputation.
"""

import tensorflow as tf

from simclr_tf.network.speedups import batch_norm


def recomputed_call(layer, inputs, training):
  """`layer(inputs, training=training)`, keeping none of the layer's
  activations for the backward pass, which computes them again."""

  @tf.custom_gradient
  def forward(x):
    outputs = layer(x, training=training)

    def backward(output_gradient, variables=None):
      variables = list(variables or [])
      # Recomputed once the gradient has arrived: nothing else orders it
      # after the forward pass, and the executor would otherwise run it
      # there and keep its activations after all.
      with tf.control_dependencies([output_gradient]):
        recomputed_input = tf.identity(x)
      with tf.GradientTape() as tape:
        tape.watch(recomputed_input)
        with batch_norm.moving_averages_frozen():
          again = layer(recomputed_input, training=training)
      gradients = tape.gradient(again, [recomputed_input, *variables],
                                output_gradients=output_gradient)
      return gradients[0], gradients[1:]

    return outputs, backward

  return forward(inputs)
