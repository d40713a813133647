"""The teacher of distillation: a fixed network whose class logits on each
training view are the student's targets.

`--teacher` names a run directory of this project (its latest checkpoint,
built as its flags.json records) or an exported SavedModel (its
serving_default signature's `logits_sup`). `describe` checks it without
building anything, before a run starts; `build` makes the callable that the
training step uses, under the run's strategy.
"""

import dataclasses
import os

from google.protobuf import message
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from simclr_tf.config import RunConfig
from simclr_tf.network.model import create_model
from simclr_tf.settings import registry
from simclr_tf.settings import resolver
from simclr_tf.settings.checks import UsageError
from simclr_tf.storage import checkpoints
from simclr_tf.storage import records

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
  # A run directory's latest checkpoint and its recorded settings; None
  # for a SavedModel.
  checkpoint: str | None = None
  settings: dict | None = None


def _run_spec(path: str) -> TeacherSpec:
  settings = resolver.read_settings(path)
  # Recorded before a setting existed: the value it had then.
  settings = {**registry.LEGACY_DEFAULTS, **settings} if settings else {}
  if not settings:
    raise UsageError(f'--teacher={path} holds checkpoints but no readable '
                     f'{records.FLAGS_FILE}: give a run directory of this '
                     'project, or an exported SavedModel.')
  config = registry.build({**settings, 'model_dir': path})
  if not config.model.supervised_head.num_classes or not (
      config.model.train_mode != 'pretrain' or
      config.model.supervised_head.lineareval_while_pretraining):
    raise UsageError(f'--teacher={path} has no supervised head, so no class '
                     'predictions; fine-tune it first (--train_mode=finetune '
                     '--checkpoint=' + path + ').')
  return TeacherSpec(path, config.model.supervised_head.num_classes,
                     config.augment.image_size,
                     checkpoint=checkpoints.latest_in(path),
                     settings=settings)


def _saved_model_spec(path: str) -> TeacherSpec:
  """From saved_model.pb's signature alone (no variables loaded)."""
  proto = saved_model_pb2.SavedModel()
  try:
    with tf.io.gfile.GFile(os.path.join(path, SAVED_MODEL_FILE), 'rb') as f:
      proto.ParseFromString(f.read())
    signature = proto.meta_graphs[0].signature_def[SIGNATURE]
  except (OSError, IndexError, KeyError, message.DecodeError) as e:
    raise UsageError(f'--teacher={path}: its {SAVED_MODEL_FILE} has no '
                     f'{SIGNATURE} signature ({type(e).__name__}).') from None
  if LOGITS not in signature.outputs or IMAGES not in signature.inputs:
    raise UsageError(
        f'--teacher={path}: its SavedModel gives no {LOGITS} for {IMAGES} (it '
        f'gives {", ".join(sorted(signature.outputs))}); export a model with '
        'a supervised head.')
  image_shape = [d.size for d in signature.inputs[IMAGES].tensor_shape.dim]
  logits_shape = signature.outputs[LOGITS].tensor_shape.dim
  return TeacherSpec(path, int(logits_shape[-1].size), int(image_shape[1]))


def describe(path: str) -> TeacherSpec:
  """The teacher at `path`, checked to give class logits; one line
  (UsageError) when it cannot be a teacher."""
  if not tf.io.gfile.isdir(path):
    raise UsageError(f'--teacher={path} is not a directory: give a run '
                     'directory or an exported SavedModel.')
  if tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_FILE)):
    return _saved_model_spec(path)
  if checkpoints.candidates(path):
    return _run_spec(path)
  raise UsageError(f'--teacher={path} holds neither checkpoints of a run nor '
                   f'a {SAVED_MODEL_FILE}.')


def check_fits(spec: TeacherSpec, config: RunConfig):
  """The teacher predicts the run's classes on the run's images."""
  classes = config.model.supervised_head.num_classes
  if spec.num_classes != classes:
    raise UsageError(
        f'--teacher={spec.path} predicts {spec.num_classes} classes; this '
        f'run\'s dataset has {classes or "no labels (give --num_classes)"}.')
  size = config.augment.image_size
  if spec.image_size != size:
    raise UsageError(
        f'--teacher={spec.path} takes {spec.image_size} px images; this run '
        f'trains on {size} px (--image_size={spec.image_size}).')


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
    config = registry.build({**spec.settings, 'model_dir': spec.path})
    self.model = create_model(
        dataclasses.replace(config.model, precision=precision),
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
