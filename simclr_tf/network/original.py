"""Checkpoints of the original google-research/simclr TF2 code.

The original saves `tf.train.Checkpoint(model=..., global_step=...,
optimizer=...)`, whose keys are the object paths of its Python attributes
and list indices, e.g.
`model/resnet_model/block_groups/0/layers/1/conv2d_bn_layers/2/conv2d/kernel`.
Its SavedModel export holds the same variables under other keys; they are
reached here through the SavedModel's object graph, by the same paths.

`read` loads either kind, and `infer_settings` reads the architecture off
the variables' paths and shapes (depth from the block counts, width from
the stem, selective kernels and squeeze-excitation from their variables,
the heads from theirs). original_variables.py copies them into a
`SimCLRModel` built with those settings.
"""

import collections
import dataclasses
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_tf.network import resnet
from simclr_tf.storage.checkpoints import CheckpointError

VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
RESNET = 'model/resnet_model'
STEM = f'{RESNET}/initial_conv_relu_max_pool'
GROUPS = f'{RESNET}/block_groups'
PROJECTION = 'model/_projection_head/linear_layers'
SUPERVISED = 'model/supervised_head/linear_layer/dense'
# The original's default selective-kernel ratio (SimCLRv2). Below 32
# channels the ratio does not show in the variables (the mixing layer has at
# least 32), so any ratio that reproduces them builds the same network.
DEFAULT_SK_RATIO = 0.0625
# SavedModel object-graph edges that list variables a second time (Keras'
# bookkeeping, the export's flat list) rather than by their owner's path.
_NOT_OWNER_EDGES = frozenset({
    'variables', 'trainable_variables', 'non_trainable_variables',
    'trainable_weights', 'non_trainable_weights', 'weights', 'keras_api',
    'trainable_variables_list', 'signatures', 'regularization_losses',
    '__call__'})


@dataclasses.dataclass(frozen=True)
class OriginalWeights:
  """The model variables of an original checkpoint or SavedModel."""

  path: str  # The checkpoint prefix or SavedModel directory that was read.
  shapes: dict  # Variable path (model/...) -> shape tuple.
  global_step: int
  reader: object = dataclasses.field(repr=False)
  keys: dict = dataclasses.field(repr=False)  # Variable path -> tensor key.

  def tensor(self, name: str) -> np.ndarray:
    return self.reader.get_tensor(self.keys[name])


# --- Reading ----------------------------------------------------------------


def read(path: str) -> OriginalWeights:
  """Reads a checkpoint prefix, a directory of checkpoints, a SavedModel
  directory (or a directory holding one as `saved_model/`, as the released
  models are laid out), or a `saved_model/` directory of numbered exports
  (the newest, as the original's run.py writes them)."""
  if tf.io.gfile.isdir(path):
    for directory in (path, os.path.join(path, 'saved_model')):
      if tf.io.gfile.exists(os.path.join(directory, 'saved_model.pb')):
        return _read_saved_model(directory)
    latest = tf.train.latest_checkpoint(path)
    if latest is not None:
      return _read_checkpoint(latest)
    exported = _newest_export(path)
    if exported is not None:
      return _read_saved_model(exported)
    raise CheckpointError(
        f'--checkpoint={path} holds neither a checkpoint (a "checkpoint" '
        'file) nor a SavedModel (saved_model.pb).')
  if tf.io.gfile.exists(path + '.index'):
    return _read_checkpoint(path)
  raise CheckpointError(f'--checkpoint={path}: neither a directory nor a '
                        'checkpoint prefix (no .index file).')


def _newest_export(path: str) -> str | None:
  for parent in (path, os.path.join(path, 'saved_model')):
    if not tf.io.gfile.isdir(parent):
      continue
    steps = [int(n.rstrip('/')) for n in tf.io.gfile.listdir(parent)
             if n.rstrip('/').isdigit() and tf.io.gfile.exists(
                 os.path.join(parent, n.rstrip('/'), 'saved_model.pb'))]
    if steps:
      return os.path.join(parent, str(max(steps)))
  return None


