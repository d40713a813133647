"""The evaluators a run names (`EvalConfig.evaluators`), each a small
function `(context, model, names) -> iterator of Metric`, as big_vision's
evaluators yield theirs:

* `supervised_head`: top-1 / top-5 of the supervised head;
* `knn` and `linear_probe`: on frozen features (one extraction serves both);
* `random_init`: the same architecture with random weights at standard
  initialisation, probed the same way;
* `raw_pixels`: the same probe and kNN on the pixels.

The baselines do not depend on the model evaluated: baseline_cache.py
keeps their metrics under --data_dir for the next run with the same data,
architecture and settings. The pixel baseline runs side by side with the
others (ALONGSIDE).

`evaluate` runs them; result.json and the result table (report.py) are
built from the metrics they yield.
"""

from collections.abc import Iterator

import dataclasses
import threading
import time

from absl import logging
import keras
import numpy as np

from simclr_tf.config import RunConfig
from simclr_tf.evaluation import baseline_cache
from simclr_tf.evaluation import evaluator_names
from simclr_tf.evaluation import features
from simclr_tf.evaluation.few_labels import few_label_metrics
from simclr_tf.evaluation.knn import choose_k_and_temperature
from simclr_tf.evaluation.knn import feature_bank, knn_scores
from simclr_tf.evaluation.probe import linear_probe, standardized
from simclr_tf.inputs import sources
from simclr_tf.network.model import create_model
from simclr_tf.run_context import RunContext


@dataclasses.dataclass(frozen=True)
class Metric:
  """One value an evaluator yields."""

  name: str  # knn_top_1_accuracy, ...
  value: float | int | str | list  # A list: one value per subset.
  # None: of the model evaluated; else the baseline's ('random_init',
  # 'raw_pixels'), which result.json keys as a prefix.
  baseline: str | None = None

  @property
  def key(self) -> str:
    return f'{self.baseline}_{self.name}' if self.baseline else self.name


def as_metrics(values: dict, baseline: str | None = None) -> list[Metric]:
  return [Metric(name, value, baseline) for name, value in values.items()]


def knn_metrics(context: RunContext, bank, bank_labels, test_features,
                test_labels) -> dict:
  """kNN top-1 / top-5 accuracy against a feature bank, with the k and
  temperature the configuration gives or, where it gives 0, those that
  classify held-out training features best."""
  eval_config = context.config.eval
  num_classes = context.source.num_classes
  choice = choose_k_and_temperature(
      bank, bank_labels, num_classes, k=eval_config.knn_k or None,
      temperature=eval_config.knn_temperature or None,
      seed=context.config.data.seed)
  scores = knn_scores(bank, bank_labels, test_features, num_classes,
                      k=choice.k, temperature=choice.temperature)
  results = {'knn_top_1_accuracy': features.accuracy(scores, test_labels, 1),
             'knn_top_5_accuracy': features.accuracy(scores, test_labels, 5),
             'knn_k': choice.k, 'knn_temperature': choice.temperature}
  if choice.validation_accuracy is not None:  # Chosen, not given.
    logging.info('kNN: k=%d, temperature %g chosen on held-out training '
                 'features (accuracy %.4f).', choice.k, choice.temperature,
                 choice.validation_accuracy)
    results['knn_validation_accuracy'] = choice.validation_accuracy
  return results


def probe_metrics(context: RunContext, train_features, train_labels,
                  test_features, test_labels, standardize=True) -> dict:
  """The converged linear probe's test metrics, on every training label and
  on the configuration's label fractions."""
  eval_config = context.config.eval
  num_classes = context.source.num_classes
  train_features = np.asarray(train_features, np.float32)
  test_features = np.asarray(test_features, np.float32)
  if standardize:  # Once, for the probe on every label and on a few.
    train_features, test_features = standardized(train_features,
                                                 test_features)
  fitted = linear_probe(
      train_features, train_labels, test_features, num_classes,
      standardize=False, seed=context.config.data.seed)
  if not fitted.converged:
    logging.warning('The linear probe stopped at its iteration limit before '
                    'converging; its accuracy may be understated.')
  results = fitted.metrics(test_labels)
  results.update(few_label_metrics(
      train_features, train_labels, test_features, test_labels, num_classes,
      evaluator_names.label_fractions(eval_config.label_fractions),
      eval_config.label_fraction_subsets, context.config.data.seed,
      standardize=False))
  return results


