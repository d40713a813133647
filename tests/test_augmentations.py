"""--augmentations: each transformation against an independent computation,
the default composition against the views made before the flag existed,
and bad values rejected before any work."""

import os

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
import tensorflow as tf

from simclr_tf.config import AugmentConfig
from simclr_tf.inputs import augment
from simclr_tf.inputs import augmentation_names
from simclr_tf.settings import checks
from simclr_tf.settings import resolver
from tests import helpers
from tests.helpers import run

# Views of the SimCLR pipeline (crop, flip, colour distortion, blur) as it
# was before transformations could be chosen, for seeds [s, 7] (s = 0..5),
# and multi-crop small views for seeds [s, 9]: the default must keep them.
_DEFAULT_VIEWS = os.path.join(os.path.dirname(__file__), 'data',
                              'default_views.npz')


def _seed(*values):
  return tf.constant(values, tf.int64)


def _views(image, config, seeds, **kwargs):
  view = tf.function(lambda s: augment.pretrain_view(image, s, config,
                                                     **kwargs))
  return np.stack([view(_seed(*s)).numpy() for s in seeds])


@pytest.mark.parametrize('size,use_blur', [(16, True), (28, False)])
@pytest.mark.parametrize('named', [None, 'crop,flip,color,gray,blur'])
def test_default_composition_keeps_the_earlier_views(size, use_blur, named):
  stored = np.load(_DEFAULT_VIEWS)
  image = tf.constant(stored[f'image_{size}'])
  if named and not use_blur:
    named = named.replace(',blur', '')
  config = AugmentConfig(image_size=size, use_blur=use_blur,
                         augmentations=named)
  views = _views(image, config, [(s, 7) for s in range(6)])
  # Up to the last bit of float arithmetic on another CPU; a changed seed or
  # order would move pixels by tenths.
  np.testing.assert_allclose(views, stored[f'views_{size}'], atol=1e-6)
  small = _views(image, AugmentConfig(image_size=size, use_blur=use_blur,
                                      augmentations=named, num_small_crops=2),
                 [(s, 9) for s in range(3)], small=True)
  np.testing.assert_allclose(small, stored[f'small_views_{size}'], atol=1e-6)


