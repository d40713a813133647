"""Where each variable of an original SimCLR checkpoint (original.py) goes
in a `SimCLRModel`: `load` copies them, checking that every variable is used
once and has the shape the model expects."""

from simclr_tf.network import heads
from simclr_tf.network import original
from simclr_tf.network import resnet
from simclr_tf.network.layers import BatchNormRelu
from simclr_tf.storage.checkpoints import CheckpointError

def _bn(layer: BatchNormRelu, name: str) -> list:
  bn = layer.bn
  names = ['gamma'] + (['beta'] if bn.center else []) + [
      'moving_mean', 'moving_variance']
  return [(getattr(bn, n), f'{name}/bn/{n}') for n in names]


def _conv(layer: resnet.FixedPaddingConv2D, name: str) -> list:
  return [(layer.conv.kernel, f'{name}/conv2d/kernel')]


def _stem(stem: resnet.Stem) -> list:
  # Positions in the original's stem list, which also counts the layers
  # without variables (identities that name endpoints, the max pool).
  positions = [(0, 2)] if len(stem.convs) == 1 else [(0, 1), (2, 3), (4, 6)]
  pairs = []
  for conv, bn, (i, j) in zip(stem.convs, stem.bns, positions):
    pairs += _conv(conv, f'{original.STEM}/{i}') + _bn(bn, f'{original.STEM}/{j}')
  return pairs


def _shortcut(shortcut: resnet.Shortcut, name: str) -> list:
  # ResNet-D puts an average pool (after padding, when strided) first.
  first = 0 if shortcut.pool is None else (2 if shortcut.strides > 1 else 1)
  return (_conv(shortcut.conv, f'{name}/{first}') +
          _bn(shortcut.bn, f'{name}/{first + 1}'))


def _squeeze_excite(se: resnet.SqueezeExcite, name: str) -> list:
  return [(se.reduce.kernel, f'{name}/se_reduce/kernel'),
          (se.reduce.bias, f'{name}/se_reduce/bias'),
          (se.expand.kernel, f'{name}/se_expand/kernel'),
          (se.expand.bias, f'{name}/se_expand/bias')]


def _selective_kernel(sk: resnet.SelectiveKernel, name: str) -> list:
  return (_conv(sk.conv, f'{name}/conv2d_fixed_padding') +
          _bn(sk.bn, f'{name}/batch_norm_relu') +
          [(sk.reduce.kernel, f'{name}/conv2d_0/kernel')] +
          _bn(sk.reduce_bn, f'{name}/batch_norm_relu_1') +
          [(sk.expand.kernel, f'{name}/conv2d_1/kernel')])


def _basic_block(block: resnet.BasicBlock, name: str) -> list:
  layers = f'{name}/conv2d_bn_layers'
  pairs = (_conv(block.conv1, f'{layers}/0') + _bn(block.bn1, f'{layers}/1') +
           _conv(block.conv2, f'{layers}/2') + _bn(block.bn2, f'{layers}/3'))
  if block.shortcut is not None:
    pairs += _shortcut(block.shortcut, f'{name}/shortcut_layers')
  if block.se is not None:
    pairs += _squeeze_excite(block.se, f'{name}/se_layer')
  return pairs


def _bottleneck_block(block: resnet.BottleneckBlock, name: str) -> list:
  # The original's list also holds DropBlock layers (no variables) after
  # each convolution's batch norm: 2, 5 (or 4 with SK) and 8 (or 7).
  layers = f'{name}/conv_relu_dropblock_layers'
  pairs = _conv(block.conv1, f'{layers}/0') + _bn(block.bn1, f'{layers}/1')
  if block.bn2 is None:  # Selective kernels.
    pairs += _selective_kernel(block.conv2, f'{layers}/3')
    last, se = 5, 8
  else:
    pairs += _conv(block.conv2, f'{layers}/3') + _bn(block.bn2, f'{layers}/4')
    last, se = 6, 9
  pairs += (_conv(block.conv3, f'{layers}/{last}') +
            _bn(block.bn3, f'{layers}/{last + 1}'))
  if block.shortcut is not None:
    pairs += _shortcut(block.shortcut, f'{name}/projection_layers')
  if block.se is not None:
    pairs += _squeeze_excite(block.se, f'{layers}/{se}')
  return pairs


def _linear(layer: heads.LinearLayer, name: str) -> list:
  pairs = [(layer.dense.kernel, f'{name}/dense/kernel')]
  if layer.dense.use_bias:
    pairs.append((layer.dense.bias, f'{name}/dense/bias'))
  if layer.bn is not None:
    pairs += _bn(layer.bn, f'{name}/bn_relu')
  return pairs


def variable_pairs(model) -> list:
  """[(variable of `model`, the original's variable path)] for every
  variable of a built SimCLRModel."""
  encoder = model.encoder
  pairs = _stem(encoder.stem)
  for g, group in enumerate(encoder.block_groups):
    for b, block in enumerate(group.blocks):
      name = f'{original.GROUPS}/{g}/layers/{b}'
      pairs += (_basic_block(block, name)
                if isinstance(block, resnet.BasicBlock)
                else _bottleneck_block(block, name))
  for j, layer in enumerate(model.projection_head.projection_layers):
    pairs += _linear(layer, f'{original.PROJECTION}/{j}')
  if model.supervised_head is not None:
    pairs += _linear(model.supervised_head.linear,
                     original.SUPERVISED.rsplit('/', 1)[0])
  return pairs


def load(model, weights: original.OriginalWeights):
  """Copies `weights` into `model`, a built SimCLRModel of the inferred
  architecture; every original variable must find its place, and every
  variable of the model its value."""
  pairs = variable_pairs(model)
  if len(pairs) != len(model.weights):
    raise AssertionError(f'{len(model.weights)} model variables, '
                         f'{len(pairs)} mapped')  # A mapping bug, not input.
  expected = {name for _, name in pairs}
  missing = sorted(expected - set(weights.shapes))
  if missing:
    raise CheckpointError(
        f'{weights.path} lacks {missing[0]} ({len(missing)} variable(s) of '
        'the architecture its other variables describe are missing).')
  unused = sorted(set(weights.shapes) - expected)
  if unused:
    raise CheckpointError(
        f'{weights.path} has variables that the architecture it describes '
        f'does not have: {unused[0]} ({len(unused)} in all).')
  for variable, name in pairs:
    if tuple(variable.shape) != weights.shapes[name]:
      raise CheckpointError(
          f'{weights.path}: {name} has shape {list(weights.shapes[name])}, '
          f'but the architecture its other variables describe needs '
          f'{list(variable.shape)}.')
  for variable, name in pairs:
    variable.assign(weights.tensor(name).astype(variable.dtype))
