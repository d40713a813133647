"""Gradient caching: a large contrastive batch in the memory of a small one.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup". The negatives of the contrastive loss come from the whole
batch, so gradient accumulation over small batches is not the same loss.
Instead, for a batch split into chunks:

1. every chunk's projections, without keeping activations;
2. the loss of the whole batch and its gradient with respect to the
   projections (cheap: [2B, D]);
3. every chunk again, with a tape, back-propagating its slice of that
   gradient; the parameter gradients are summed over chunks;
4. one optimizer step (by the caller).

`objective_gradients` runs a step's objective (terms.py) this way: the one
objective the plain step evaluates in a single pass.

Batch norm in training mode normalises with the statistics of what it sees,
so here it sees one chunk at a time ("ghost" batch norm): the gradient is
exactly that of the same loss computed in one pass with batch norm over the
same chunks, and the moving statistics are updated once per chunk, in the
second pass only (the first pass leaves them as they were).
"""

import tensorflow as tf

from simclr_tf.training import terms


def chunk(views, chunk_size: int):
  """V views [B, ...] -> [B / chunk_size, V * chunk_size, ...]: chunk k
  holds examples k*N .. (k+1)*N - 1 of view 1, then the same of view 2 (and
  of any further view), as a plain batch of N examples would."""
  shape = tf.concat([[-1, chunk_size], tf.shape(views[0])[1:]], 0)
  return tf.concat([tf.reshape(view, shape) for view in views], 1)


def unchunk(chunks, num_views: int = 2):
  """The inverse of `chunk`: [C, V N, ...] -> [V B, ...], view 1 then view
  2 (and so on: the layout the contrastive loss takes)."""
  shape = tf.concat([[-1], tf.shape(chunks)[2:]], 0)
  return tf.concat([tf.reshape(view, shape)
                    for view in tf.split(chunks, num_views, axis=1)], 0)


def _chunk_indices(num_chunks: int, unroll: bool):
  """A graph loop over chunks, or a Python one: MirroredStrategy cannot
  synchronise (batch norm over replicas) inside a graph loop."""
  return range(num_chunks) if unroll else tf.range(num_chunks)


def _after(tensors, dependencies, unroll):
  """`tensors`, available only once `dependencies` are computed: chunks run
  one after the other, so that one chunk's activations are alive at once.
  (Unrolled, the synchronised batch norms order the chunks already, and a
  dependency would make each one's gradient trace walk all before it.)"""
  if unroll:
    return tensors
  with tf.control_dependencies(tf.nest.flatten(dependencies)):
    return tf.nest.map_structure(tf.identity, tensors)