def test_added_transformations_leave_the_default_draws_alone(rng):
  """Naming rotation, say, changes the view by a rotation alone: crop,
  flip and colour come from the same seeds as without it (colour commutes
  with rotation up to the order of contrast's mean)."""
  image = tf.constant(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
  seeds = [(s, 3) for s in range(8)]
  plain = _views(image, AugmentConfig(image_size=24, use_blur=False), seeds)
  rotated = _views(image, AugmentConfig(
      image_size=24, augmentations='crop,flip,rotate,color,gray'), seeds)
  for before, after in zip(plain, rotated):
    assert any(np.allclose(np.rot90(before, k), after, atol=1e-5)
               for k in (1, 2, 3))


def test_gray_is_the_luma_of_the_image(rng):
  image = rng.uniform(size=(12, 12, 3)).astype(np.float32)
  luma = image @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  np.testing.assert_allclose(augment.to_grayscale(tf.constant(image)),
                             np.repeat(luma[..., None], 3, axis=-1),
                             atol=1e-6)
  # As a view: the luma with the paper's probability 0.2, else the image.
  views = _views(tf.constant(image), AugmentConfig(
      image_size=12, augmentations='gray'), [(s, 1) for s in range(400)])
  gray = [np.allclose(v, luma[..., None], atol=1e-6) for v in views]
  same = [np.array_equal(v, image) for v in views]
  assert all(g != s for g, s in zip(gray, same))
  assert 0.14 < np.mean(gray) < 0.26


def test_rotation_is_a_quarter_turn_other_than_none(rng):
  image = rng.uniform(size=(10, 10, 3)).astype(np.float32)
  views = _views(tf.constant(image), AugmentConfig(
      image_size=10, augmentations='rotate'), [(s, 2) for s in range(300)])
  turns = [next(k for k in range(4) if np.array_equal(np.rot90(image, k), v))
           for v in views]
  counts = np.bincount(turns, minlength=4)
  assert counts[0] == 0
  assert all(70 < n < 130 for n in counts[1:])


def test_sobel_is_scipy_sobel_magnitude_of_the_luma(rng):
  image = rng.uniform(size=(16, 20, 3)).astype(np.float32)
  luma = (image @ np.array([0.2989, 0.5870, 0.1140])).astype(np.float64)
  # tf.image.sobel_edges pads by reflection without repeating the edge:
  # scipy's 'mirror'.
  magnitude = np.hypot(ndimage.sobel(luma, axis=0, mode='mirror'),
                       ndimage.sobel(luma, axis=1, mode='mirror'))
  expected = np.repeat((magnitude / magnitude.max())[..., None], 3, axis=-1)
  np.testing.assert_allclose(augment.sobel_magnitude(tf.constant(image)),
                             expected, atol=1e-5)


def test_cutout_zeroes_the_square_inside_the_image(rng):
  image = rng.uniform(0.1, 1.0, size=(10, 12, 3)).astype(np.float32)
  for center_y, center_x, side in [(5, 6, 4), (0, 0, 5), (9, 11, 6),
                                   (4, 1, 3)]:
    expected = image.copy()
    top, left = center_y - side // 2, center_x - side // 2
    expected[max(top, 0):top + side, max(left, 0):left + side] = 0
    np.testing.assert_array_equal(
        augment.cutout(tf.constant(image), center_y, center_x, side),
        expected)


def test_cutout_area_matches_a_uniformly_placed_square():
  """Mean zeroed area over seeds against the exact expectation of a side-s
  square centred uniformly, clipped to the image."""
  size, side = 20, 10
  ones = tf.ones([size, size, 3])
  views = _views(ones, AugmentConfig(image_size=size, augmentations='cutout',
                                     cutout_fraction=0.5),
                 [(s, 4) for s in range(600)])
  areas = (views[..., 0] == 0).sum(axis=(1, 2))
  extent = [len(range(max(0, c - side // 2), min(size, c - side // 2 + side)))
            for c in range(size)]
  expected = np.mean(extent) ** 2  # rows and columns drawn independently
  assert areas.max() == side * side
  assert abs(areas.mean() - expected) < 0.05 * expected


def test_noise_is_zero_mean_with_the_set_deviation():
  gray = tf.fill([64, 64, 3], 0.5)
  noisy = augment.gaussian_noise(gray, _seed(1, 2), 0.1).numpy() - 0.5
  assert abs(noisy.mean()) < 0.01
  assert abs(noisy.std() - 0.1) < 0.005
  # Independent pixels: neighbours uncorrelated.
  assert abs(np.corrcoef(noisy[:, :-1].ravel(), noisy[:, 1:].ravel())[0, 1]
             ) < 0.05
  view = _views(gray, AugmentConfig(image_size=64, augmentations='noise'),
                [(1, 2)])[0]
  assert view.min() >= 0 and view.max() <= 1 and view.std() > 0.09


def test_no_transformation_leaves_the_image_and_second_view_can_differ(rng):
  image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  config = AugmentConfig(image_size=16, augmentations='crop,color,gray',
                         second_view_augmentations='none')
  first = _views(tf.constant(image), config, [(0, 5)])[0]
  second = _views(tf.constant(image), config, [(0, 5)], second=True)[0]
  np.testing.assert_allclose(second, image / 255.0, atol=1e-6)
  assert not np.array_equal(first, second)


def test_resolver_records_the_composition_in_application_order():
  values = resolver.derive({'augmentations': 'sobel, crop,rotate'},
                           native_image_size=28, num_classes=10,
                           strategy=tf.distribute.get_strategy())
  assert values['augmentations'] == 'crop,rotate,sobel'
  assert values['use_blur'] is False
  default = resolver.derive({}, native_image_size=64, num_classes=10,
                            strategy=tf.distribute.get_strategy())
  assert default['augmentations'] == 'crop,flip,color,gray,blur'
  with pytest.raises(checks.UsageError, match='disagree on blur'):
    resolver.derive({'augmentations': 'crop,blur', 'use_blur': False},
                    native_image_size=28, num_classes=10,
                    strategy=tf.distribute.get_strategy())


@pytest.mark.parametrize('value,message', [
    ('crop,zoom', "unknown transformation 'zoom'"),
    ('crop,crop', 'names crop twice'),
    ('none,crop', "unknown transformation 'none'"),
    (',', 'names no transformation'),
])
def test_bad_names_are_rejected(value, message):
  with pytest.raises(checks.UsageError, match=message):
    checks.check_augmentations('augmentations', value)


def test_run_py_rejects_an_unknown_name_before_any_work(tmp_path):
  model_dir = tmp_path / 'run'
  result = run('--mode=train', '--dataset=fashion_mnist',
               f'--model_dir={model_dir}', '--augmentations=crop,zoom')
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines()
           if line.startswith('run.py')]
  assert lines == ["run.py: error: --augmentations: unknown transformation "
                   "'zoom'; use some of " +
                   ', '.join(augmentation_names.AUGMENTATIONS) +
                   ' (or none alone).']
  assert not model_dir.exists()


def test_preview_shows_any_composition(tmp_path, rng):
  """Rotation against the unaugmented image: in every pair the second view
  is the original tile and the first a quarter turn of it."""
  root = helpers.make_class_folder(str(tmp_path / 'imgs'), rng, size=(24, 24))
  out = tmp_path / 'views.png'
  result = run('--mode=preview', f'--dataset=folder:{root}', '--image_size=24',
               '--preview_images=2', '--preview_pairs=2',
               '--augmentations=rotate', '--second_view_augmentations=none',
               f'--preview_path={out}')
  assert result.returncode == 0, result.stderr
  grid = np.asarray(Image.open(out))
  tile, gap = 96, 4
  for row in range(2):
    top = row * (tile + gap)
    def tile_at(left):
      return grid[top:top + tile, left:left + tile]
    original = tile_at(0)
    for pair in range(2):
      left = tile + 2 * gap + pair * (2 * tile + 3 * gap)
      first, second = tile_at(left), tile_at(left + tile + gap)
      np.testing.assert_array_equal(second, original)
      assert any(np.array_equal(np.rot90(original, k), first)
                 for k in (1, 2, 3))