def _load(prefix: str):
  try:
    return tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise CheckpointError(f'{prefix} cannot be read as a checkpoint '
                          f'({first_line[:200]}).') from None


def _read_checkpoint(prefix: str) -> OriginalWeights:
  reader = _load(prefix)
  keys = {}
  for key in reader.get_variable_to_shape_map():
    if key.endswith(VALUE_SUFFIX) and '.OPTIMIZER_SLOT' not in key:
      keys[key[:-len(VALUE_SUFFIX)]] = key
  step_key = 'global_step' + VALUE_SUFFIX
  step = int(reader.get_tensor(step_key)) if reader.has_tensor(step_key) else 0
  return _weights(prefix, reader, keys, step)


def _read_saved_model(directory: str) -> OriginalWeights:
  reader = _load(os.path.join(directory, 'variables', 'variables'))
  if not reader.has_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'):
    raise CheckpointError(f'{directory}: the SavedModel\'s variables have no '
                          'object graph, so they cannot be matched to layers.')
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
  keys = {}
  for node_id, path in _owner_paths(graph).items():
    for attribute in graph.nodes[node_id].attributes:
      if attribute.name == 'VARIABLE_VALUE':
        keys[path] = attribute.checkpoint_key
  # The original exports to saved_model/<global step>/.
  name = os.path.basename(os.path.normpath(directory))
  return _weights(directory, reader, keys, int(name) if name.isdigit() else 0)


def _owner_paths(graph) -> dict:
  """{node id: path} by the first path breadth-first from the root, as a
  checkpoint names its variables, skipping edges that only list variables."""
  paths = {0: ''}
  queue = collections.deque([0])
  while queue:
    node_id = queue.popleft()
    for child in graph.nodes[node_id].children:
      name = child.local_name
      if (name in _NOT_OWNER_EDGES or name.startswith('call_and_return')
          or child.node_id in paths):
        continue
      paths[child.node_id] = f'{paths[node_id]}/{name}'.lstrip('/')
      queue.append(child.node_id)
  return paths


def _weights(path, reader, keys, step) -> OriginalWeights:
  shape_of = reader.get_variable_to_shape_map()
  model_keys = {name: key for name, key in keys.items()
                if name.startswith('model/')}
  if not any(name.startswith(RESNET + '/') for name in model_keys):
    raise CheckpointError(_not_original_message(path, shape_of))
  shapes = {name: tuple(shape_of[key]) for name, key in model_keys.items()}
  return OriginalWeights(path, shapes, step, reader, model_keys)


def _not_original_message(path, shape_of) -> str:
  names = sorted(k for k in shape_of if not k.startswith('_CHECKPOINTABLE'))
  if any(n.startswith('model/encoder/') for n in names):
    return (f'{path} is a checkpoint of simclr_tf itself, not of the original '
            'code: use it directly (--checkpoint for fine-tuning, --model_dir '
            'to evaluate or export); there is nothing to import.')
  if any(n.startswith(('base_model/', 'head_contrastive/')) for n in names):
    return (f'{path} is a TF1 checkpoint of the original code (variables '
            'such as base_model/...), which --mode=import does not read: '
            'import the TF2 SavedModel of the same model instead (gs://'
            'simclr-checkpoints-tf2/...).')
  example = names[0] if names else 'no variables at all'
  return (f'{path} is not a checkpoint of the original SimCLR TF2 code: it '
          f'has no {RESNET}/ variables (it has e.g. {example}).')


# --- Inferring the architecture -----------------------------------------------


def _children(shapes, prefix: str) -> set:
  """The path components directly below `prefix`."""
  start = len(prefix) + 1
  return {name[start:].split('/', 1)[0] for name in shapes
          if name.startswith(prefix + '/')}


def _indices(shapes, prefix: str) -> list:
  return sorted(int(c) for c in _children(shapes, prefix) if c.isdigit())


def _shape(weights, name):
  if name not in weights.shapes:
    raise CheckpointError(f'{weights.path} lacks the variable {name}, which '
                          'the original code writes for this architecture.')
  return weights.shapes[name]


