"""The distillation objective of SimCLRv2 (Chen et al. 2020, "Big
Self-Supervised Models are Strong Semi-Supervised Learners", eq. 3): the
cross-entropy between a fixed teacher's and the student's class
distributions, both softened by one temperature, on every training image;
optionally plus the ordinary cross-entropy on the images whose labels the
run may use.

Both are per-image terms: the training step averages them over the global
batch like any other (terms.py), so a labeled image's cross-entropy weighs
`label_weight` times what one image's distillation term weighs, and
replicas need no count of the labeled images they hold.
"""

import tensorflow as tf

from simclr_tf.training import objective

# What `distillation_terms` yields per image.
DISTILLATION_TERMS = ('distill_loss', 'distill_label_loss',
                      'teacher_agreement')


def soft_cross_entropy(teacher_logits, student_logits, temperature):
  """-sum_y softmax(teacher / T)_y log softmax(student / T)_y per image
  [N], in float32. Not multiplied by T^2 (Hinton et al.'s gradient scale),
  as SimCLRv2 writes it."""
  teacher = tf.nn.softmax(tf.cast(teacher_logits, tf.float32) / temperature)
  student = tf.nn.log_softmax(
      tf.cast(student_logits, tf.float32) / temperature)
  return -tf.reduce_sum(tf.stop_gradient(teacher) * student, axis=-1)


def labeled_cross_entropy(labels, logits):
  """The cross-entropy of each image whose label is known (>= 0), 0 for
  the others [N], in float32."""
  known = labels >= 0
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      tf.where(known, labels, tf.zeros_like(labels)),
      tf.cast(logits, tf.float32))
  return tf.where(known, cross_entropy, tf.zeros_like(cross_entropy))


def distillation_terms(teacher_logits, student_logits, labels, temperature,
                       label_weight) -> dict:
  """Per-image [N]: the distillation loss, the weighted cross-entropy on
  known labels (absent at `label_weight` 0), and whether the student's top
  class is the teacher's (a metric)."""
  terms = {'distill_loss': soft_cross_entropy(teacher_logits, student_logits,
                                              temperature)}
  if label_weight:
    terms['distill_label_loss'] = label_weight * labeled_cross_entropy(
        labels, student_logits)
  terms['teacher_agreement'] = objective.top_k_correct(
      tf.argmax(teacher_logits, axis=-1), student_logits, 1)
  return terms
