"""The SimCLR augmentations (paper, appendix A), one image at a time.

Every random choice comes from a stateless op driven by an explicit `seed`
(a shape-[2] integer tensor), so the same seed always gives the same view and
`--seed` makes whole runs repeatable. Images are float32 in [0, 1], [H, W, 3].
"""

import math

import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.inputs import augmentation_names

_NUM_CROP_ATTEMPTS = 10


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  """Derives `num` independent seeds from one."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _uniform(seed, minval=0.0, maxval=1.0):
  return tf.random.stateless_uniform([], seed, minval, maxval)


def to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1]; float input is passed through."""
  return tf.image.convert_image_dtype(image, tf.float32)


# --- Random crop with resize -------------------------------------------------


def sample_crop_box(seed, height, width, area_range=(0.08, 1.0),
                    aspect_ratio_range=(3 / 4, 4 / 3)):
  """Samples a crop box as (offset_y, offset_x, crop_height, crop_width).

  Area is uniform in `area_range` (fraction of the image), the aspect ratio
  width/height is log-uniform in `aspect_ratio_range`. Of several attempts,
  the first box that fits in the image wins; if none fits, the largest central
  box with an in-range aspect ratio is used.
  """
  area_seed, ratio_seed, y_seed, x_seed = split_seed(seed, 4)
  height_f = tf.cast(height, tf.float32)
  width_f = tf.cast(width, tf.float32)
  area = height_f * width_f * tf.random.stateless_uniform(
      [_NUM_CROP_ATTEMPTS], area_seed, *area_range)
  log_ratio = tf.random.stateless_uniform(
      [_NUM_CROP_ATTEMPTS], ratio_seed,
      math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1]))
  ratio = tf.exp(log_ratio)
  crop_w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
  fits = ((crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) &
          (crop_h <= height))
  first_fit = tf.argmax(tf.cast(fits, tf.int32))

  # Fallback: the whole image, trimmed to the nearest allowed aspect ratio.
  image_ratio = width_f / height_f
  clipped_ratio = tf.clip_by_value(image_ratio, *aspect_ratio_range)
  fallback_w = tf.minimum(width, tf.cast(tf.round(height_f * clipped_ratio),
                                         tf.int32))
  fallback_h = tf.minimum(height, tf.cast(tf.round(width_f / clipped_ratio),
                                          tf.int32))
  any_fit = tf.reduce_any(fits)
  box_h = tf.where(any_fit, crop_h[first_fit], fallback_h)
  box_w = tf.where(any_fit, crop_w[first_fit], fallback_w)

  offset_y = tf.random.stateless_uniform(
      [], y_seed, 0, height - box_h + 1, dtype=tf.int32)
  offset_x = tf.random.stateless_uniform(
      [], x_seed, 0, width - box_w + 1, dtype=tf.int32)
  return offset_y, offset_x, box_h, box_w


def resize(image, size):
  """Bicubic resize to [size, size], clipped back into [0, 1]."""
  resized = tf.image.resize(image, [size, size], method='bicubic')
  return tf.clip_by_value(resized, 0.0, 1.0)


def random_crop_and_resize(image, seed, size, area_range=(0.08, 1.0),
                           aspect_ratio_range=(3 / 4, 4 / 3)):
  shape = tf.shape(image)
  offset_y, offset_x, box_h, box_w = sample_crop_box(
      seed, shape[0], shape[1], area_range, aspect_ratio_range)
  crop = tf.image.crop_to_bounding_box(image, offset_y, offset_x, box_h, box_w)
  return resize(crop, size)


def center_crop_and_resize(image, size, crop_proportion):
  """Central square of `crop_proportion` of the short side, resized."""
  shape = tf.shape(image)
  short_side = tf.cast(tf.minimum(shape[0], shape[1]), tf.float32)
  side = tf.maximum(1, tf.cast(tf.round(crop_proportion * short_side),
                               tf.int32))
  offset_y = (shape[0] - side) // 2
  offset_x = (shape[1] - side) // 2
  crop = tf.image.crop_to_bounding_box(image, offset_y, offset_x, side, side)
  return resize(crop, size)


# --- Colour distortion -------------------------------------------------------


def _adjust_brightness(image, seed, delta):
  # Multiplicative, as SimCLR v2's implementation ('simclrv2' in the original).
  factor = _uniform(seed, max(1.0 - delta, 0.0), 1.0 + delta)
  return image * factor


def _adjust_contrast(image, seed, delta):
  return tf.image.stateless_random_contrast(
      image, max(1.0 - delta, 0.0), 1.0 + delta, seed)


def _adjust_saturation(image, seed, delta):
  return tf.image.stateless_random_saturation(
      image, max(1.0 - delta, 0.0), 1.0 + delta, seed)


def _adjust_hue(image, seed, delta):
  return tf.image.stateless_random_hue(image, min(delta, 0.5), seed)