def _ratio(pairs, minimum, preferred=None) -> float | None:
  """A ratio r with max(int(f * r), minimum) == c for every (f, c): the
  preferred one if it fits, else c / f of some pair (nudged up so that
  int() does not round it down)."""
  candidates = ([preferred] if preferred else []) + [
      c / f * (1 + 1e-12) for f, c in pairs if c > minimum]
  fits = lambda r: all(max(int(f * r), minimum) == c for f, c in pairs)
  for ratio in candidates:
    if fits(ratio):  # As written by a user (0.25, not 0.2500000002).
      return round(ratio, 6) if fits(round(ratio, 6)) else ratio
  return None


def infer_settings(weights: OriginalWeights,
                   ft_proj_selector: int | None = None) -> dict:
  """Settings (config.SETTINGS names) of the model that `weights` fit.

  `ft_proj_selector`: which projection layer feeds the supervised head, when
  the user says so; the variables show it only when widths differ, so it is
  otherwise the lowest layer whose width fits (0, the encoder output, as the
  original's default).
  """
  settings = _infer_encoder(weights)
  settings.update(_infer_heads(weights, ft_proj_selector))
  return settings


def _infer_encoder(weights) -> dict:
  shapes = weights.shapes
  stem_convs = [i for i in _indices(shapes, STEM)
                if f'{STEM}/{i}/conv2d/kernel' in shapes]
  kernels = [_shape(weights, f'{STEM}/{i}/conv2d/kernel') for i in stem_convs]
  if len(kernels) == 1 and kernels[0][0] == 3:
    stem = 'cifar'
  elif len(kernels) == 1 and kernels[0][0] == 7:
    stem = 'imagenet'
  elif len(kernels) == 3:
    stem = 'resnet_d'
  else:
    raise CheckpointError(
        f'{weights.path}: the stem has {len(kernels)} convolution(s) of sizes '
        f'{[k[:2] for k in kernels]}; the original builds one 3x3 (CIFAR), '
        'one 7x7, or three 3x3 (ResNet-D).')
  width_multiplier = kernels[-1][3] / 64

  groups = _indices(shapes, GROUPS)
  if groups != [0, 1, 2, 3]:
    raise CheckpointError(f'{weights.path}: expected block groups 0-3 under '
                          f'{GROUPS}/, found {groups}.')
  blocks = [f'{GROUPS}/{g}/layers/{b}' for g in groups
            for b in _indices(shapes, f'{GROUPS}/{g}/layers')]
  counts = tuple(len(_indices(shapes, f'{GROUPS}/{g}/layers'))
                 for g in groups)
  parts = _children(shapes, blocks[0])
  kind = ('basic' if 'conv2d_bn_layers' in parts else
          'bottleneck' if 'conv_relu_dropblock_layers' in parts else None)
  depth = next((d for d, spec in resnet.DEPTHS.items()
                if spec == (kind, counts)), None)
  if depth is None:
    raise CheckpointError(
        f'{weights.path}: {counts} {kind or "unknown"} blocks per group match '
        f'no ResNet depth of the original ({tuple(resnet.DEPTHS)}).')

  layers = 'conv2d_bn_layers' if kind == 'basic' else (
      'conv_relu_dropblock_layers')
  # ResNet-D (which the original uses whenever sk_ratio > 0) average-pools
  # before the shortcut's convolution, so the convolution is not first.
  shortcut = 'shortcut_layers' if kind == 'basic' else 'projection_layers'
  resnet_d = any(f'{GROUPS}/{g}/layers/0/{shortcut}/0/conv2d/kernel'
                 not in shapes for g in groups)
  sk_ratio = 0.0
  if kind == 'bottleneck' and f'{blocks[0]}/{layers}/3/conv2d_0/kernel' in (
      shapes):
    mixing = [_shape(weights, f'{b}/{layers}/3/conv2d_0/kernel')[2:]
              for b in blocks]
    sk_ratio = _ratio(mixing, 32, DEFAULT_SK_RATIO)
    if sk_ratio is None:
      raise CheckpointError(f'{weights.path}: the selective-kernel mixing '
                            f'widths {sorted(set(mixing))} fit no sk_ratio.')
  elif resnet_d or stem == 'resnet_d':
    sk_ratio = DEFAULT_SK_RATIO  # Shows only as ResNet-D stem and shortcuts.

  se_ratio = 0.0
  squeezes = [(b, n) for b in blocks for n in weights.shapes
              if n.startswith(b + '/') and n.endswith('/se_reduce/kernel')]
  if squeezes:
    pairs = [(_shape(weights, f'{b}/{layers}/0/conv2d/kernel')[3],
              weights.shapes[n][3]) for b, n in squeezes]
    se_ratio = _ratio(pairs, 1)
    if se_ratio is None:
      raise CheckpointError(f'{weights.path}: the squeeze-excitation widths '
                            f'{sorted(set(pairs))} fit no se_ratio.')
  return {'resnet_depth': depth, 'width_multiplier': width_multiplier,
          'sk_ratio': sk_ratio, 'se_ratio': se_ratio,
          'cifar_stem': stem == 'cifar'}