def feature_metrics(context: RunContext, model, knn: bool = True,
                    probe: bool = False) -> dict:
  """kNN and linear-probe accuracy of `model`'s frozen features.

  The kNN bank holds the features of `knn_train_examples` training examples
  (float16) and the probe trains on `probe_train_examples`: both seeded
  random subsets of one order, so one pass extracts both.
  """
  if not (knn or probe):
    return {}
  started = time.time()
  eval_config = context.config.eval
  knn_count = eval_config.knn_train_examples if knn else 0
  probe_count = eval_config.probe_train_examples if probe else 0
  unlimited = (knn and knn_count <= 0) or (probe and probe_count <= 0)
  subset = context.train_subset(0 if unlimited else max(knn_count, probe_count))
  train_x, train_y = features.extract_features(
      model, context.strategy,
      context.eval_data(context.config.data.train_split, subset.indices),
      np.float32 if probe else np.float16)
  test_x, test_y = features.extract_features(
      model, context.strategy, context.eval_data(context.eval_split))
  results = {}
  # eval_steps may have cut the extraction short: ranks of what came back.
  ranks = subset.ranks[:len(train_y)]
  # How many training labels each evaluation fitted on.
  if knn:
    keep = ranks < knn_count if knn_count > 0 else slice(None)
    results.update(knn_metrics(context, feature_bank(train_x[keep]),
                               train_y[keep], test_x, test_y))
    results['knn_train_labels'] = len(train_y[keep])
  if probe:
    keep = ranks < probe_count if probe_count > 0 else slice(None)
    results.update(probe_metrics(context, train_x[keep], train_y[keep], test_x,
                                 test_y))
    results['linear_probe_train_labels'] = len(train_y[keep])
  logging.info('Feature evaluation (%d train, %d test) took %.0f s.',
               len(train_y), len(test_y), time.time() - started)
  return results


def standard_init_model(config: RunConfig):
  """The run's architecture with random weights at standard initialisation:
  gamma = 1 in every batch norm (not the zero-gamma start that training
  uses, whose residual branches all output 0), statistics as initialised."""
  encoder = dataclasses.replace(config.model.encoder,
                                zero_init_residual=False)
  keras.utils.set_random_seed(config.data.seed)
  return create_model(dataclasses.replace(config.model, encoder=encoder),
                      config.augment.image_size)


def pixel_metrics(context: RunContext, knn: bool = True) -> dict:
  """The raw-pixel baseline: the same probe on the evaluation-preprocessed
  pixels in [0, 1] (not standardised), and kNN on them."""
  subset = context.train_subset(context.config.eval.probe_train_examples)
  train_x, train_y = features.extract_pixels(
      context.eval_data(context.config.data.train_split, subset.indices))
  test_x, test_y = features.extract_pixels(
      context.eval_data(context.eval_split))
  results = probe_metrics(context, train_x, train_y, test_x, test_y,
                          standardize=False)
  results['linear_probe_train_labels'] = len(train_y)
  if knn:
    results.update(knn_metrics(context, feature_bank(train_x), train_y,
                               test_x, test_y))
    results['knn_train_labels'] = len(train_y)
  return results


def supervised_head(context: RunContext, model, names) -> Iterator[Metric]:
  """Top-1 / top-5 of the model's supervised head (none without one)."""
  del names
  if model.supervised_head is not None:
    yield from as_metrics(features.label_accuracy(
        model, context.strategy, context.eval_data(context.eval_split)))


