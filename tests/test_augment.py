"""The augmentations against the paper's bounds and numpy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.inputs import augment


def _seeds(n, base=0):
  return tf.constant([[base, i] for i in range(n)], tf.int64)


@tf.function
def _boxes(seeds, height, width):
  return tf.map_fn(lambda s: tf.stack(augment.sample_crop_box(s, height,
                                                              width)),
                   seeds, fn_output_signature=tf.int32)


def test_crop_boxes_stay_within_and_cover_the_bounds():
  boxes = _boxes(_seeds(3000), 1000, 1000).numpy()
  offset_y, offset_x, h, w = boxes.T
  assert (offset_y >= 0).all() and (offset_x >= 0).all()
  assert (offset_y + h <= 1000).all() and (offset_x + w <= 1000).all()
  area = h * w / 1e6
  ratio = w / h
  # Within the bounds, up to the rounding of the box to whole pixels.
  assert area.min() >= 0.08 - 0.002 and area.max() <= 1.0
  assert ratio.min() >= 3 / 4 - 0.005 and ratio.max() <= 4 / 3 + 0.005
  # And covering them: both ends of both ranges are reached.
  assert area.min() < 0.1 and area.max() > 0.9
  assert ratio.min() < 0.77 and ratio.max() > 1.30
  # Area is uniform: about half of the boxes are below the midpoint.
  accepted = area[area <= 1.0]
  assert abs(np.mean(accepted < 0.54) - 0.5) < 0.08


def test_crop_falls_back_to_an_allowed_central_box_when_nothing_fits():
  # 10 x 1000: no box with area >= 8% and ratio <= 4/3 fits in 10 rows.
  boxes = _boxes(_seeds(50), 10, 1000).numpy()
  assert (boxes[:, 2] == 10).all() and (boxes[:, 3] == 13).all()
  assert (boxes[:, 1] + boxes[:, 3] <= 1000).all()


def test_crop_is_determined_by_the_seed():
  a = _boxes(_seeds(20), 64, 48).numpy()
  b = _boxes(_seeds(20), 64, 48).numpy()
  c = _boxes(_seeds(20, base=1), 64, 48).numpy()
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


def _colorful_image():
  rng = np.random.default_rng(1)
  return tf.constant(rng.uniform(0.1, 0.9, (16, 16, 3)), tf.float32)


def _is_gray(images):
  return np.all(np.abs(images[..., 0] - images[..., 1]) < 1e-6, axis=(1, 2)) \
      & np.all(np.abs(images[..., 1] - images[..., 2]) < 1e-6, axis=(1, 2))


def _distort_many(n, **kwargs):
  image = _colorful_image()
  fn = tf.function(lambda s: augment.random_color_distortion(image, s,
                                                             **kwargs))
  return image.numpy(), np.stack([fn(s).numpy() for s in _seeds(n)])


# Bounds: 4 standard deviations of a binomial proportion over 1000 draws.
_N = 1000


def test_grayscale_happens_about_20_percent_of_the_time():
  _, out = _distort_many(_N, strength=1.0, jitter_prob=0.0,
                         grayscale_prob=0.2)
  assert abs(_is_gray(out).mean() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / _N)


def test_jitter_happens_about_80_percent_of_the_time():
  image, out = _distort_many(_N, strength=1.0, jitter_prob=0.8,
                             grayscale_prob=0.0)
  changed = np.abs(out - image).max(axis=(1, 2, 3)) > 1e-4
  assert abs(changed.mean() - 0.8) < 4 * math.sqrt(0.8 * 0.2 / _N)
  assert not _is_gray(out).any()


def test_jitter_order_is_a_uniform_random_permutation():
  orders = [tuple(augment.jitter_order(s).numpy()) for s in _seeds(960)]
  assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
  counts = np.array(list({o: orders.count(o) for o in orders}.values()))
  assert len(counts) == 24  # All 4! orders occur, each about 40 times.
  assert counts.min() > 15 and counts.max() < 70


def _numpy_gaussian_kernel(sigma, size):
  x = np.arange(size) - size // 2
  k = np.exp(-x**2 / (2 * sigma**2))
  return k / k.sum()


@pytest.mark.parametrize('sigma,size', [(0.1, 3), (1.0, 9), (2.0, 23)])
def test_blur_kernel_sums_to_one_and_is_gaussian(sigma, size):
  kernel = augment.gaussian_kernel_1d(tf.constant(sigma), size).numpy()
  assert kernel.shape == (size,)
  assert abs(kernel.sum() - 1.0) < 1e-6
  np.testing.assert_allclose(kernel, _numpy_gaussian_kernel(sigma, size),
                             atol=1e-6)


def test_blur_kernel_size_is_ten_percent_of_the_side():
  assert augment.blur_kernel_size(224) == 23  # As in the SimCLR code.
  assert augment.blur_kernel_size(96) == 9
  assert augment.blur_kernel_size(32) == 3


def test_gaussian_blur_matches_numpy_separable_convolution(rng):
  image = rng.uniform(0, 1, (12, 14, 3)).astype(np.float32)
  sigma, size = 1.3, 5
  kernel = _numpy_gaussian_kernel(sigma, size)
  padded = np.pad(image, [(2, 2), (2, 2), (0, 0)], mode='reflect')
  expected = np.zeros_like(image)
  for dy in range(size):
    for dx in range(size):
      expected += (kernel[dy] * kernel[dx] *
                   padded[dy:dy + 12, dx:dx + 14])
  actual = augment.gaussian_blur(tf.constant(image), tf.constant(sigma), size)
  np.testing.assert_allclose(actual.numpy(), expected, atol=1e-5)


def test_blur_sigma_is_drawn_per_image():
  # Blurring a single bright pixel gives the kernel itself; its spread is
  # the sigma that was drawn for that image.
  delta = np.zeros((224, 224, 3), np.float32)
  delta[112, 112] = 1.0
  blur = tf.function(lambda s: augment.random_blur(tf.constant(delta), s, 224,
                                                   prob=1.0))
  y = np.arange(224) - 112
  sigmas = []
  for seed in _seeds(40):
    out = blur(seed).numpy()[..., 0]
    assert abs(out.sum() - 1.0) < 1e-4
    sigmas.append(math.sqrt((out.sum(axis=1) * y**2).sum()))
  sigmas = np.array(sigmas)
  assert sigmas.max() <= 2.0 + 1e-3 and sigmas.min() < 0.6
  assert sigmas.max() > 1.6
  assert len(np.unique(np.round(sigmas, 4))) == 40


def test_blur_happens_about_half_of_the_time():
  image = tf.constant(np.random.default_rng(2).uniform(0, 1, (40, 40, 3)),
                      tf.float32)
  blur = tf.function(lambda s: augment.random_blur(image, s, 40, prob=0.5))
  changed = np.mean([np.abs(blur(s).numpy() - image.numpy()).max() > 1e-3
                     for s in _seeds(400)])
  assert abs(changed - 0.5) < 4 * math.sqrt(0.25 / 400)


@pytest.mark.parametrize('size,use_blur', [(32, False), (64, True)])
def test_pretrain_views_are_in_range_and_seeded(size, use_blur):
  config = AugmentConfig(image_size=size, color_jitter_strength=1.0,
                         use_blur=use_blur)
  image = tf.constant(np.random.default_rng(3).integers(0, 256, (50, 70, 3)),
                      tf.uint8)
  view = tf.function(lambda s: augment.pretrain_view(image, s, config))
  views = np.stack([view(s).numpy() for s in _seeds(64)])
  assert views.shape == (64, size, size, 3)
  assert views.min() >= 0.0 and views.max() <= 1.0
  np.testing.assert_array_equal(view(_seeds(1)[0]).numpy(), views[0])
  assert np.abs(views[0] - views[1]).max() > 0.01


def test_finetune_view_only_crops_and_flips():
  # A constant-colour image keeps its colour: no jitter, no grayscale.
  config = AugmentConfig(image_size=16, jitter_prob=1.0)
  image = tf.fill([30, 30, 3], tf.constant(0, tf.uint8)) + tf.constant(
      [200, 30, 90], tf.uint8)
  expected = np.array([200, 30, 90]) / 255.0
  for seed in _seeds(10):
    out = augment.finetune_view(image, seed, config).numpy()
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape),
                               atol=1e-5)
    changed = augment.pretrain_view(image, seed, config).numpy()
    assert np.abs(changed - expected).max() > 1e-3


def test_eval_view_crops_the_center_of_large_images(rng):
  image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
  config = AugmentConfig(image_size=224)
  out = augment.eval_view(tf.constant(image), config).numpy()
  np.testing.assert_allclose(out, image[16:240, 16:240] / 255.0, atol=1e-5)


def test_eval_view_only_resizes_small_images(rng):
  image = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
  out = augment.eval_view(tf.constant(image),
                          AugmentConfig(image_size=28)).numpy()
  np.testing.assert_allclose(out, image / 255.0, atol=1e-7)
  resized = augment.eval_view(tf.constant(image),
                              AugmentConfig(image_size=32)).numpy()
  assert resized.shape == (32, 32, 3)
  # No crop: the border pixels survive the resize.
  assert abs(resized[0, 0, 0] - image[0, 0, 0] / 255.0) < 0.15
