"""The linear probe on a few labels: for each label fraction (the paper's
1% and 10%), probes fitted on several seeded class-balanced subsets of the
probe's training examples, their test accuracy as mean and spread.

Features are standardised with the statistics of every training example
(they need no labels). A subset of fewer than CROSS_VALIDATION_BELOW
examples chooses its C by stratified cross-validation, since a held-out
tenth of 600 labels is too few to choose by; a larger one is probed as
every label is (a held-out tenth: 600 labels there), since five folds
over the whole grid would cost five times the fits and more. The subsets'
probes run side by side, one per core (probe.fit_workers).
"""

from concurrent import futures

import numpy as np

from simclr_tf.evaluation import evaluator_names
from simclr_tf.evaluation import features
from simclr_tf.evaluation import probe
from simclr_tf.inputs import subsets

CROSS_VALIDATION_BELOW = 2000


def few_label_metrics(train_features, train_labels, test_features,
                      test_labels, num_classes, fractions, num_subsets: int,
                      seed: int, standardize=True,
                      cross_validation_below=CROSS_VALIDATION_BELOW) -> dict:
  """For each fraction (`{prefix}_label_fraction`), top-1 test accuracy of
  probes fitted on `num_subsets` class-balanced subsets (seeds seed,
  seed + 1, ...): the mean, the standard deviation across subsets (0 for
  one), each subset's, the labels per subset and each subset's chosen C."""
  train_features = np.asarray(train_features, np.float32)
  test_features = np.asarray(test_features, np.float32)
  train_labels = np.asarray(train_labels, np.int64)
  if standardize:
    train_features, test_features = probe.standardized(train_features,
                                                       test_features)
  tasks = [(fraction, subset_seed) for fraction in fractions
           for subset_seed in range(seed, seed + num_subsets)]
  rows = {task: subsets.label_fraction_indices(train_labels, *task)
          for task in tasks}

  def test_accuracy(task):
    fraction, subset_seed = task
    fitted = probe.linear_probe(
        train_features[rows[task]], train_labels[rows[task]], test_features,
        num_classes, standardize=False, seed=subset_seed,
        cross_validate=len(rows[task]) < cross_validation_below)
    return features.accuracy(fitted.scores, test_labels), fitted.c

  workers = probe.fit_workers(
      max(map(len, rows.values()), default=0) * train_features.shape[1])
  # The largest subsets first: the last to finish are then short.
  order = sorted(tasks, key=lambda task: -len(rows[task]))
  with probe.fitting_threads(workers), futures.ThreadPoolExecutor(
      workers) as pool:
    fitted = dict(zip(order, pool.map(test_accuracy, order)))
  results = {}
  for fraction in fractions:
    own = [task for task in tasks if task[0] == fraction]
    accuracies = [fitted[task][0] for task in own]
    prefix = evaluator_names.few_label_prefix(fraction)
    results.update({
        f'{prefix}_label_fraction': fraction,
        f'{prefix}_top_1_accuracy': float(np.mean(accuracies)),
        f'{prefix}_top_1_accuracy_std': float(
            np.std(accuracies, ddof=1) if num_subsets > 1 else 0.0),
        f'{prefix}_top_1_accuracies': accuracies,
        f'{prefix}_train_labels': len(rows[own[-1]]),
        f'{prefix}_c': [fitted[task][1] for task in own]})
  return results
