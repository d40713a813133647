"""`--export_formats=onnx`: the inference graph of serving_default as ONNX,
converted by tf2onnx and run by onnxruntime.

`onnx/<step>/model.onnx` takes `images` float32 [batch, size, size, 3] in
[0, 1] (NHWC, as the SavedModel) and returns the outputs of serving_default
under the same names. Opset 17: tf2onnx converts to opsets up to 18
(default 15); 18 turned ReduceMean's axes (the global average pool, squeeze-
excitation, selective kernels) from an attribute into an input, so 17 is the
newest that runtimes implementing ONNX 1.12 (onnxruntime 1.13 on) still run.
"""

import logging
import os

import numpy as np

FILE = 'model.onnx'
OPSET = 17


def write(prepared, directory: str):
  """Converts an export.Prepared's serving_default to ONNX."""
  root = prepared.module
  # pylint: disable=g-import-not-at-top
  import onnx
  import tf2onnx
  # Its versions, opset and optimiser statistics are not the user's news.
  logging.getLogger('tf2onnx').setLevel(logging.WARNING)
  # tf2onnx names the graph's inputs and outputs after the function's
  # (images; default, final_avg_pool, ...).
  function = root.serving_default
  proto, _ = tf2onnx.convert.from_function(
      function, input_signature=function.input_signature, opset=OPSET)
  onnx.checker.check_model(proto)
  onnx.save(proto, os.path.join(directory, FILE))


def infer(directory: str, images: np.ndarray) -> dict:
  """The outputs of `model.onnx` on NHWC `images`, with onnxruntime."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(
      os.path.join(directory, FILE), providers=['CPUExecutionProvider'])
  names = [output.name for output in session.get_outputs()]
  return dict(zip(names, session.run(names, {'images': images})))
