"""Baseline metrics computed once and then reused.

The raw-pixel baseline is the same for every run on a dataset, and the
random-weights baseline the same for every run of an architecture and seed,
so their metrics are kept under `--data_dir`/baselines/: one JSON file per
key, named by the key's digest and holding the key itself. A run whose key
differs in anything the metrics depend on (the data, splits, seed,
preprocessing, evaluation settings, library versions, this package's code;
for random weights the architecture, precision, replica count and the
processor that computes them) computes and stores its own. Delete the folder
to recompute everything.
"""

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import tempfile
import time

from absl import logging
import keras
import numpy as np
import sklearn
import tensorflow as tf

from simclr_tf.devices import precision
from simclr_tf.evaluation import probe
from simclr_tf.evaluation.knn import KNN_K_GRID, KNN_TEMPERATURE_GRID
from simclr_tf.run_context import RunContext

DIRECTORY = 'baselines'
KINDS = ('raw_pixels', 'random_init')


@functools.cache
def code_digest(package: pathlib.Path | None = None) -> str:
  """A digest of every Python file of this package (or `package`): any
  change to the code a baseline runs through (evaluators, probe, model,
  kernels) makes a new key."""
  package = package or pathlib.Path(__file__).resolve().parents[1]
  digest = hashlib.sha256()
  for path in sorted(package.rglob('*.py')):
    digest.update(f'{path.relative_to(package)}\n'.encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()[:32]


def key_of(kind: str, context: RunContext, knn: bool) -> dict | None:
  """What the `kind` baseline's metrics depend on, or None when they cannot
  be reused (a source without a fingerprint, several workers)."""
  assert kind in KINDS, kind
  fingerprint = context.source.fingerprint()
  if fingerprint is None or context.multi_worker:
    return None
  config = context.config
  evaluation = config.eval
  key = {
      'baseline': kind, 'code': code_digest(), 'data': fingerprint,
      'train_split': config.data.train_split, 'eval_split': context.eval_split,
      # The fine-tuning subset a probe may fit on; None: the whole split.
      'labeled_examples': _digest(context.labeled_indices),
      'seed': config.data.seed, 'image_size': config.augment.image_size,
      'eval_crop_proportion': config.augment.eval_crop_proportion,
      'knn': knn, 'knn_k': evaluation.knn_k,
      'knn_temperature': evaluation.knn_temperature,
      'knn_train_examples': evaluation.knn_train_examples,
      'probe_train_examples': evaluation.probe_train_examples,
      'probe_c_grid': list(probe.PROBE_C_GRID),
      'probe_max_iter': probe.PROBE_MAX_ITER,
      'probe_folds': probe.PROBE_FOLDS,
      'label_fractions': evaluation.label_fractions,
      'label_fraction_subsets': evaluation.label_fraction_subsets,
      # k or temperature 0: chosen from these.
      'knn_k_grid': list(KNN_K_GRID),
      'knn_temperature_grid': list(KNN_TEMPERATURE_GRID),
      'eval_batch_size': evaluation.eval_batch_size,
      'eval_steps': evaluation.eval_steps,
      'libraries': {'keras': keras.__version__, 'numpy': np.__version__,
                    'scikit-learn': sklearn.__version__,
                    'tensorflow': tf.__version__},
  }
  if kind == 'random_init':
    key['model'] = dataclasses.asdict(config.model)  # Precision included.
    key['replicas'] = context.strategy.num_replicas_in_sync
    key['device'] = precision.device_kind(context.strategy)
  return json.loads(json.dumps(key, sort_keys=True))  # Tuples as lists.


def _digest(indices) -> str | None:
  if indices is None:
    return None
  return hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()


def path_of(data_dir: str, key: dict) -> str:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
  return os.path.join(data_dir, DIRECTORY,
                      f'{key["baseline"]}-{digest.hexdigest()[:16]}.json')


def load(path: str, key: dict) -> dict | None:
  """The metrics stored for `key` at `path`, or None (absent, unreadable or
  another key's)."""
  try:
    with open(path) as f:
      stored = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    logging.warning('Ignoring the baseline file %s (%s); computing it again.',
                    path, e)
    return None
  if not isinstance(stored, dict) or stored.get('key') != key or not (
      isinstance(stored.get('metrics'), dict)):
    return None
  return stored['metrics']


def store(path: str, key: dict, metrics: dict, seconds: float):
  """Writes the file whole or not at all (a temporary file renamed into
  place); a folder that cannot be written costs only the reuse."""
  content = {'key': key, 'metrics': metrics,
             'computed_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
             'seconds': round(seconds, 1)}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(
        'w', dir=os.path.dirname(path), suffix='.tmp', delete=False) as f:
      json.dump(content, f, indent=1, sort_keys=True)
    os.replace(f.name, path)
  except OSError as e:
    logging.warning('Could not keep the baseline in %s (%s); the next run '
                    'computes it again.', path, e)


def cached(kind: str, context: RunContext, knn: bool, compute) -> dict:
  """`compute()`'s metrics for the `kind` baseline, read from the cache
  when an earlier run stored them under the same key."""
  key = key_of(kind, context, knn)
  if key is None:
    return compute()
  path = path_of(context.config.data.data_dir, key)
  metrics = load(path, key)
  if metrics is not None:
    logging.info('Baseline %s: reused from %s.', kind, path)
    return metrics
  started = time.time()
  metrics = compute()
  if context.chief:
    store(path, key, metrics, time.time() - started)
  return metrics
