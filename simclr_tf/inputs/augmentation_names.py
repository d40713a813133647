"""The transformations a pretraining view can be made of, by name, and the
SimCLR composition (docs/model.md, Augmentations). No TensorFlow: the
command line checks --augmentations with these before it starts."""

# In the order a view applies them: the paper's crop, flip, colour jitter,
# grayscale and blur (its default composition), and the others of its
# Figure 4: rotation, Gaussian noise, cutout and the Sobel filter.
AUGMENTATIONS = ('crop', 'flip', 'rotate', 'color', 'gray', 'blur', 'noise',
                 'cutout', 'sobel')
# An --augmentations value for a view with none of them.
NO_AUGMENTATION = 'none'
# The paper's CIFAR recipe switches blur off for images this small and
# below (appendix B.9); evaluation crops only larger ones.
SMALL_IMAGE_MAX_SIZE = 32


def default_use_blur(image_size: int) -> bool:
  """Blur helps on large images only; SimCLR's CIFAR recipe turns it off."""
  return image_size > SMALL_IMAGE_MAX_SIZE


def default_augmentations(use_blur: bool) -> str:
  """The SimCLR composition: crop, flip, colour distortion, blur where on."""
  return 'crop,flip,color,gray' + (',blur' if use_blur else '')


def parse(value: str) -> tuple[str, ...]:
  """The names of an --augmentations value, in the order given ('none':
  no names)."""
  names = tuple(name.strip() for name in value.split(',') if name.strip())
  return () if names == (NO_AUGMENTATION,) else names


def canonical_augmentations(value: str) -> str:
  """`value` with its names in the order a view applies them."""
  names = set(parse(value))
  return ','.join(n for n in AUGMENTATIONS if n in names) or NO_AUGMENTATION


def view_augmentations(config, second: bool = False) -> tuple[str, ...]:
  """The names of the transformations of an AugmentConfig's first (or
  second) view; augmentations=None (a configuration built without the
  resolver) is the SimCLR composition for its use_blur."""
  value = config.augmentations
  if second and config.second_view_augmentations:
    value = config.second_view_augmentations
  if value is None:
    value = default_augmentations(config.use_blur)
  return parse(value)
