"""`--export_formats=torch`: PyTorch state_dicts and the module that loads
them (simclr_torch.py, copied beside them).

`torch/<step>/` holds `encoder.pt` (torchvision's parameter names),
`projection_head.pt` and `supervised_head.pt` (state_dicts of
`torch.nn.Sequential`s) where the model has those heads, `config.json` (the
architecture, and the torchvision model the encoder loads into, if any) and
`simclr_torch.py`.
"""

import json
import os
import shutil

import numpy as np

from simclr_tf.network import layers, resnet

TORCHVISION_DEPTHS = (18, 34, 50, 101, 152)


def _conv(layer) -> np.ndarray:
  """A Keras kernel [h, w, in, out] as PyTorch's [out, in, h, w]."""
  conv = layer.conv if isinstance(layer, resnet.FixedPaddingConv2D) else layer
  return np.transpose(conv.kernel.numpy(), (3, 2, 0, 1))


def _batch_norm(prefix: str, layer) -> dict:
  bn = layer.bn if isinstance(layer, layers.BatchNormRelu) else layer
  channels = bn.moving_mean.shape[0]
  values = {'running_mean': bn.moving_mean.numpy(),
            'running_var': bn.moving_variance.numpy(),
            'num_batches_tracked': np.array(0, np.int64)}
  if bn.scale:  # Without scale, PyTorch's affine=False (no weight, bias).
    values['weight'] = bn.gamma.numpy()
    values['bias'] = (bn.beta.numpy() if bn.center
                      else np.zeros(channels, np.float32))
  return {f'{prefix}{name}': value for name, value in values.items()}


def _stem(stem) -> dict:
  convs, bns = stem.convs, stem.bns
  if len(convs) == 1:
    weights = {'conv1.weight': _conv(convs[0])}
  else:  # conv1 = Sequential(conv, bn, relu, conv, bn, relu, conv).
    weights = {f'conv1.{3 * i}.weight': _conv(c) for i, c in enumerate(convs)}
    for i, bn in enumerate(bns[:-1]):
      weights.update(_batch_norm(f'conv1.{3 * i + 1}.', bn))
  weights.update(_batch_norm('bn1.', bns[-1]))
  return weights


def _block(prefix: str, block) -> dict:
  weights = {f'{prefix}conv1.weight': _conv(block.conv1)}
  weights.update(_batch_norm(f'{prefix}bn1.', block.bn1))
  if isinstance(block.conv2, resnet.SelectiveKernel):
    sk, p = block.conv2, f'{prefix}conv2.'
    weights.update({f'{p}conv.weight': _conv(sk.conv),
                    f'{p}reduce.weight': _conv(sk.reduce),
                    f'{p}expand.weight': _conv(sk.expand)})
    weights.update(_batch_norm(f'{p}bn.', sk.bn))
    weights.update(_batch_norm(f'{p}reduce_bn.', sk.reduce_bn))
  else:
    weights[f'{prefix}conv2.weight'] = _conv(block.conv2)
    weights.update(_batch_norm(f'{prefix}bn2.', block.bn2))
  if isinstance(block, resnet.BottleneckBlock):
    weights[f'{prefix}conv3.weight'] = _conv(block.conv3)
    weights.update(_batch_norm(f'{prefix}bn3.', block.bn3))
  if block.se is not None:
    for name in ('reduce', 'expand'):
      layer = getattr(block.se, name)
      weights[f'{prefix}se.{name}.weight'] = _conv(layer)
      weights[f'{prefix}se.{name}.bias'] = layer.bias.numpy()
  if block.shortcut is not None:
    index = 1 if block.shortcut.pool is not None else 0  # The pool first.
    weights[f'{prefix}downsample.{index}.weight'] = _conv(
        block.shortcut.conv)
    weights.update(_batch_norm(f'{prefix}downsample.{index + 1}.',
                               block.shortcut.bn))
  return weights


def encoder_state(encoder) -> dict:
  """The encoder's weights under simclr_torch.ResNet's (torchvision's)
  names, as float32 / int64 numpy arrays."""
  weights = _stem(encoder.stem)
  for g, group in enumerate(encoder.block_groups, start=1):
    for b, block in enumerate(group.blocks):
      weights.update(_block(f'layer{g}.{b}.', block))
  return weights


def projection_state(head) -> dict:
  """Sequential indices: (Linear, BatchNorm1d, ReLU) per layer, no ReLU
  after the last."""
  weights = {}
  for j, layer in enumerate(head.projection_layers):
    weights[f'{3 * j}.weight'] = layer.dense.kernel.numpy().T
    weights.update(_batch_norm(f'{3 * j + 1}.', layer.bn))
  return weights


