"""SavedModel export for TF Serving and TF Hub-style reuse.

`<model_dir>/saved_model/<global_step>/` holds:
* signature `serving_default`: `images` float32 [batch, size, size, 3] in
  [0, 1] -> `default` (= `final_avg_pool`), `final_avg_pool`,
  `proj_head_output`, `logits_sup`, `probabilities` (the last three when the
  model has those heads);
* signature `serving_bytes`: `image_bytes` string [batch] of encoded
  JPEG/PNG/BMP/GIF, decoded and given the evaluation preprocessing inside;
* a reusable object: `obj(images, training=False)` -> features, with
  `variables`, `trainable_variables` and `regularization_losses`, for
  `hub.KerasLayer(path, trainable=True)`;
* `export.json` beside `saved_model.pb`: the precision the export computes
  in, the one the model was trained in, the step and the image size.

An export computes in float32 unless asked otherwise, whatever the model
was trained in: a bfloat16 graph runs emulated, several times slower, on
CPUs without bfloat16 units, and its features would depend on the machine
that exported it.
"""

import dataclasses
import os
import time

from absl import logging
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.config import DEFAULT_MAX_IMAGE_PIXELS
from simclr_tf.inputs import augment
from simclr_tf.network.model import SimCLRModel, create_model
from simclr_tf.serving import versions
from simclr_tf.storage import records

SAVED_MODEL_DIR = 'saved_model'
RECORD_FILE = 'export.json'


def _unsigned(encoded, offset, length, little_endian):
  """The unsigned integer stored in `length` bytes at `offset`."""
  data = tf.cast(tf.io.decode_raw(
      tf.strings.substr(encoded, offset, length), tf.uint8), tf.int64)
  weights = 256 ** tf.range(length, dtype=tf.int64)
  if not little_endian:
    weights = tf.reverse(weights, [0])
  return tf.reduce_sum(data * weights)


def header_size(encoded):
  """(height, width) read from the header of an encoded JPEG, PNG, GIF or
  BMP without decoding its pixels; (-1, -1) for anything else."""
  # Padding keeps every read below inside the string, however short.
  padded = tf.strings.join([encoded, tf.constant(b'\0' * 32)])

  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded, output_type=tf.int64)
    return shape[0], shape[1]

  def png():  # IHDR: width, height as big-endian uint32 at 16 and 20.
    return (_unsigned(padded, 20, 4, False), _unsigned(padded, 16, 4, False))

  def gif():  # Logical screen: width, height as little-endian uint16.
    return _unsigned(padded, 8, 2, True), _unsigned(padded, 6, 2, True)

  def bmp():  # BITMAPINFOHEADER: int32 width, height (negative: top-down).
    def signed(value):
      return tf.where(value >= 2**31, 2**32 - value, value)
    return (signed(_unsigned(padded, 22, 4, True)),
            signed(_unsigned(padded, 18, 4, True)))

  def unknown():
    return tf.constant(-1, tf.int64), tf.constant(-1, tf.int64)

  magic = tf.strings.substr(padded, 0, 8)
  return tf.case([
      (tf.io.is_jpeg(encoded), jpeg),
      (tf.equal(magic, b'\x89PNG\r\n\x1a\n'), png),
      (tf.equal(tf.strings.substr(magic, 0, 4), b'GIF8'), gif),
      (tf.equal(tf.strings.substr(magic, 0, 2), b'BM'), bmp)],
      default=unknown)


def in_precision(model, compute_precision: str, image_size: int):
  """`model` if it computes in `compute_precision`, else a model of the same
  architecture and weights that does (its variables are float32 in both)."""
  if model.config.precision == compute_precision:
    return model
  twin = create_model(
      dataclasses.replace(model.config, precision=compute_precision),
      image_size)
  for target, source in zip(twin.weights, model.weights, strict=True):
    target.assign(source)
  return twin


def _unique_names(variables):
  """Keras paths, made unique: TF1-style loaders (TF Serving, saved_model_cli
  run) restore variables by name, and Keras 3's own TF variable names repeat
  (`sim_clr_model/kernel`)."""
  names, seen = [], {}
  for variable in variables:
    name = variable.path
    seen[name] = seen.get(name, 0) + 1
    names.append(name if seen[name] == 1 else f'{name}_{seen[name] - 1}')
  return names


def _own_copies(variables, trainable):
  return [tf.Variable(v.numpy(), name=name, trainable=trainable)
          for v, name in zip(variables, _unique_names(variables))]


