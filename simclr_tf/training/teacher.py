"""The teacher of distillation: a fixed network whose class logits on each
training view are the student's targets.

`--teacher` names a run directory of this project (its latest checkpoint,
its network as its flags.json records it) or an exported SavedModel (its
serving_default signature's `logits_sup`). The resolver describes it
(`TeacherSpec`, checked before a run starts); `build` makes the callable
that the training step uses, under the run's strategy.
"""

import dataclasses
import os

from google.protobuf import message
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from simclr_tf.config import ModelConfig
from simclr_tf.network.model import create_model

SAVED_MODEL_FILE = 'saved_model.pb'
SIGNATURE = 'serving_default'
IMAGES = 'images'
LOGITS = 'logits_sup'


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  """What `--teacher` holds."""

  path: str
  num_classes: int
  image_size: int
  # A run directory's latest checkpoint and the network its flags.json
  # records; None for a SavedModel.
  checkpoint: str | None = None
  model: ModelConfig | None = None


def is_saved_model(path: str) -> bool:
  return tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_FILE))


def saved_model_spec(path: str) -> TeacherSpec:
  """A SavedModel teacher from its saved_model.pb's signature alone (no
  variables loaded); ValueError, one line, when it gives no logits."""
  proto = saved_model_pb2.SavedModel()
  try:
    with tf.io.gfile.GFile(os.path.join(path, SAVED_MODEL_FILE), 'rb') as f:
      proto.ParseFromString(f.read())
    signature = proto.meta_graphs[0].signature_def[SIGNATURE]
  except (OSError, IndexError, KeyError, message.DecodeError) as e:
    raise ValueError(f'its {SAVED_MODEL_FILE} has no {SIGNATURE} signature '
                     f'({type(e).__name__})') from None
  if LOGITS not in signature.outputs or IMAGES not in signature.inputs:
    raise ValueError(
        f'its SavedModel gives no {LOGITS} for {IMAGES} (it gives '
        f'{", ".join(sorted(signature.outputs))}); export a model with a '
        'supervised head')
  image_shape = [d.size for d in signature.inputs[IMAGES].tensor_shape.dim]
  logits_shape = signature.outputs[LOGITS].tensor_shape.dim
  return TeacherSpec(path, int(logits_shape[-1].size), int(image_shape[1]))


class _SavedModelTeacher:
  """A SavedModel's logits; holds the loaded object, whose variables its
  signature uses."""

  def __init__(self, path: str):
    self.loaded = tf.saved_model.load(path)
    self.signature = self.loaded.signatures[SIGNATURE]

  @property
  def variables(self) -> list:
    return list(self.loaded.variables)

  def __call__(self, images):
    return tf.stop_gradient(
        self.signature(**{IMAGES: tf.cast(images, tf.float32)})[LOGITS])


class _RunTeacher:
  """A run's network, restored from its checkpoint, in inference mode."""

  def __init__(self, spec: TeacherSpec, precision: str):
    self.model = create_model(
        dataclasses.replace(spec.model, precision=precision),
        spec.image_size)
    status = tf.train.Checkpoint(model=self.model).read(spec.checkpoint)
    status.expect_partial().assert_existing_objects_matched()
    self.model.trainable = False

  @property
  def variables(self) -> list:
    return list(self.model.variables)

  def __call__(self, images):
    return tf.stop_gradient(self.model(images, training=False)['logits_sup'])


def build(spec: TeacherSpec, precision: str):
  """The teacher as a callable: images [N, size, size, 3] in [0, 1] -> its
  logits [N, C], in inference mode and without gradient; `variables` are
  its weights. A run's network computes in `precision` (the run's own), a
  SavedModel as it was exported. Call under the run's strategy scope."""
  if spec.checkpoint is None:
    return _SavedModelTeacher(spec.path)
  return _RunTeacher(spec, precision)
