"""What the network folder builds, by name and number: the ResNet depths,
the projection heads, and whether a model has a supervised head. No
TensorFlow: the command line and the resolver check settings with these."""

# ResNet depth -> (block kind, blocks per group), as resnet.py builds it.
DEPTHS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
RESNET_DEPTHS = tuple(DEPTHS)

PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')


def projection_layers(proj_head_mode: str, num_proj_layers: int) -> int:
  """How many layers a projection head of that mode has."""
  return {'none': 0, 'linear': 1, 'nonlinear': num_proj_layers}[proj_head_mode]


def has_supervised_head(model_config) -> bool:
  """Whether a ModelConfig's model has a supervised head: it has classes,
  and fine-tunes or distils (trains it on class targets) or trains it
  while pretraining."""
  head = model_config.supervised_head
  return bool(head.num_classes) and (
      model_config.train_mode != 'pretrain' or
      head.lineareval_while_pretraining)


def standardizes_supervised_head(model_config) -> bool:
  """Whether the supervised head trained while pretraining standardises its
  input (docs/evaluation.md)."""
  return (has_supervised_head(model_config) and
          model_config.train_mode == 'pretrain' and
          model_config.supervised_head.lineareval_standardize)