def supervised_state(head) -> dict:
  weights, index = {}, 0
  if head.standardize is not None:
    weights.update(_batch_norm('0.', head.standardize))
    index = 1
  dense = head.linear.dense
  weights[f'{index}.weight'] = dense.kernel.numpy().T
  weights[f'{index}.bias'] = dense.bias.numpy()
  return weights


def torchvision_model(encoder_config) -> tuple[str | None, str]:
  """(torchvision's name for the encoder or None, why not / what changes)."""
  missing = []
  if encoder_config.width_multiplier != 1:
    missing.append(f'width multiplier {encoder_config.width_multiplier:g}')
  if encoder_config.sk_ratio > 0:
    missing.append('selective kernels')
  if encoder_config.se_ratio > 0:
    missing.append('squeeze-excitation')
  if encoder_config.resnet_depth not in TORCHVISION_DEPTHS:
    missing.append(f'depth {encoder_config.resnet_depth}')
  if missing:
    return None, (f'torchvision has no ResNet with {" and ".join(missing)}: '
                  'load it with simclr_torch.py (or use ONNX).')
  changes = ['fc = Identity()']
  if encoder_config.cifar_stem:
    changes.append('conv1 = Conv2d(3, 64, 3, 1, 1, bias=False), '
                   'maxpool = Identity()')
  else:
    changes.append('maxpool = simclr_torch.SameMaxPool() (TensorFlow\'s '
                   'SAME padding)')
  if encoder_config.resnet_depth in (18, 34):
    changes.append('layer1[0].downsample = Sequential(Conv2d(64, 64, 1, '
                   'bias=False), BatchNorm2d(64)) (SimCLR projects the first '
                   'shortcut of every group)')
  return f'resnet{encoder_config.resnet_depth}', '; '.join(changes)


def architecture(model, image_size: int) -> dict:
  """config.json: what simclr_torch.SimCLR builds."""
  encoder = model.config.encoder
  head = model.projection_head
  name, note = torchvision_model(encoder)
  return {
      'resnet_depth': encoder.resnet_depth,
      'width_multiplier': encoder.width_multiplier,
      'sk_ratio': encoder.sk_ratio,
      'se_ratio': encoder.se_ratio,
      'cifar_stem': encoder.cifar_stem,
      'image_size': image_size,
      'projection_layers': [int(layer.dense.kernel.shape[1])
                            for layer in head.projection_layers],
      'num_classes': (model.config.supervised_head.num_classes
                      if model.supervised_head is not None else None),
      'ft_proj_selector': model.config.supervised_head.ft_proj_selector,
      'standardize': bool(model.supervised_head is not None and
                          model.supervised_head.standardize is not None),
      'torchvision': name,
      'torchvision_note': note,
  }


def write(prepared, directory: str):
  """Writes an export.Prepared's model as state_dicts, config.json and
  simclr_torch.py."""
  model, image_size = prepared.model, prepared.image_size
  # Imported here: torch takes seconds to import, and every run imports
  # this module.
  import torch  # pylint: disable=g-import-not-at-top
  from simclr_tf.serving import simclr_torch  # pylint: disable=g-import-not-at-top

  def save(weights, name):
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v))
                for k, v in weights.items()}, os.path.join(directory, name))

  save(encoder_state(model.encoder), simclr_torch.ENCODER_FILE)
  if model.projection_head.num_layers:
    save(projection_state(model.projection_head),
         simclr_torch.PROJECTION_HEAD_FILE)
  if model.supervised_head is not None:
    save(supervised_state(model.supervised_head),
         simclr_torch.SUPERVISED_HEAD_FILE)
  with open(os.path.join(directory, simclr_torch.CONFIG_FILE), 'w') as f:
    json.dump(architecture(model, image_size), f, indent=2)
    f.write('\n')
  shutil.copy(simclr_torch.__file__, os.path.join(directory,
                                                  'simclr_torch.py'))


def infer(directory: str, images: np.ndarray) -> dict:
  """The outputs of the exported model on NHWC `images`, in PyTorch, through
  the simclr_torch.py written beside the weights."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'exported_simclr_torch', os.path.join(directory, 'simclr_torch.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  model = module.load(directory)
  with torch.no_grad():
    outputs = model(torch.from_numpy(np.transpose(images, (0, 3, 1, 2))))
  return {name: value.numpy() for name, value in outputs.items()}