def _infer_heads(weights, ft_proj_selector) -> dict:
  shapes = weights.shapes
  layers = _indices(shapes, PROJECTION)
  if layers != list(range(len(layers))):
    raise CheckpointError(f'{weights.path}: projection layers {layers} are '
                          'not numbered 0, 1, ...')
  kernels = [_shape(weights, f'{PROJECTION}/{j}/dense/kernel')
             for j in layers]
  settings = ({'proj_head_mode': 'nonlinear', 'num_proj_layers': len(layers),
               'proj_out_dim': kernels[-1][1]} if layers else
              {'proj_head_mode': 'none'})
  if f'{SUPERVISED}/kernel' not in shapes:
    return {**settings, 'lineareval_while_pretraining': False,
            'num_classes': None}
  head_input, num_classes = _shape(weights, f'{SUPERVISED}/kernel')
  # The supervised head reads hiddens[selector]: 0 is the encoder output,
  # j the output of projection layer j.
  widths = ([kernels[0][0]] + [k[1] for k in kernels]) if kernels else (
      [head_input])
  fitting = [j for j, width in enumerate(widths) if width == head_input]
  if ft_proj_selector is not None:
    if ft_proj_selector not in fitting:
      raise CheckpointError(
          f'--ft_proj_selector={ft_proj_selector} does not fit the '
          f'checkpoint: its supervised head reads {head_input} features, '
          f'which projection outputs {fitting} have.')
    selector = ft_proj_selector
  elif fitting:
    selector = fitting[0]
  else:
    raise CheckpointError(
        f'{weights.path}: the supervised head reads {head_input} features, '
        f'but the encoder and projection layers give {widths}.')
  return {**settings, 'lineareval_while_pretraining': True,
          'lineareval_standardize': False, 'num_classes': num_classes,
          'ft_proj_selector': selector}


def describe(settings: dict) -> str:
  """One line for the user: what was found in the checkpoint."""
  parts = [f'ResNet-{settings["resnet_depth"]} '
           f'x{settings["width_multiplier"]:g}']
  if settings['sk_ratio']:
    parts.append(f'selective kernels {settings["sk_ratio"]:g}')
  if settings['se_ratio']:
    parts.append(f'squeeze-excitation {settings["se_ratio"]:g}')
  parts.append('CIFAR stem' if settings['cifar_stem'] else
               'ResNet-D stem' if settings['sk_ratio'] else 'ImageNet stem')
  if settings['proj_head_mode'] == 'none':
    parts.append('no projection head')
  else:
    parts.append(f'{settings["num_proj_layers"]}-layer projection head to '
                 f'{settings["proj_out_dim"]}')
  if settings['num_classes']:
    parts.append(f'{settings["num_classes"]}-class supervised head on '
                 f'projection output {settings["ft_proj_selector"]}')
  return ', '.join(parts)