def frozen_features(context: RunContext, model, names) -> Iterator[Metric]:
  """kNN and the linear probe, as `names` ask, from one extraction. Without
  a supervised head, the probe is the model's linear evaluation."""
  probe = 'linear_probe' in names
  results = feature_metrics(context, model, knn='knn' in names, probe=probe)
  if probe and model.supervised_head is None:
    for k in (1, 5):
      results[f'label_top_{k}_accuracy'] = results[
          f'linear_probe_top_{k}_accuracy']
  yield from as_metrics(results)


def random_init(context: RunContext, model, names) -> Iterator[Metric]:
  """The baseline of random weights: the same kNN and probe."""
  del model
  knn = 'knn' in names

  def compute():
    with context.strategy.scope():
      random_model = standard_init_model(context.config)
    return feature_metrics(context, random_model, knn=knn, probe=True)

  yield from as_metrics(
      baseline_cache.cached('random_init', context, knn, compute),
      'random_init')


def raw_pixels(context: RunContext, model, names) -> Iterator[Metric]:
  """The baseline of pixels: the same probe and kNN."""
  del model
  knn = 'knn' in names
  yield from as_metrics(
      baseline_cache.cached('raw_pixels', context, knn,
                            lambda: pixel_metrics(context, knn=knn)),
      'raw_pixels')


EVALUATORS = {'supervised_head': supervised_head, 'knn': frozen_features,
              'linear_probe': frozen_features, 'random_init': random_init,
              'raw_pixels': raw_pixels}
assert set(EVALUATORS) == set(evaluator_names.EVALUATORS)


# Evaluators run in a thread of their own, side by side with the others:
# the pixel baseline needs no model (nor the distribution strategy), and
# most of its time is scikit-learn fits on one core, while the others
# extract features with TensorFlow or fit on the other core.
ALONGSIDE = ('raw_pixels',)


class _Alongside(threading.Thread):
  """One evaluator's metrics and seconds, computed in a daemon thread (an
  interrupted run does not wait for it)."""

  def __init__(self, compute):
    super().__init__(daemon=True)
    self._compute = compute
    self._result = self._error = None
    self.start()

  def run(self):
    try:
      self._result = self._compute()
    except BaseException as e:  # pylint: disable=broad-except
      self._error = e

  def result(self):
    self.join()
    if self._error is not None:
      raise self._error
    return self._result


def evaluate(context: RunContext, model, global_step: int,
             clock=time.perf_counter, alongside=ALONGSIDE) -> list[Metric]:
  """What the run's evaluators yield for `model` at `global_step`, and
  each column's `evaluation_seconds` by `clock`: the model's (its
  evaluators together) and each baseline's (about 0 when read back).
  Evaluators named in `alongside` run side by side with the rest, so the
  columns' seconds may sum to more than the evaluation took."""
  sources.require_labels(context.source, 'evaluation')
  # The resolver names them (from --knn, --linear_probe, ... unless given).
  names = context.config.eval.evaluators
  if names is None:
    raise ValueError('The configuration names no evaluators: resolve it '
                     '(settings/resolver.py) or give eval.evaluators.')

  def run(evaluator):
    started = clock()
    yielded = list(evaluator(context, model, names))
    return yielded, clock() - started

  evaluators = []  # One call serves knn and linear_probe.
  for name in names:
    if EVALUATORS[name] not in evaluators:
      evaluators.append(EVALUATORS[name])
  beside = {EVALUATORS[name] for name in alongside}
  side = {e: _Alongside(lambda e=e: run(e)) for e in evaluators
          if e in beside}
  here = {e: run(e) for e in evaluators if e not in side}
  done = [side[e].result() if e in side else here[e] for e in evaluators]
  metrics = [Metric('global_step', global_step),
             Metric('eval_split', context.eval_split)]
  seconds = {}  # Per column: None (the model) or the baseline's name.
  for yielded, took in done:
    column = yielded[0].baseline if yielded else None
    seconds[column] = seconds.get(column, 0.0) + took
    metrics += yielded
  metrics += [Metric('evaluation_seconds', int(round(value)), column)
              for column, value in seconds.items()]
  return metrics
