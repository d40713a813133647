"""Peak memory of hostile images, with and without --max_image_pixels.

  python -m benchmarks.image_limits --output=benchmarks/results/image_limits.json

Small PNG files that declare huge images (a one-bit 12000 x 12000 image in an
image folder; a 20000 x 20000 one sent to `serving_bytes`). Each case runs in
its own process, so the peak resident memory is its own: the folder case
scans the folder and reads 20 training batches; the serving case builds the
export module of a small model and sends the one image.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_string('output', None, 'JSON file for the results.')
flags.DEFINE_string('child', None, 'Internal: run one case here.')
flags.DEFINE_string('workdir', None, 'Internal: where the images are.')
flags.DEFINE_integer('limit', None, 'Internal: --max_image_pixels.')
FLAGS = flags.FLAGS

_FOLDER_BOMB = (12000, 12000)
_SERVING_BOMB = (20000, 20000)
_NO_LIMIT = 10**12


def _peak_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _make_images(workdir):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.MAX_IMAGE_PIXELS = None  # Writing the bombs is the point here.
  rng = np.random.default_rng(0)
  for label in ('a', 'b'):
    os.makedirs(os.path.join(workdir, 'folder', label))
    for i in range(20):
      Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
          os.path.join(workdir, 'folder', label, f'{i}.png'))
  Image.new('1', _FOLDER_BOMB).save(
      os.path.join(workdir, 'folder', 'a', 'bomb.png'))
  Image.new('1', _SERVING_BOMB).save(os.path.join(workdir, 'serving.png'))


def _folder_case(workdir, limit) -> dict:
  # pylint: disable=g-import-not-at-top
  from simclr_tf.config import AugmentConfig, DataConfig
  from simclr_tf.inputs import folder_source
  from simclr_tf.inputs import pipeline
  source = folder_source.FolderSource(os.path.join(workdir, 'folder'), limit)
  dataset = pipeline.train_dataset(
      source, pipeline.Split('train'), global_batch_size=8,
      augment_config=AugmentConfig(image_size=32, use_blur=False),
      data=DataConfig(seed=0), views=2)
  for _ in zip(range(20), dataset):
    pass
  return {'images_kept': sum(source.split_sizes.values())}


def _serving_case(workdir, limit) -> dict:
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from simclr_tf.config import AugmentConfig, EncoderConfig, ModelConfig
  from simclr_tf.network.model import SimCLRModel
  from simclr_tf.serving import export
  model = SimCLRModel(ModelConfig(encoder=EncoderConfig(
      resnet_depth=18, width_multiplier=0.25, cifar_stem=True)))
  model(tf.zeros([1, 32, 32, 3]))
  root = export.build_module(model, AugmentConfig(image_size=32), limit)
  with open(os.path.join(workdir, 'serving.png'), 'rb') as f:
    encoded = f.read()
  before = _peak_gb()
  try:
    root.serving_bytes(tf.constant([encoded]))
    outcome = 'decoded'
  except tf.errors.InvalidArgumentError:
    outcome = 'refused'
  return {'outcome': outcome, 'peak_before_request_gb': before}


def _child():
  started = time.perf_counter()
  case = {'folder': _folder_case, 'serving': _serving_case}[FLAGS.child]
  result = case(FLAGS.workdir, FLAGS.limit)
  result.update(peak_memory_gb=_peak_gb(),
                seconds=time.perf_counter() - started)
  print(json.dumps(result))


def main(_):
  if FLAGS.child:
    _child()
    return
  results = []
  with tempfile.TemporaryDirectory() as workdir:
    _make_images(workdir)
    sizes = {'folder bomb.png': os.path.getsize(
                 os.path.join(workdir, 'folder', 'a', 'bomb.png')),
             'serving.png': os.path.getsize(
                 os.path.join(workdir, 'serving.png'))}
    for case, pixels in (('folder', _FOLDER_BOMB), ('serving', _SERVING_BOMB)):
      for limit in (40_000_000, _NO_LIMIT):
        output = subprocess.run(
            [sys.executable, '-m', 'benchmarks.image_limits',
             f'--child={case}', f'--workdir={workdir}', f'--limit={limit}'],
            check=True, capture_output=True, text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')).stdout
        result = json.loads(output.strip().splitlines()[-1])
        result.update(case=case, declared_pixels=f'{pixels[0]}x{pixels[1]}',
                      max_image_pixels=limit if limit < _NO_LIMIT else None)
        print(json.dumps(result))
        results.append(result)
  report = {'date': time.strftime('%Y-%m-%d'), 'file_bytes': sizes,
            'results': results}
  if FLAGS.output:
    from simclr_tf.storage import records  # pylint: disable=g-import-not-at-top
    records.write_json(FLAGS.output, report)


if __name__ == '__main__':
  app.run(main)