def build_module(model, augment_config: AugmentConfig,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
                 ) -> tf.Module:
  """The object that `tf.saved_model.save` writes, with its signatures.

  It owns uniquely named copies of the model's variables and runs the model
  through `stateless_call` on them, so the SavedModel holds nothing else.
  `serving_bytes` refuses images above `max_image_pixels` from their
  headers, before decoding (a small file can declare a huge image).
  """
  size = augment_config.image_size
  image_spec = tf.TensorSpec([None, size, size, 3], tf.float32, name='images')
  bytes_spec = tf.TensorSpec([None], tf.string, name='image_bytes')
  trainable = _own_copies(model.trainable_variables, trainable=True)
  non_trainable = _own_copies(model.non_trainable_variables, trainable=False)
  has_projection = model.projection_head.num_layers > 0

  def run_model(images, training):
    outputs, updated = model.stateless_call(trainable, non_trainable, images,
                                            training=training)
    if training:  # Batch-norm statistics move when fine-tuned.
      for variable, value in zip(non_trainable, updated):
        variable.assign(value)
    # The contract is float32 whatever precision the model computes in.
    return {name: tf.cast(value, tf.float32)
            for name, value in outputs.items()}

  # Traced once, then called by `serving_bytes` and by the inference path
  # of `__call__`: each trace of the model takes seconds.
  @tf.function(input_signature=[image_spec])
  def serving_default(images):
    outputs = run_model(images, training=False)
    result = {'default': outputs['final_avg_pool'],
              'final_avg_pool': outputs['final_avg_pool']}
    if has_projection:
      result['proj_head_output'] = outputs['proj_head_output']
    if 'logits_sup' in outputs:
      result['logits_sup'] = outputs['logits_sup']
      result['probabilities'] = tf.nn.softmax(outputs['logits_sup'])
    return result

  # A plain trackable root: hub.KerasLayer reads these attributes. Its call
  # returns the encoder's features, so only the encoder's variables are
  # trainable through it (fine-tuning would find no gradient for a head's).
  encoder = {id(v) for v in model.encoder_variables}
  root = tf.train.Checkpoint()
  root.variables = trainable + non_trainable
  root.trainable_variables = [
      copy for copy, original in zip(trainable, model.trainable_variables)
      if id(original) in encoder]
  root.regularization_losses = []

  @tf.function
  def call(images, training=False):
    if not training:
      return serving_default(images)['final_avg_pool']
    return run_model(images, training=True)['final_avg_pool']

  call.get_concrete_function(image_spec, training=False)
  call.get_concrete_function(image_spec, training=True)
  root.__call__ = call

  def decode(item):
    encoded, index = item
    height, width = header_size(encoded)
    checks = [
        tf.debugging.Assert(height >= 0, [
            'serving_bytes: image_bytes[', index, '] is not a JPEG, PNG, '
            'GIF or BMP image.']),
        tf.debugging.Assert(height * width <= max_image_pixels, [
            'serving_bytes: image_bytes[', index, '] is', height, 'x', width,
            'pixels, more than the limit of', max_image_pixels,
            '; send a smaller image.'])]
    with tf.control_dependencies(checks):
      image = tf.io.decode_image(encoded, channels=3,
                                 expand_animations=False)
    image.set_shape([None, None, 3])
    return augment.eval_view(image, augment_config)

  @tf.function(input_signature=[bytes_spec])
  def serving_bytes(image_bytes):
    count = tf.size(image_bytes)
    with tf.control_dependencies([tf.debugging.Assert(count > 0, [
        'serving_bytes: the batch is empty; send at least one image.'])]):
      indices = tf.range(count)
    images = tf.map_fn(decode, (image_bytes, indices),
                       fn_output_signature=tf.TensorSpec([size, size, 3],
                                                         tf.float32))
    return serving_default(images)

  root.serving_default = serving_default
  root.serving_bytes = serving_bytes
  return root


def export(model, augment_config: AugmentConfig, model_dir: str,
           global_step: int, keep: int = 1,
           max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
           compute_precision: str = 'float32') -> str:
  """Writes `<model_dir>/saved_model/<global_step>/` atomically, computing in
  `compute_precision` whatever `model` computes in; keeps the newest `keep`
  exports. formats.export_all writes the other formats beside it."""
  prepared = prepare(model, augment_config, global_step, max_image_pixels,
                     compute_precision)
  return write(prepared.module, model_dir, global_step, keep,
               prepared.record)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What every export format is made from."""

  model: SimCLRModel  # The model in the export's compute precision.
  module: tf.Module  # build_module(model): the SavedModel's signatures.
  image_size: int
  record: dict  # What every format's export.json starts from.


def prepare(model, augment_config: AugmentConfig, global_step: int,
            max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
            compute_precision: str = 'float32') -> Prepared:
  """`model` ready to be written in any format."""
  served = in_precision(model, compute_precision, augment_config.image_size)
  return Prepared(
      served, build_module(served, augment_config, max_image_pixels),
      augment_config.image_size,
      {'compute_precision': compute_precision,
       'trained_precision': model.config.precision,
       'global_step': global_step, 'image_size': augment_config.image_size})


def write(root, model_dir: str, global_step: int, keep: int,
          record: dict) -> str:
  """Saves `root` (build_module) with its signatures and `record` as
  export.json, atomically (versions.write); the SavedModel's path."""
  base = os.path.join(model_dir, SAVED_MODEL_DIR)
  start = time.time()

  def fill(directory):
    tf.saved_model.save(root, directory, signatures={
        'serving_default': root.serving_default,
        'serving_bytes': root.serving_bytes})
    records.write_json(os.path.join(directory, RECORD_FILE), record)

  logging.info('Exporting step %d to %s, computing in %s.', global_step,
               base, record['compute_precision'])
  final = versions.write(base, global_step, fill)
  logging.info('Exported SavedModel to %s in %.1f s.', final,
               time.time() - start)
  versions.keep_newest(base, keep)
  return final
