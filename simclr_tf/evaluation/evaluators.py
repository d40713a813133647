"""The evaluators of a run: supervised-head accuracy, kNN and linear probe
on frozen features, and the baselines (raw pixels; the same architecture
with random weights at standard initialisation), collected into the dict
that result.json holds."""

import dataclasses
import time

from absl import logging
import keras
import numpy as np

from simclr_tf.inputs import sources
from simclr_tf.evaluation import features
from simclr_tf.evaluation import knn as knn_lib
from simclr_tf.evaluation import probe as probe_lib
from simclr_tf.network import model as model_lib
from simclr_tf.run_context import Run
from simclr_tf.settings.config import RunConfig


def knn_metrics(run: Run, bank, bank_labels, test_features,
                test_labels) -> dict:
  """The kNN monitor's top-1 / top-5 accuracy against a feature bank."""
  scores = knn_lib.knn_scores(
      bank, bank_labels, test_features,
      run.source.num_classes, k=run.config.eval.knn_k,
      temperature=run.config.eval.knn_temperature)
  return {'knn_top_1_accuracy': features.accuracy(scores, test_labels, 1),
          'knn_top_5_accuracy': features.accuracy(scores, test_labels, 5)}


def probe_metrics(run: Run, train_features, train_labels, test_features,
                  test_labels, standardize=True) -> dict:
  """The converged linear probe's test metrics."""
  fitted = probe_lib.linear_probe(
      train_features, train_labels, test_features, run.source.num_classes,
      standardize=standardize, seed=run.config.data.seed)
  if not fitted.converged:
    logging.warning('The linear probe stopped at its iteration limit before '
                    'converging; its accuracy may be understated.')
  return fitted.metrics(test_labels)


def feature_metrics(run: Run, model, knn: bool = True,
                    probe: bool = False) -> dict:
  """kNN and linear-probe accuracy of `model`'s frozen features.

  The kNN bank holds the features of `knn_train_examples` training examples
  (float16) and the probe trains on `probe_train_examples`: both seeded
  random subsets of one order, so one pass extracts both.
  """
  if not (knn or probe):
    return {}
  started = time.time()
  eval_config = run.config.eval
  knn_count = eval_config.knn_train_examples if knn else 0
  probe_count = eval_config.probe_train_examples if probe else 0
  unlimited = (knn and knn_count <= 0) or (probe and probe_count <= 0)
  subset = run.train_subset(0 if unlimited else max(knn_count, probe_count))
  train_x, train_y = features.extract_features(
      model, run.strategy,
      run.eval_data(run.config.data.train_split, subset.indices),
      np.float32 if probe else np.float16)
  test_x, test_y = features.extract_features(
      model, run.strategy, run.eval_data(run.eval_split))
  results = {}
  # eval_steps may have cut the extraction short: ranks of what came back.
  ranks = subset.ranks[:len(train_y)]
  # How many training labels each evaluation fitted on.
  if knn:
    keep = ranks < knn_count if knn_count > 0 else slice(None)
    results.update(knn_metrics(run, knn_lib.feature_bank(train_x[keep]),
                               train_y[keep], test_x, test_y))
    results['knn_train_labels'] = len(train_y[keep])
  if probe:
    keep = ranks < probe_count if probe_count > 0 else slice(None)
    results.update(probe_metrics(run, train_x[keep], train_y[keep], test_x,
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
  return model_lib.create(dataclasses.replace(config.model, encoder=encoder),
                          config.augment.image_size)


def pixel_metrics(run: Run) -> dict:
  """The raw-pixel baseline: the same probe on the evaluation-preprocessed
  pixels in [0, 1] (not standardised) and kNN on them."""
  subset = run.train_subset(run.config.eval.probe_train_examples)
  train_x, train_y = features.extract_pixels(
      run.eval_data(run.config.data.train_split, subset.indices))
  test_x, test_y = features.extract_pixels(run.eval_data(run.eval_split))
  results = probe_metrics(run, train_x, train_y, test_x, test_y,
                          standardize=False)
  results['linear_probe_train_labels'] = len(train_y)
  if run.config.eval.knn:
    results.update(knn_metrics(run, knn_lib.feature_bank(train_x), train_y,
                               test_x, test_y))
    results['knn_train_labels'] = len(train_y)
  return results


def evaluate_model(run: Run, model, global_step: int) -> dict:
  """Everything result.json holds for `model` at `global_step`."""
  sources.require_labels(run.source, 'evaluation')
  config = run.config.eval
  result = {'global_step': global_step, 'eval_split': run.eval_split}
  has_head = model.supervised_head is not None
  if has_head:
    result.update(features.label_accuracy(model, run.strategy,
                                          run.eval_data(run.eval_split)))
  # The baselines have no trained head: compare probes.
  probe = config.linear_probe or config.random_baseline or not has_head
  result.update(feature_metrics(run, model, knn=config.knn, probe=probe))
  if not has_head:  # Linear evaluation then comes from the probe.
    result['label_top_1_accuracy'] = result['linear_probe_top_1_accuracy']
    result['label_top_5_accuracy'] = result['linear_probe_top_5_accuracy']
  if config.random_baseline:
    with run.strategy.scope():
      random_model = standard_init_model(run.config)
    baseline = feature_metrics(run, random_model, knn=config.knn, probe=True)
    result.update({f'random_init_{k}': v for k, v in baseline.items()})
    result.update({f'raw_pixels_{k}': v
                   for k, v in pixel_metrics(run).items()})
  return result


def print_result(result: dict):
  """A short table; with baselines, learned next to random weights at
  standard initialisation and raw pixels, probed the same way."""
  rows = [('linear eval top-1 (supervised head)', 'label_top_1_accuracy'),
          ('linear probe top-1 (frozen features)',
           'linear_probe_top_1_accuracy'),
          ('kNN top-1 (frozen features)', 'knn_top_1_accuracy')]
  columns = [('learned', ''), ('random', 'random_init_'),
             ('pixels', 'raw_pixels_')]
  columns = [(name, prefix) for name, prefix in columns
             if any(k.startswith(prefix) for k in result)]
  lines = [f'Results at step {result["global_step"]} on '
           f'{result.get("num_eval_examples", "")} {result["eval_split"]} '
           'images:',
           f'{"":40s}' + ''.join(f' {name:>8s}' for name, _ in columns)]
  for title, key in rows:
    if key not in result:
      continue
    values = [result.get(prefix + key) for _, prefix in columns]
    lines.append(f'{title:40s}' + ''.join(
        f' {value:8.4f}' if value is not None else f' {"":8s}'
        for value in values))
  print('\n'.join(lines), flush=True)