def jitter_order(seed):
  """A random permutation of the four colour adjustments."""
  return tf.argsort(tf.random.stateless_uniform([4], seed))


def color_jitter(image, seed, strength):
  """Brightness, contrast, saturation (0.8 s) and hue (0.2 s), random order."""
  if strength <= 0:
    return image
  order_seed, *op_seeds = split_seed(seed, 5)
  adjustments = [
      lambda x: _adjust_brightness(x, op_seeds[0], 0.8 * strength),
      lambda x: _adjust_contrast(x, op_seeds[1], 0.8 * strength),
      lambda x: _adjust_saturation(x, op_seeds[2], 0.8 * strength),
      lambda x: _adjust_hue(x, op_seeds[3], 0.2 * strength),
  ]
  order = jitter_order(order_seed)
  for position in range(4):
    image = tf.switch_case(
        order[position],
        [lambda fn=fn: tf.clip_by_value(fn(image), 0.0, 1.0)
         for fn in adjustments])
  return image


def to_grayscale(image):
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def random_color_distortion(image, seed, strength, jitter_prob=0.8,
                            grayscale_prob=0.2, jitter=True, gray=True):
  """Colour jitter with probability `jitter_prob`, then grayscale with
  `grayscale_prob`; `jitter` / `gray` False leave that part out (the same
  seeds drive the other)."""
  jitter_coin, jitter_seed, gray_coin = split_seed(seed, 3)
  if jitter:
    image = tf.cond(_uniform(jitter_coin) < jitter_prob,
                    lambda: color_jitter(image, jitter_seed, strength),
                    lambda: image)
  if gray:
    image = tf.cond(_uniform(gray_coin) < grayscale_prob,
                    lambda: to_grayscale(image), lambda: image)
  return image


# --- Gaussian blur -----------------------------------------------------------


def blur_kernel_size(image_size: int) -> int:
  """10% of the image side, made odd, as in the SimCLR code."""
  return 2 * (image_size // 20) + 1


def gaussian_kernel_1d(sigma, kernel_size: int):
  radius = kernel_size // 2
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  weights = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
  return weights / tf.reduce_sum(weights)


def gaussian_blur(image, sigma, kernel_size: int):
  """Separable Gaussian blur with reflected borders (no dark frame)."""
  radius = kernel_size // 2
  if radius == 0:
    return image
  kernel = gaussian_kernel_1d(sigma, kernel_size)
  channels = 3
  vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
  horizontal = tf.reshape(vertical, [1, -1, channels, 1])
  padded = tf.pad(image[tf.newaxis], [[0, 0], [radius, radius],
                                      [radius, radius], [0, 0]], 'REFLECT')
  blurred = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], 'VALID')
  blurred = tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], 'VALID')
  return blurred[0]


def random_blur(image, seed, image_size, prob=0.5, sigma_range=(0.1, 2.0)):
  """Blurs with probability `prob`, with a sigma drawn for this image."""
  coin_seed, sigma_seed = split_seed(seed, 2)
  sigma = _uniform(sigma_seed, *sigma_range)
  kernel_size = blur_kernel_size(image_size)
  return tf.cond(_uniform(coin_seed) < prob,
                 lambda: gaussian_blur(image, sigma, kernel_size),
                 lambda: image)


# --- Rotation, noise, cutout, Sobel (the paper's Figure 4) --------------------


def random_rotation(image, seed):
  """Rotates by 90, 180 or 270 degrees, each equally likely (the paper's
  Figure 4f)."""
  quarter_turns = tf.random.stateless_uniform([], seed, 1, 4, dtype=tf.int32)
  return tf.image.rot90(image, quarter_turns)


def gaussian_noise(image, seed, stddev):
  """Adds independent N(0, stddev^2) noise to every pixel and channel."""
  return image + stddev * tf.random.stateless_normal(tf.shape(image), seed)


def cutout(image, center_y, center_x, side: int):
  """Zeroes the `side` x `side` square centred on (center_y, center_x), the
  part inside the image (DeVries & Taylor 2017)."""
  shape = tf.shape(image)
  top = center_y - side // 2
  left = center_x - side // 2
  rows = tf.range(shape[0])[:, tf.newaxis]
  cols = tf.range(shape[1])[tf.newaxis, :]
  inside = ((rows >= top) & (rows < top + side) & (cols >= left) &
            (cols < left + side))
  return tf.where(inside[..., tf.newaxis], tf.zeros_like(image), image)


def random_cutout(image, seed, side: int):
  """Cutout of a `side` x `side` square centred anywhere in the image."""
  y_seed, x_seed = split_seed(seed, 2)
  shape = tf.shape(image)
  center_y = tf.random.stateless_uniform([], y_seed, 0, shape[0], tf.int32)
  center_x = tf.random.stateless_uniform([], x_seed, 0, shape[1], tf.int32)
  return cutout(image, center_y, center_x, side)


