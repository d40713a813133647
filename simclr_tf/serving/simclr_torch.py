"""A simclr_tf model in PyTorch: the ResNet encoder and its heads.

Self-contained (it imports only torch): `--export_formats=torch` copies this
file next to the weights, so `torch/<step>/` loads without simclr_tf or
TensorFlow:

    import sys; sys.path.insert(0, 'models/run/torch/1234')
    import simclr_torch
    model = simclr_torch.load('models/run/torch/1234')  # eval mode
    outputs = model(images)  # [batch, 3, size, size] floats in [0, 1]
    outputs['final_avg_pool']  # and the heads' outputs, as serving_default

Parameter names follow torchvision's ResNet (`conv1`, `bn1`, `layer1.0.
conv1`, ..., `downsample.0`), so an encoder that torchvision can build
(width 1, no selective kernels or squeeze-excitation) loads into
`torchvision.models.resnet{18,34,50,101,152}` as well (docs/serving.md).
Everything else matches the TensorFlow model: a strided convolution pads
(k - 1) / 2 on each side, and the max pool of the standard stem pads as
TensorFlow's 'SAME' does (at the end only, for even sizes).
"""

import json
import math
import os

import torch
from torch import nn
from torch.nn import functional as F

CONFIG_FILE = 'config.json'
ENCODER_FILE = 'encoder.pt'
PROJECTION_HEAD_FILE = 'projection_head.pt'
SUPERVISED_HEAD_FILE = 'supervised_head.pt'
BATCH_NORM_EPSILON = 1e-5
# keras.layers.BatchNormalization's default, which the supervised head's
# standardisation uses.
STANDARDIZE_EPSILON = 1e-3

DEPTHS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}


def width(base: int, multiplier: float) -> int:
  return max(1, int(round(base * multiplier)))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's 'SAME' padding (before, after) of one dimension."""
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv(in_channels, out_channels, kernel, stride=1, bias=False):
  return nn.Conv2d(in_channels, out_channels, kernel, stride,
                   padding=(kernel - 1) // 2, bias=bias)


def batch_norm(channels):
  return nn.BatchNorm2d(channels, eps=BATCH_NORM_EPSILON)


class SameMaxPool(nn.Module):
  """3x3 / 2 max pool padded as TensorFlow's 'SAME'."""

  def forward(self, x):
    top, bottom = same_padding(x.shape[2], 3, 2)
    left, right = same_padding(x.shape[3], 3, 2)
    x = F.pad(x, (left, right, top, bottom), value=float('-inf'))
    return F.max_pool2d(x, 3, 2)


class SameAveragePool(nn.Module):
  """2x2 / 1 average pool padded as TensorFlow's 'SAME': padding is left out
  of the average."""

  def forward(self, x):
    padded = F.pad(x, (0, 1, 0, 1))
    count = F.pad(torch.ones_like(x[:1, :1]), (0, 1, 0, 1))
    return F.avg_pool2d(padded, 2, 1) / F.avg_pool2d(count, 2, 1)


class PaddedAveragePool(nn.Module):
  """ResNet-D's strided shortcut pool: pad one zero row and column at the
  end, then a 2x2 average (zeros included) with the block's stride."""

  def __init__(self, stride):
    super().__init__()
    self.stride = stride

  def forward(self, x):
    return F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2, self.stride)


class SelectiveKernel(nn.Module):
  """Two 3x3 streams (one convolution of twice the filters, split in two)
  mixed per channel by softmax weights from their pooled sum."""

  def __init__(self, in_channels, filters, stride, sk_ratio, min_dim=32):
    super().__init__()
    reduced = max(int(filters * sk_ratio), min_dim)
    self.conv = conv(in_channels, 2 * filters, 3, stride)
    self.bn = batch_norm(2 * filters)
    self.reduce = conv(filters, reduced, 1)
    self.reduce_bn = batch_norm(reduced)
    self.expand = conv(reduced, 2 * filters, 1)

  def forward(self, x):
    streams = torch.stack(torch.chunk(F.relu(self.bn(self.conv(x))), 2, 1))
    pooled = streams.sum(0).mean((2, 3), keepdim=True)
    mixing = self.expand(F.relu(self.reduce_bn(self.reduce(pooled))))
    mixing = torch.softmax(torch.stack(torch.chunk(mixing, 2, 1)), 0)
    return (streams * mixing).sum(0)


