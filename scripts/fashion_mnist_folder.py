"""Writes Fashion-MNIST as an image folder (train/ and test/, a sub-folder
per class, PNG files): the layout `--dataset=folder:PATH` reads, to try the
folder path, `--mode=embed` and its retrieval picture on real images.

  python scripts/fashion_mnist_folder.py --output=/tmp/fashion_folder \
      --train_per_class=200 --test_per_class=20

With --format=idx it writes the same selection as the four IDX files of the
original release instead (rows in their original order), which
`--dataset=fashion_mnist --data_dir=DIR` reads: the tests' sample,
tests/data/fashion_mnist/, is

  python scripts/fashion_mnist_folder.py --format=idx \
      --output=tests/data/fashion_mnist --train_per_class=30 --test_per_class=10
"""

import os
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simclr_tf.inputs import idx  # pylint: disable=g-import-not-at-top

# Fashion-MNIST's classes, in label order (sortable folder names).
CLASSES = ('0_tshirt_top', '1_trouser', '2_pullover', '3_dress', '4_coat',
           '5_sandal', '6_shirt', '7_sneaker', '8_bag', '9_ankle_boot')

flags.DEFINE_string('output', None, 'The folder to write.')
flags.DEFINE_string('data_dir', 'data', 'Where the IDX files are looked for '
                    '(then /usr/share/datasets/fashion-mnist).')
flags.DEFINE_integer('train_per_class', 200, 'Training images per class, the '
                     'first ones of the split (0: all).')
flags.DEFINE_integer('test_per_class', 20, 'Test images per class.')
flags.DEFINE_enum('format', 'png', ['png', 'idx'], 'png: a folder per '
                  'class; idx: the original release\'s four IDX files.')
FLAGS = flags.FLAGS


def selected_rows(labels, per_class):
  """The first `per_class` rows of each class (all where 0), per class."""
  rows = [np.flatnonzero(labels == label) for label in range(len(CLASSES))]
  return [r[:per_class] if per_class else r for r in rows]


def write_split(images, labels, directory, per_class):
  for name, rows in zip(CLASSES, selected_rows(labels, per_class)):
    os.makedirs(os.path.join(directory, name), exist_ok=True)
    for row in rows:
      Image.fromarray(images[row]).save(
          os.path.join(directory, name, f'{row:05d}.png'))


def write_idx_split(images, labels, directory, split, per_class):
  rows = np.sort(np.concatenate(selected_rows(labels, per_class)))
  image_file, label_file = idx.FASHION_MNIST_FILES[split]
  os.makedirs(directory, exist_ok=True)
  idx.write_idx(os.path.join(directory, image_file), images[rows])
  idx.write_idx(os.path.join(directory, label_file),
                labels[rows].astype(np.uint8))


def main(_):
  found = idx.find_fashion_mnist([FLAGS.data_dir,
                                  '/usr/share/datasets/fashion-mnist'])
  if found is None:
    sys.exit('fashion_mnist_folder.py: error: no Fashion-MNIST IDX files in '
             f'{FLAGS.data_dir} or /usr/share/datasets/fashion-mnist; '
             'apt-get install dataset-fashion-mnist.')
  for split, per_class in (('train', FLAGS.train_per_class),
                           ('test', FLAGS.test_per_class)):
    images, labels = idx.load_fashion_mnist_split(found, split)
    if FLAGS.format == 'idx':
      write_idx_split(images, labels, FLAGS.output, split, per_class)
    else:
      write_split(images, labels, os.path.join(FLAGS.output, split),
                  per_class)
  what = ('the four IDX files' if FLAGS.format == 'idx' else
          'train/ and test/')
  print(f'Wrote {FLAGS.output}: {what}, {len(CLASSES)} classes.')


if __name__ == '__main__':
  flags.mark_flag_as_required('output')
  app.run(main)
