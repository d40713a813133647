"""`--export_formats=tflite` and `tflite_int8`: serving_default as a TFLite
(LiteRT) flat buffer, run by ai-edge-litert's interpreter.

`tflite/<step>/model.tflite` computes in float32; `tflite_int8/<step>/` is
the same model with dynamic-range quantisation (int8 weights, activations
quantised on the fly), about a quarter of the size, with features that
differ by more than the float32 formats' tolerance (docs/serving.md gives
its cost in linear-probe accuracy). Both take `images` float32 [batch, size,
size, 3] in [0, 1] through the signature `serving_default`.
"""

import os

import numpy as np
import tensorflow as tf

FILE = 'model.tflite'
SIGNATURE = 'serving_default'


def write(prepared, directory: str, int8: bool = False):
  """Converts an export.Prepared's serving_default to LiteRT (`int8`:
  weights and activations quantised on the fly)."""
  root = prepared.module
  function = root.serving_default.get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function],
                                                             root)
  if int8:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  with open(os.path.join(directory, FILE), 'wb') as f:
    f.write(converter.convert())


def infer(directory: str, images: np.ndarray) -> dict:
  """The outputs of `model.tflite` on NHWC `images`."""
  # pylint: disable=g-import-not-at-top
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=os.path.join(directory, FILE))
  runner = interpreter.get_signature_runner(SIGNATURE)
  return runner(images=images)