class SqueezeExcite(nn.Module):

  def __init__(self, channels, filters, se_ratio):
    super().__init__()
    squeezed = max(1, int(filters * se_ratio))
    self.reduce = conv(channels, squeezed, 1, bias=True)
    self.expand = conv(squeezed, channels, 1, bias=True)

  def forward(self, x):
    gate = x.mean((2, 3), keepdim=True)
    return torch.sigmoid(self.expand(F.relu(self.reduce(gate)))) * x


def downsample(in_channels, out_channels, stride, sk_ratio):
  """The projected shortcut; with selective kernels, ResNet-D's pool first
  (then the 1x1 convolution does not stride)."""
  if sk_ratio <= 0:
    return nn.Sequential(conv(in_channels, out_channels, 1, stride),
                         batch_norm(out_channels))
  pool = PaddedAveragePool(stride) if stride > 1 else SameAveragePool()
  return nn.Sequential(pool, conv(in_channels, out_channels, 1),
                       batch_norm(out_channels))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_channels, filters, stride, project, config):
    super().__init__()
    self.conv1 = conv(in_channels, filters, 3, stride)
    self.bn1 = batch_norm(filters)
    self.conv2 = conv(filters, filters, 3)
    self.bn2 = batch_norm(filters)
    self.se = (SqueezeExcite(filters, filters, config['se_ratio'])
               if config['se_ratio'] > 0 else None)
    self.downsample = (downsample(in_channels, filters, stride,
                                  config['sk_ratio']) if project else None)

  def residual(self, x):
    return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

  def forward(self, x):
    shortcut = x if self.downsample is None else self.downsample(x)
    out = self.residual(x)
    if self.se is not None:
      out = self.se(out)
    return F.relu(out + shortcut)


class Bottleneck(BasicBlock):
  expansion = 4

  def __init__(self, in_channels, filters, stride, project, config):
    nn.Module.__init__(self)
    out_channels = 4 * filters
    self.conv1 = conv(in_channels, filters, 1)
    self.bn1 = batch_norm(filters)
    if config['sk_ratio'] > 0:  # Brings its own batch norm and ReLU.
      self.conv2 = SelectiveKernel(filters, filters, stride,
                                   config['sk_ratio'])
      self.bn2 = nn.Identity()
    else:
      self.conv2 = conv(filters, filters, 3, stride)
      self.bn2 = batch_norm(filters)
    self.conv3 = conv(filters, out_channels, 1)
    self.bn3 = batch_norm(out_channels)
    self.se = (SqueezeExcite(out_channels, filters, config['se_ratio'])
               if config['se_ratio'] > 0 else None)
    self.downsample = (downsample(in_channels, out_channels, stride,
                                  config['sk_ratio']) if project else None)

  def residual(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    return self.bn3(self.conv3(x))


def stem(config) -> nn.Module:
  """All of the stem up to its last batch norm (which is `bn1`)."""
  channels = width(64, config['width_multiplier'])
  if config['cifar_stem']:
    return conv(3, channels, 3)
  if config['sk_ratio'] > 0:  # ResNet-D's three 3x3 convolutions.
    half = channels // 2
    return nn.Sequential(conv(3, half, 3, 2), batch_norm(half), nn.ReLU(),
                         conv(half, half, 3), batch_norm(half), nn.ReLU(),
                         conv(half, channels, 3))
  return conv(3, channels, 7, 2)


class ResNet(nn.Module):
  """The encoder: images [batch, 3, size, size] -> features [batch, dim]."""

  def __init__(self, config):
    super().__init__()
    kind, blocks = DEPTHS[config['resnet_depth']]
    block = BasicBlock if kind == 'basic' else Bottleneck
    channels = width(64, config['width_multiplier'])
    self.conv1 = stem(config)
    self.bn1 = batch_norm(channels)
    self.maxpool = nn.Identity() if config['cifar_stem'] else SameMaxPool()
    for i, (base, count) in enumerate(zip((64, 128, 256, 512), blocks)):
      filters = width(base, config['width_multiplier'])
      layers = []
      for j in range(count):
        layers.append(block(channels, filters, 2 if i and not j else 1,
                            j == 0, config))
        channels = filters * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*layers))
    self.feature_dim = channels

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return x.mean((2, 3))


