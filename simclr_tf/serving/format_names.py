"""What --export_formats can write, each under <model_dir>/<format>/<step>/
(docs/serving.md), and the packages each needs beyond the runtime's
(requirements-export.txt). No TensorFlow: the command line checks
--export_formats with these before it starts."""

EXPORT_FORMATS = ('saved_model', 'onnx', 'tflite', 'tflite_int8', 'torch')
# --export_formats=none: training writes no export (`--mode=export` writes
# one from any checkpoint later).
NO_EXPORT = 'none'
# Format -> {import name: package to install}.
EXPORT_PACKAGES = {
    'onnx': {'tf2onnx': 'tf2onnx', 'onnx': 'onnx',
             'onnxruntime': 'onnxruntime'},
    'tflite': {'ai_edge_litert': 'ai-edge-litert'},
    'tflite_int8': {'ai_edge_litert': 'ai-edge-litert'},
    'torch': {'torch': 'torch'},
}


def export_formats(value: str) -> tuple[str, ...]:
  """The formats of an --export_formats value, in the order given (none
  for `none`)."""
  names = tuple(name.strip() for name in value.split(',') if name.strip())
  return () if names == (NO_EXPORT,) else names
