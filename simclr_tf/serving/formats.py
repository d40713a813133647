"""Every format `--export_formats` asks for, each checked by its own runtime.

Each format lands in `<model_dir>/<format>/<global_step>/`, written
atomically (versions.write) and the newest `keep_hub_module_max` kept. Before
a format other than the SavedModel is published, its runtime (onnxruntime,
the LiteRT interpreter, PyTorch) runs it on seeded check images and its
outputs are compared with serving_default's, output by output: one that
differs by more than its format's tolerance of the output's scale
(TOLERANCE; INT8_TOLERANCE for tflite_int8) fails the export with nothing of
that format written. The differences are in the format's export.json.
"""

from collections.abc import Callable
import dataclasses
import functools
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from simclr_tf.config import RunConfig
from simclr_tf.serving import export
from simclr_tf.serving import format_names
from simclr_tf.serving import onnx_format
from simclr_tf.serving import tflite_format
from simclr_tf.serving import torch_format
from simclr_tf.serving import versions
from simclr_tf.storage import records

# Largest difference from serving_default allowed, relative to the largest
# magnitude of each output.
TOLERANCE = 1e-4
# int8 weights and activations quantised on the fly move the features by
# ~1% of their scale and the quickstart's class logits by up to 11%
# (docs/serving.md); a wrong conversion (a layer or a batch norm lost) moves
# an output by about its whole scale.
INT8_TOLERANCE = 0.25
CHECK_IMAGES = 4


class ExportError(ValueError):
  """A converted model that does not compute what the SavedModel does."""


@dataclasses.dataclass(frozen=True)
class Format:
  # write(export.Prepared, directory); infer(directory, images) -> outputs.
  write: Callable
  infer: Callable
  # How far from serving_default its outputs may be, relative to each
  # output's largest magnitude.
  tolerance: float = TOLERANCE


FORMATS = {
    'onnx': Format(onnx_format.write, onnx_format.infer),
    'tflite': Format(tflite_format.write, tflite_format.infer),
    'tflite_int8': Format(functools.partial(tflite_format.write, int8=True),
                          tflite_format.infer, tolerance=INT8_TOLERANCE),
    'torch': Format(torch_format.write, torch_format.infer),
}


def check_images(image_size: int, count: int = CHECK_IMAGES,
                 seed: int = 0) -> np.ndarray:
  """Seeded images in [0, 1]: no data is needed to export."""
  return np.random.default_rng(seed).random(
      (count, image_size, image_size, 3), dtype=np.float32)


def relative_differences(outputs: dict, reference: dict) -> dict:
  """{output: max |outputs - reference| / max |reference|} over every output
  of `reference`; an output that is missing or has another shape fails."""
  differences = {}
  for name, expected in reference.items():
    actual = outputs.get(name)
    if actual is None or np.shape(actual) != np.shape(expected):
      raise ExportError(
          f'the converted model\'s output {name!r} is '
          f'{"missing" if actual is None else np.shape(actual)}, not '
          f'{np.shape(expected)} as serving_default\'s.')
    scale = max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
    differences[name] = float(np.max(np.abs(actual - expected))) / scale
  return differences


def export_all(model, config: RunConfig, global_step: int) -> dict[str, str]:
  """Writes the run's --export_formats of `model` at `global_step` under
  its model_dir, computing in --export_precision; {format: path}."""
  train = config.train
  names = format_names.export_formats(train.export_formats)
  if not names:  # --export_formats=none.
    print(f'No export at step {global_step} (--export_formats=none): '
          '--mode=export writes one from any checkpoint.', flush=True)
    return {}
  prepared = export.prepare(model, config.augment, global_step,
                            config.data.max_image_pixels,
                            train.export_precision)
  keep = train.keep_hub_module_max
  paths = {}
  if 'saved_model' in names:
    paths['saved_model'] = export.write(prepared.module, train.model_dir,
                                        global_step, keep, prepared.record)
  others = [name for name in names if name != 'saved_model']
  if not others:
    return paths
  images = check_images(prepared.image_size)
  reference = {name: value.numpy() for name, value in
               prepared.module.serving_default(tf.constant(images)).items()}
  for name in others:
    paths[name] = _export_checked(name, prepared, train.model_dir,
                                  global_step, keep, images, reference)
  return paths


def _export_checked(name, prepared: export.Prepared, model_dir, global_step,
                    keep, images, reference) -> str:
  fmt = FORMATS[name]
  start = time.time()

  def fill(directory):
    fmt.write(prepared, directory)
    differences = relative_differences(fmt.infer(directory, images),
                                       reference)
    worst = max(differences, key=differences.get)
    if differences[worst] > fmt.tolerance:
      raise ExportError(
          f'the {name} export computes {worst} {differences[worst]:.1e} '
          f'(relative) away from the SavedModel, more than '
          f'{fmt.tolerance:g}; nothing was written. Please report it with '
          'the model\'s flags.json.')
    records.write_json(os.path.join(directory, export.RECORD_FILE), {
        **prepared.record, 'format': name,
        'check': {'images': f'{len(images)} seeded uniform images',
                  'tolerance': fmt.tolerance,
                  'max_relative_difference': differences}})

  base = os.path.join(model_dir, name)
  path = versions.write(base, global_step, fill)
  versions.keep_newest(base, keep)
  logging.info('Exported %s to %s in %.1f s.', name, path, time.time() - start)
  return path