def projection_head(feature_dim: int, layer_dims: list[int]) -> nn.Sequential:
  """Linear (no bias) + batch norm per layer, ReLU between layers; the last
  batch norm has no offset in the TensorFlow model (its bias here is 0)."""
  modules, inputs = [], feature_dim
  for i, units in enumerate(layer_dims):
    modules += [nn.Linear(inputs, units, bias=False),
                nn.BatchNorm1d(units, eps=BATCH_NORM_EPSILON)]
    if i < len(layer_dims) - 1:
      modules.append(nn.ReLU())
    inputs = units
  return nn.Sequential(*modules)


def supervised_head(inputs: int, num_classes: int, standardize: bool):
  """Optional standardisation (batch norm without scale or offset), then a
  linear layer to the class logits."""
  modules = [nn.BatchNorm1d(inputs, eps=STANDARDIZE_EPSILON, affine=False)
             ] if standardize else []
  return nn.Sequential(*modules, nn.Linear(inputs, num_classes))


class SimCLR(nn.Module):
  """The encoder and heads; `forward` returns serving_default's outputs."""

  def __init__(self, config):
    super().__init__()
    self.config = config
    self.encoder = ResNet(config)
    dims = config['projection_layers']
    self.projection_head = (projection_head(self.encoder.feature_dim, dims)
                            if dims else None)
    self.supervised_head = None
    if config.get('num_classes'):
      selector = config['ft_proj_selector']
      inputs = dims[selector - 1] if selector else self.encoder.feature_dim
      self.supervised_head = supervised_head(
          inputs, config['num_classes'], config['standardize'])

  def forward(self, images):
    features = self.encoder(images)
    outputs = {'default': features, 'final_avg_pool': features}
    hiddens = [features]
    if self.projection_head is not None:
      # hiddens[k]: the output of layer k (after its ReLU, the last: none).
      x = features
      for module in self.projection_head:
        x = module(x)
        if isinstance(module, nn.ReLU):
          hiddens.append(x)
      hiddens.append(x)
      outputs['proj_head_output'] = x
    if self.supervised_head is not None:
      logits = self.supervised_head(hiddens[self.config['ft_proj_selector']])
      outputs['logits_sup'] = logits
      outputs['probabilities'] = torch.softmax(logits, -1)
    return outputs


def load(directory: str, map_location='cpu') -> SimCLR:
  """The model written to `directory` by `--export_formats=torch`, in eval
  mode (batch norm uses the moving statistics)."""
  with open(os.path.join(directory, CONFIG_FILE)) as f:
    config = json.load(f)
  model = SimCLR(config)

  def read(name):
    return torch.load(os.path.join(directory, name), map_location=map_location,
                      weights_only=True)

  model.encoder.load_state_dict(read(ENCODER_FILE))
  if model.projection_head is not None:
    model.projection_head.load_state_dict(read(PROJECTION_HEAD_FILE))
  if model.supervised_head is not None:
    model.supervised_head.load_state_dict(read(SUPERVISED_HEAD_FILE))
  return model.eval()
