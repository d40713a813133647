"""The source a `--dataset` name stands for: folder:PATH, Fashion-MNIST's
IDX files when present, else a TFDS dataset."""

import os

from simclr_tf.config import DataConfig
from simclr_tf.inputs import idx
from simclr_tf.inputs import tfds_source
from simclr_tf.inputs.array_source import fashion_mnist_source
from simclr_tf.inputs.folder_source import FolderSource
from simclr_tf.inputs.sources import FASHION_MNIST_SYSTEM_DIR, Source

FOLDER_PREFIX = 'folder:'
# Under --data_dir: the header checks of image folders, reused while their
# files are unchanged.
FOLDER_SCANS_DIR = 'folder_scans'


def make_source(config: DataConfig) -> Source:
  """The source named by `config.dataset`."""
  name = config.dataset
  if name.startswith(FOLDER_PREFIX):
    return FolderSource(name[len(FOLDER_PREFIX):], config.max_image_pixels,
                        scan_cache_dir=os.path.join(config.data_dir,
                                                    FOLDER_SCANS_DIR))
  if name == 'fashion_mnist':
    directory = idx.find_fashion_mnist([config.data_dir,
                                        FASHION_MNIST_SYSTEM_DIR])
    if directory:
      return fashion_mnist_source(directory)
  return tfds_source.tfds_source(name, config.data_dir)