def sobel_magnitude(image):
  """The Sobel gradient magnitude of the image's luma, scaled so that its
  largest value is 1, as three equal channels (the paper's Figure 4j)."""
  luma = tf.image.rgb_to_grayscale(image)
  gradients = tf.image.sobel_edges(luma[tf.newaxis])[0, :, :, 0, :]
  magnitude = tf.norm(gradients, axis=-1, keepdims=True)
  magnitude = tf.math.divide_no_nan(magnitude, tf.reduce_max(magnitude))
  return tf.tile(magnitude, [1, 1, 3])


# --- The three preprocessing modes -------------------------------------------


def fit_to_size(image, size):
  """An image `size` pixels square without random cropping: left as it is
  when it already is, else its central square resized."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return center_crop_and_resize(image, size, 1.0)


def pretrain_view(image, seed, config: AugmentConfig, small: bool = False,
                  second: bool = False):
  """One SimCLR view: the transformations its augmentations name, in
  augmentation_names.AUGMENTATIONS's order. The default (crop, flip, colour
  distortion, blur where on) draws from the same seeds whatever else is
  named, at `view_size` pixels. `small`: a multi-crop view, cropped from
  the small crops' area range to `small_view_size` pixels; `second`: the
  second view, made of config.second_view_augmentations when given."""
  names = augmentation_names.view_augmentations(config, second)
  crop_seed, flip_seed, color_seed, blur_seed = split_seed(seed, 4)
  rotate_seed, noise_seed, cutout_seed = split_seed(
      tf.random.experimental.stateless_fold_in(seed, 1), 3)
  size = small_view_size(config) if small else view_size(config)
  image = to_float(image)
  if 'crop' in names:
    image = random_crop_and_resize(
        image, crop_seed, size,
        ((config.small_crop_min_area, config.small_crop_max_area) if small
         else crop_area_range(config)),
        config.crop_aspect_ratio_range)
  else:
    image = fit_to_size(image, size)
  if 'flip' in names and config.flip_prob > 0:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if 'rotate' in names:
    image = random_rotation(image, rotate_seed)
  if 'color' in names or 'gray' in names:
    image = random_color_distortion(image, color_seed,
                                    config.color_jitter_strength,
                                    config.jitter_prob, config.grayscale_prob,
                                    jitter='color' in names,
                                    gray='gray' in names)
  if 'blur' in names:
    image = random_blur(image, blur_seed, size, config.blur_prob,
                        config.blur_sigma_range)
  if 'noise' in names:
    image = gaussian_noise(image, noise_seed, config.noise_stddev)
  if 'cutout' in names:
    image = random_cutout(tf.clip_by_value(image, 0.0, 1.0), cutout_seed,
                          max(1, round(config.cutout_fraction * size)))
  if 'sobel' in names:
    image = sobel_magnitude(tf.clip_by_value(image, 0.0, 1.0))
  image = tf.clip_by_value(image, 0.0, 1.0)
  return tf.ensure_shape(image, [size, size, 3])


def crop_area_range(config: AugmentConfig) -> tuple[float, float]:
  """The area a random crop covers, as a fraction of the image."""
  return (config.min_crop_area, 1.0)


def view_size(config: AugmentConfig) -> int:
  """The side of the two pretraining views in pixels (view_size 0: the
  image's)."""
  return config.view_size or config.image_size


def small_view_size(config: AugmentConfig) -> int:
  """The side of the small views in pixels (small_crop_size 0: half the
  image's)."""
  return config.small_crop_size or max(1, round(config.image_size / 2))


def small_crop_seeds(example_seed, num: int) -> list[tf.Tensor]:
  """Seeds of an example's `num` small crops, apart from those of its two
  views (which stay as they are without small crops)."""
  return split_seed(tf.random.experimental.stateless_fold_in(example_seed, 1),
                    num)


def finetune_view(image, seed, config: AugmentConfig):
  """Fine-tuning augmentation: crop and flip only, as in the SimCLR code."""
  crop_seed, flip_seed = split_seed(seed, 2)
  image = to_float(image)
  image = random_crop_and_resize(image, crop_seed, config.image_size,
                                 crop_area_range(config),
                                 config.crop_aspect_ratio_range)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return tf.ensure_shape(image, [config.image_size, config.image_size, 3])


def eval_view(image, config: AugmentConfig):
  """Deterministic evaluation preprocessing.

  Large images: central crop of 87.5% then resize; small ones: resize only.
  """
  image = to_float(image)
  size = config.image_size
  if size <= augmentation_names.SMALL_IMAGE_MAX_SIZE:
    if image.shape[0] != size or image.shape[1] != size:
      image = resize(image, size)
  else:
    image = center_crop_and_resize(image, size, config.eval_crop_proportion)
  return tf.ensure_shape(image, [size, size, 3])
