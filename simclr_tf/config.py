"""Configuration as plain frozen dataclasses.

`run.py` turns absl flags into these objects; library code receives them as
arguments and never reads flags itself.
"""

import dataclasses

# The paper's CIFAR recipe switches blur off for small images (appendix B.9).
SMALL_IMAGE_MAX_SIZE = 32


def default_use_blur(image_size: int) -> bool:
  """Blur helps on large images only; SimCLR's CIFAR recipe turns it off."""
  return image_size > SMALL_IMAGE_MAX_SIZE


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where images come from and which subset of them is used."""

  dataset: str = 'cifar10'
  data_dir: str = 'data'
  train_split: str = 'train'
  # None means the dataset's own evaluation split ('test', or 'val' for folders
  # laid out with train/ and val/).
  eval_split: str | None = None
  # Fraction of the labeled training split kept for fine-tuning (1% / 10%
  # semi-supervised protocol). 1.0 keeps everything.
  label_fraction: float = 1.0
  cache_dataset: bool = False
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The SimCLR augmentation family (paper, appendix A)."""

  image_size: int
  color_jitter_strength: float = 1.0
  use_blur: bool = True
  crop_area_range: tuple[float, float] = (0.08, 1.0)
  crop_aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  grayscale_prob: float = 0.2
  blur_prob: float = 0.5
  blur_sigma_range: tuple[float, float] = (0.1, 2.0)
  # Evaluation crops the central 87.5% of large images, as for ImageNet.
  eval_crop_proportion: float = 0.875

  @property
  def is_small_image(self) -> bool:
    return self.image_size <= SMALL_IMAGE_MAX_SIZE