def cached_gradients(forward, variables, chunks, batch_objective,
                     statistics, num_sums: int, unroll: bool = False,
                     num_views: int = 2):
  """Gradients of a contrastive batch computed chunk by chunk.

  Args:
    forward: one chunk (of each of `chunks`) -> (projections [V N, D],
      chunk_loss, sums [num_sums]) in training mode. `chunk_loss` is the
      chunk's share of the terms that add up over examples (e.g. the
      supervised head's loss, already divided by the whole batch); `sums`
      are metric sums.
    variables: what to differentiate.
    chunks: [C, 2N, ...] from `chunk` (images), or a nest of them (images
      and labels; the small views of multi-crop, [C, S N, ...]).
    batch_objective: projections [V B, D] (float32), view-major -> (loss,
      values): the loss of the whole batch and its metric values.
    statistics: variables `forward` updates as a side effect (batch-norm
      moving statistics), restored after the first pass.
    num_sums: the length of `sums`.
    unroll: loop over chunks in Python (a graph as large as that many
      chunks), for batch norm synchronised across MirroredStrategy replicas.

  Returns:
    (gradients with zeros where a variable gets none, batch values, sums of
    `sums` over chunks).
  """
  num_chunks = tf.nest.flatten(chunks)[0].shape[0]
  chunk_at = lambda k: tf.nest.map_structure(lambda c: c[k], chunks)
  before = [tf.identity(v) for v in statistics]
  projections = tf.TensorArray(tf.float32, size=num_chunks)
  previous = tf.zeros([])  # What the next chunk waits for.
  for k in _chunk_indices(num_chunks, unroll):
    outputs = tf.cast(forward(_after(chunk_at(k), previous, unroll))[0],
                      tf.float32)
    projections = projections.write(k, outputs)
    previous = tf.reduce_sum(outputs[:1, :1])
  with tf.control_dependencies([projections.stack()]):
    for variable, value in zip(statistics, before):
      variable.assign(value)

  everything = unchunk(projections.stack(), num_views)
  with tf.GradientTape() as tape:
    tape.watch(everything)
    loss, values = batch_objective(everything)
  projection_gradients = chunk(
      tf.split(tape.gradient(loss, everything), num_views),
      chunk_size=everything.shape[0] // (num_views * num_chunks))

  gradients = [tf.zeros_like(v) for v in variables]
  sums = tf.zeros([num_sums])
  for k in _chunk_indices(num_chunks, unroll):
    with tf.GradientTape() as tape:
      outputs, chunk_loss, chunk_sums = forward(
          _after(chunk_at(k), gradients, unroll))
      # d(surrogate)/d(weights) = dL/dz . dz/d(weights) for this chunk.
      surrogate = tf.reduce_sum(tf.cast(outputs, tf.float32) *
                                projection_gradients[k]) + chunk_loss
    chunk_gradients = tape.gradient(surrogate, variables)
    gradients = [total if g is None else total + tf.cast(g, total.dtype)
                 for total, g in zip(gradients, chunk_gradients)]
    sums += chunk_sums
  return gradients, values, sums


def objective_gradients(objective, batch, chunk_size: int, variables,
                        scale, unroll: bool = False):
  """The gradients of a pretraining batch's objective (terms.Objective)
  with batch norm over chunks of `chunk_size` examples, and its values.

  The per-image terms and the projections come chunk by chunk
  (`cached_gradients`); the batch terms see the whole batch's projections;
  the model terms are differentiated once, beside the chunks. `scale` maps
  a loss to what is differentiated (a replica's share, loss-scaled).
  """
  views, labels = objective.views(batch)
  images = chunk(views, chunk_size)
  labels = chunk(labels, chunk_size)
  num_images = sum(view.shape[0] for view in views)
  small_views = batch.get('small_views')
  num_small = 0 if small_views is None else small_views.shape[1]
  # The small views of a chunk's examples, view-major like the two views.
  small_chunks = (chunk(tf.unstack(small_views, axis=1), chunk_size)
                  if num_small else tf.zeros([images.shape[0], 0]))
  names = objective.per_image_names

  def forward(one_chunk):
    chunk_images, chunk_small, chunk_labels = one_chunk
    projections, per_image = objective.image_pass(chunk_images, chunk_labels)
    if num_small:
      projections = tf.concat([projections, tf.cast(
          objective.small_view_pass(chunk_small), projections.dtype)], 0)
    if not names:
      return projections, 0.0, tf.zeros([0])
    sums = tf.stack([tf.reduce_sum(per_image[name]) for name in names])
    # A per-image term is a mean over the whole batch's images.
    chunk_loss = terms.loss({name: sums[k] / num_images
                             for k, name in enumerate(names)})
    return projections, scale(chunk_loss), sums

  def batch_objective(projections):
    values = objective.batch_terms(
        projections[:num_images],
        projections[num_images:] if num_small else None)
    return scale(terms.loss(values)), values

  gradients, values, sums = cached_gradients(
      forward, variables, (images, small_chunks, labels), batch_objective,
      objective.model.batch_norm_statistics, num_sums=len(names),
      unroll=unroll, num_views=len(views) + num_small)
  with tf.GradientTape() as tape:
    model_values = objective.model_terms(batch)
    scaled = scale(terms.loss(model_values))
  gradients = [g if d is None else g + d for g, d in
               zip(gradients, tape.gradient(scaled, variables))]
  values.update({name: sums[k] / num_images for k, name in enumerate(names)})
  values.update(model_values)
  values['total_loss'] = terms.loss(values)
  return gradients, values
