"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR, its
metrics, and the top-k hits that supervised accuracies count."""

import tensorflow as tf

# Added to the logits of each anchor with itself so softmax ignores them.
_LARGE_NUM = 1e9


def _gather_across_replicas(tensor):
  """Concatenates `tensor` over replicas (gradients flow back through it).

  Returns the global tensor and this replica's position in it.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return tensor, 0
  gathered = context.all_gather(tensor, axis=0)
  return gathered, tf.cast(context.replica_id_in_sync_group, tf.int32)


def _prepared(hidden, hidden_norm):
  """In float32 (softmax in float32), L2-normalised with `hidden_norm`."""
  if hidden.dtype in (tf.float16, tf.bfloat16):
    hidden = tf.cast(hidden, tf.float32)
  if hidden_norm:
    hidden = tf.math.l2_normalize(hidden, axis=-1)
  return hidden


def _global_views(hidden):
  """[2B, D] (view 1 stacked on view 2) -> (view 1, view 2, view 1 of every
  replica, view 2 of every replica, this replica's position)."""
  hidden1, hidden2 = tf.split(hidden, 2, axis=0)
  hidden1_all, replica_id = _gather_across_replicas(hidden1)
  hidden2_all, _ = _gather_across_replicas(hidden2)
  return hidden1, hidden2, hidden1_all, hidden2_all, replica_id


def contrastive_loss(hidden, temperature, hidden_norm=True):
  """The paper's NT-Xent loss, at the original SimCLR code's scale.

  The original code returns the mean loss of the view-1 anchors plus the mean
  of the view-2 anchors: twice the paper's eq. 1 average over 2B anchors. We
  keep that scale because LARS does not adapt the steps of biases and
  batch-norm parameters and weighs the gradient against weight decay, so the
  original's published hyper-parameters hold only at its scale.

  Args:
    hidden: [2B, D], view 1 of the local batch stacked on view 2.
    temperature: softmax temperature tau.
    hidden_norm: L2-normalise `hidden` first (cosine similarity).

  Returns:
    (loss, logits_ab, labels): the sum of the two views' mean losses; the
    view-1-to-view-2 similarities / temperature, [B, global B]; and one-hot
    labels [B, 2 global B] whose positives sit at this replica's offset.
    Inside a replica context with several replicas, every replica's examples
    serve as negatives.
  """
  return _two_view_loss(_global_views(_prepared(hidden, hidden_norm)),
                        temperature)


def _two_view_loss(views, temperature):
  """`contrastive_loss` of views from `_global_views`."""
  hidden1, hidden2, hidden1_all, hidden2_all, replica_id = views
  batch_size = tf.shape(hidden1)[0]
  global_batch_size = tf.shape(hidden1_all)[0]

  positives = tf.range(batch_size) + replica_id * batch_size
  labels = tf.one_hot(positives, 2 * global_batch_size, dtype=hidden1.dtype)
  self_mask = tf.one_hot(positives, global_batch_size, dtype=hidden1.dtype)

  def similarities(a, b):
    return tf.matmul(a, b, transpose_b=True) / temperature

  logits_aa = similarities(hidden1, hidden1_all) - self_mask * _LARGE_NUM
  logits_bb = similarities(hidden2, hidden2_all) - self_mask * _LARGE_NUM
  logits_ab = similarities(hidden1, hidden2_all)
  logits_ba = similarities(hidden2, hidden1_all)

  loss_a = tf.nn.softmax_cross_entropy_with_logits(
      labels, tf.concat([logits_ab, logits_aa], axis=1))
  loss_b = tf.nn.softmax_cross_entropy_with_logits(
      labels, tf.concat([logits_ba, logits_bb], axis=1))
  loss = tf.reduce_mean(loss_a) + tf.reduce_mean(loss_b)
  return loss, logits_ab, labels


def multi_crop_loss(hidden, small_hidden, temperature, hidden_norm=True):
  """NT-Xent with small views (multi-crop, Caron et al. 2020).

  The two-view loss of `contrastive_loss`, plus for every small view of an
  example one cross-entropy term per large view of the same example: that
  view's similarity against the similarities to every large view of the
  global batch (every replica's; the other large view of the same example
  among them). Small views are anchors only: no view has them among its
  candidates. Every (anchor, positive) term weighs the same and the total
  keeps `contrastive_loss`'s scale: (two-view loss + the small views'
  terms, each summed over the example's two large views and averaged over
  examples) / (1 + S).

  Args:
    hidden: [2B, D], view 1 of the local batch stacked on view 2.
    small_hidden: [S * B, D], small view k of the local batch at rows
      k B .. (k + 1) B - 1.
    temperature: softmax temperature tau.
    hidden_norm: L2-normalise first (cosine similarity).

  Returns:
    (loss, logits_ab, labels), the last two of the two views as
    `contrastive_loss` returns them.
  """
  views = _global_views(_prepared(hidden, hidden_norm))
  two_view_loss, logits_ab, labels = _two_view_loss(views, temperature)
  small_hidden = _prepared(small_hidden, hidden_norm)
  hidden1, _, hidden1_all, hidden2_all, replica_id = views
  batch_size = tf.shape(hidden1)[0]
  global_batch_size = tf.shape(hidden1_all)[0]
  num_small = tf.shape(small_hidden)[0] // batch_size

  logits = tf.matmul(small_hidden, tf.concat([hidden1_all, hidden2_all], 0),
                     transpose_b=True) / temperature  # [S B, 2 global B]
  own = tf.tile(tf.range(batch_size) + replica_id * batch_size, [num_small])
  log_normaliser = tf.reduce_logsumexp(logits, axis=1)
  positive1 = tf.gather(logits, own, batch_dims=1)
  positive2 = tf.gather(logits, own + global_batch_size, batch_dims=1)
  small_terms = 2 * log_normaliser - positive1 - positive2
  small_loss = tf.reduce_sum(small_terms) / tf.cast(batch_size,
                                                    small_terms.dtype)
  total = (two_view_loss + small_loss) / tf.cast(1 + num_small,
                                                 small_terms.dtype)
  return total, logits_ab, labels


def contrastive_metrics(logits_ab, labels):
  """`contrast_acc` (view 2 of the same image ranked first among all view-2
  candidates) and `contrast_entropy` (of that softmax), as the SimCLR code."""
  global_batch_size = tf.shape(logits_ab)[1]
  positives = tf.argmax(labels[:, :global_batch_size], axis=1)
  accuracy = tf.reduce_mean(tf.cast(
      tf.equal(positives, tf.argmax(logits_ab, axis=1)), tf.float32))
  probabilities = tf.nn.softmax(logits_ab)
  entropy = -tf.reduce_mean(tf.reduce_sum(
      probabilities * tf.math.log(probabilities + 1e-8), axis=-1))
  return {'contrast_acc': accuracy, 'contrast_entropy': entropy}


def top_k_correct(labels, logits, k):
  """1.0 where `labels` is among the `k` highest logits (labels < 0 never)."""
  k = min(k, logits.shape[-1])
  top = tf.math.top_k(logits, k).indices
  hits = tf.reduce_any(tf.equal(top, tf.cast(labels, top.dtype)[:, None]),
                       axis=1)
  return tf.cast(hits, tf.float32)
