"""The SavedModel contract (docs/contract.md, section 5): signatures, TF Serving,
TF Hub-style reuse, Keras 3 loading, embeddings, and crash safety."""

import base64
import json
import logging
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from simclr_tf.config import (AugmentConfig, EncoderConfig, ModelConfig,
                              ProjectionHeadConfig, SupervisedHeadConfig)
from simclr_tf.network.model import SimCLRModel
from simclr_tf.serving import export
from simclr_tf.serving import projector
from simclr_tf.serving import retrievals
from tests import helpers
from tests.helpers import run

SIZE = 16
AUGMENT = AugmentConfig(image_size=SIZE)


def _model(num_classes=4):
  config = ModelConfig(
      encoder=EncoderConfig(resnet_depth=18, width_multiplier=0.25,
                            cifar_stem=True),
      projection_head=ProjectionHeadConfig(proj_out_dim=8, num_proj_layers=2),
      supervised_head=SupervisedHeadConfig(num_classes=num_classes))
  model = SimCLRModel(config)
  model(tf.zeros([1, SIZE, SIZE, 3]))
  return helpers.randomize_batch_norm(model)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('export'))
  model = _model()
  path = export.export(model, AUGMENT, model_dir, global_step=7)
  return model, path, model_dir


def _images(n=5, seed=1):
  rng = np.random.default_rng(seed)
  return rng.uniform(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def test_serving_default_equals_the_model_in_inference_mode(exported):
  model, path, _ = exported
  assert path.endswith(os.path.join('saved_model', '7'))
  images = _images()
  outputs = tf.saved_model.load(path).signatures['serving_default'](
      images=tf.constant(images))
  expected = model(images, training=False)
  assert set(outputs) == {'default', 'final_avg_pool', 'proj_head_output',
                          'logits_sup', 'probabilities'}
  for key in ('final_avg_pool', 'proj_head_output', 'logits_sup'):
    np.testing.assert_allclose(outputs[key], expected[key], atol=1e-5)
  np.testing.assert_allclose(outputs['default'], expected['final_avg_pool'],
                             atol=1e-5)
  np.testing.assert_allclose(outputs['probabilities'],
                             tf.nn.softmax(expected['logits_sup']), atol=1e-5)
  # The batch dimension is dynamic.
  one = tf.saved_model.load(path).signatures['serving_default'](
      images=tf.constant(images[:1]))
  assert one['default'].shape == (1, 128)


def test_serving_bytes_decodes_and_preprocesses_like_eval(exported):
  _, path, _ = exported
  loaded = tf.saved_model.load(path)
  pixels = (np.random.default_rng(2).uniform(0, 255, (3, SIZE, SIZE, 3))
            .astype(np.uint8))
  png = [helpers.encode(p, 'PNG') for p in pixels]
  from_bytes = loaded.signatures['serving_bytes'](
      image_bytes=tf.constant(png))
  from_floats = loaded.signatures['serving_default'](
      images=tf.constant(pixels / 255.0, tf.float32))
  for key in from_floats:
    np.testing.assert_allclose(from_bytes[key], from_floats[key], atol=1e-5)
  # JPEG of another size works too (decoded, then resized like eval).
  jpeg = helpers.encode(helpers.random_rgb(np.random.default_rng(3), 30, 40),
                        'JPEG')
  out = loaded.signatures['serving_bytes'](image_bytes=tf.constant([jpeg]))
  assert out['default'].shape == (1, 128)
  assert np.isfinite(out['default'].numpy()).all()


def _cli(*args):
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([cli, *args], capture_output=True, text=True,
                        env=env, timeout=300)


def test_saved_model_cli_shows_and_runs_the_signatures(exported, tmp_path):
  _, path, _ = exported
  shown = _cli('show', '--dir', path, '--all')
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert "signature_def['serving_default']" in shown.stdout
  assert "signature_def['serving_bytes']" in shown.stdout
  assert "inputs['images']" in shown.stdout
  assert "inputs['image_bytes']" in shown.stdout
  np.save(tmp_path / 'x.npy', _images(2))
  ran = _cli('run', '--dir', path, '--tag_set', 'serve', '--signature_def',
             'serving_default', '--inputs', f'images={tmp_path}/x.npy')
  assert ran.returncode == 0, ran.stderr[-2000:]
  assert 'probabilities' in ran.stdout


def test_a_tf_serving_predict_request_gets_the_same_numbers(exported):
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  model, path, _ = exported
  images = _images(3)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = 'simclr'
  request.model_spec.signature_name = 'serving_default'
  request.inputs['images'].CopyFrom(tf.make_tensor_proto(images))
  # What the server does: look up the signature, feed the tensors, answer.
  wire = predict_pb2.PredictRequest.FromString(request.SerializeToString())
  signature = tf.saved_model.load(path).signatures[
      wire.model_spec.signature_name]
  outputs = signature(**{k: tf.constant(tf.make_ndarray(v))
                         for k, v in wire.inputs.items()})
  response = predict_pb2.PredictResponse()
  for key, value in outputs.items():
    response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
  answer = predict_pb2.PredictResponse.FromString(
      response.SerializeToString())
  np.testing.assert_allclose(tf.make_ndarray(answer.outputs['default']),
                             model(images)['final_avg_pool'], atol=1e-5)
  # The REST form of serving_bytes: {"b64": ...} decodes to the same bytes.
  png = helpers.encode((images[0] * 255).astype(np.uint8), 'PNG')
  body = json.loads(json.dumps({
      'signature_name': 'serving_bytes',
      'instances': [{'image_bytes': {'b64': base64.b64encode(png).decode()}}]}))
  decoded = base64.b64decode(body['instances'][0]['image_bytes']['b64'])
  rest = tf.saved_model.load(path).signatures['serving_bytes'](
      image_bytes=tf.constant([decoded]))
  assert rest['default'].shape == (1, 128)


def test_keras3_tfsmlayer_gives_the_signature_outputs(exported):
  import keras  # pylint: disable=g-import-not-at-top
  _, path, _ = exported
  layer = keras.layers.TFSMLayer(path, call_endpoint='serving_default')
  images = _images(4)
  outputs = layer(images)
  expected = tf.saved_model.load(path).signatures['serving_default'](
      images=tf.constant(images))
  np.testing.assert_allclose(outputs['default'], expected['default'],
                             atol=1e-6)


def test_hub_keras_layer_fine_tunes_the_encoder(exported):
  # tf_keras, as TF Hub uses it; run in a subprocess so that its Keras 2
  # does not share the process with Keras 3.
  model, path, _ = exported
  script = f'''
import os
os.environ['TF_USE_LEGACY_KERAS'] = '1'
import numpy as np, tensorflow as tf, tensorflow_hub as hub, tf_keras
layer = hub.KerasLayer({path!r}, trainable=True)
model = tf_keras.Sequential([
    tf_keras.Input([{SIZE}, {SIZE}, 3]), layer, tf_keras.layers.Dense(1)])
x = np.random.default_rng(0).uniform(0, 1, (32, {SIZE}, {SIZE}, 3))
y = x.mean(axis=(1, 2, 3))[:, None] * 10
before = [v.numpy().copy() for v in layer.trainable_variables]
stats = [v.numpy().copy() for v in layer.non_trainable_variables]
model.compile(tf_keras.optimizers.SGD(0.01), 'mse')
first = model.evaluate(x, y, verbose=0)
model.fit(x, y, epochs=10, batch_size=16, verbose=0)
last = model.evaluate(x, y, verbose=0)
moved = sum(not np.allclose(a, v.numpy())
            for a, v in zip(before, layer.trainable_variables))
moved_stats = sum(not np.allclose(a, v.numpy())
                  for a, v in zip(stats, layer.non_trainable_variables))
print('RESULT', len(before), moved, moved_stats, first, last)
'''
  result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith('RESULT')][0]
  trainable, moved, moved_stats, first, last = line.split()[1:]
  # Exactly the variables its call uses: the encoder's, not the heads'.
  assert int(trainable) == len(model.encoder_variables)
  assert int(trainable) < len(model.trainable_variables)
  assert 'Gradients do not exist' not in result.stderr
  assert 'unsaved custom gradients' not in result.stderr
  assert int(moved) > int(trainable) // 2
  assert int(moved_stats) > 0  # Batch norm statistics train too.
  assert float(last) < float(first)


def test_the_export_loads_without_warnings(exported, caplog):
  """Nothing in the export (the supervised head's standardising batch norm
  included) carries a custom gradient that a SavedModel cannot keep:
  loading it would warn that gradients "will likely fail"."""
  _, path, _ = exported
  with caplog.at_level(logging.WARNING):
    loaded = tf.saved_model.load(path)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING]
  assert not warnings, warnings
  images = tf.constant(_images(2))
  with tf.GradientTape() as tape:
    features = loaded(images, training=True)
  variables = loaded.trainable_variables
  gradients = tape.gradient(features, variables)
  assert variables and all(g is not None for g in gradients)


def test_a_crash_during_export_keeps_earlier_exports(exported, monkeypatch):
  model, _, model_dir = exported
  base = os.path.join(model_dir, 'saved_model')
  before = sorted(os.listdir(base))

  def crash(obj, directory, signatures=None):
    del obj, signatures
    os.makedirs(os.path.join(directory, 'variables'))
    with open(os.path.join(directory, 'saved_model.pb'), 'wb') as f:
      f.write(b'half')
    raise OSError('disk full')

  monkeypatch.setattr(tf.saved_model, 'save', crash)
  with pytest.raises(OSError, match='disk full'):
    export.export(model, AUGMENT, model_dir, global_step=9, keep=1)
  assert sorted(os.listdir(base)) == before
  loaded = tf.saved_model.load(os.path.join(base, before[0]))
  assert 'serving_default' in loaded.signatures


def test_only_the_newest_exports_are_kept(tmp_path):
  model = _model(num_classes=None)
  for step in (1, 2, 3):
    export.export(model, AUGMENT, str(tmp_path), step, keep=2)
  assert sorted(os.listdir(tmp_path / 'saved_model')) == ['2', '3']
  outputs = tf.saved_model.load(str(tmp_path / 'saved_model' / '3')) \
      .signatures['serving_default'](images=tf.constant(_images(1)))
  assert set(outputs) == {'default', 'final_avg_pool', 'proj_head_output'}


def test_embed_mode_writes_embeddings_paths_labels_and_neighbors(
    exported, tmp_path, rng):
  _, path, _ = exported
  root = helpers.make_class_folder(str(tmp_path / 'imgs'), rng,
                                   classes=('x', 'y'), per_class=6,
                                   size=(SIZE, SIZE))
  output = tmp_path / 'emb.npz'
  result = run('--mode=embed', f'--saved_model={path}',
               f'--dataset=folder:{root}', f'--output={output}',
               '--neighbors=3', '--eval_batch_size=5')
  assert result.returncode == 0, result.stderr[-3000:]
  data = np.load(output)
  paths = [str(p) for p in data['paths']]
  assert sorted(paths) == sorted(
      os.path.join(root, c, f'{i}.png') for c in 'xy' for i in range(6))
  assert data['embeddings'].shape == (12, 128)
  assert [str(c) for c in data['class_names']] == ['x', 'y']
  assert data['labels'].tolist() == [
      ['x', 'y'].index(os.path.basename(os.path.dirname(p))) for p in paths]
  # Embeddings are the model's, image by image.
  serve = tf.saved_model.load(path).signatures['serving_bytes']
  one = serve(image_bytes=tf.constant([open(paths[4], 'rb').read()]))
  np.testing.assert_allclose(data['embeddings'][4], one['default'][0],
                             atol=1e-5)
  # Neighbours against numpy: cosine similarity, self excluded.
  unit = data['embeddings'] / np.linalg.norm(data['embeddings'], axis=1,
                                             keepdims=True)
  similarity = unit @ unit.T
  np.fill_diagonal(similarity, -np.inf)
  expected = np.argsort(-similarity, axis=1)[:, :3]
  np.testing.assert_array_equal(data['neighbors'], expected)
  np.testing.assert_allclose(data['neighbor_similarities'],
                             np.take_along_axis(similarity, expected, 1),
                             atol=1e-5)


def test_serving_bytes_rejects_a_bad_request_and_keeps_serving(exported):
  _, path, _ = exported
  serve = tf.saved_model.load(path).signatures['serving_bytes']
  with pytest.raises(tf.errors.InvalidArgumentError):
    serve(image_bytes=tf.constant([b'not an image']))
  good = helpers.encode(helpers.random_rgb(np.random.default_rng(5), SIZE,
                                           SIZE), 'PNG')
  assert serve(image_bytes=tf.constant([good]))['default'].shape == (1, 128)


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG', 'GIF', 'BMP'])
def test_header_size_agrees_with_pil(fmt, rng):
  for height, width in ((7, 300), (513, 65), (1, 1)):
    encoded = helpers.encode(helpers.random_rgb(rng, height, width), fmt)
    assert [int(v) for v in export.header_size(tf.constant(encoded))] == [
        height, width]
  for other in (b'', b'GIF', b'not an image at all'):
    assert [int(v) for v in export.header_size(tf.constant(other))] == [
        -1, -1]


def test_serving_bytes_refuses_huge_images_and_names_the_item(exported):
  _, path, _ = exported
  serve = tf.saved_model.load(path).signatures['serving_bytes']
  good = helpers.encode(helpers.random_rgb(np.random.default_rng(5), SIZE,
                                           SIZE), 'PNG')
  bomb = helpers.png_header(20000, 20000)  # 1.2 GB decoded, 57 bytes sent.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'image_bytes\[\] \[2\] \[\] is\] \[20000\] \[x\] '
                           r'\[20000\] \[pixels, more than the limit of\] '
                           r'\[40000000\]'):
    serve(image_bytes=tf.constant([good, good, bomb]))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'image_bytes\[\] \[1\] \[\] is not a JPEG'):
    serve(image_bytes=tf.constant([good, b'junk']))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match='the batch is empty'):
    serve(image_bytes=tf.constant([], tf.string))
  assert serve(image_bytes=tf.constant([good]))['default'].shape == (1, 128)


def test_embed_mode_writes_a_projector_and_retrievals(exported, tmp_path,
                                                      rng):
  """The Projector as TensorBoard's own plugin reads it; the retrieval
  picture against a numpy nearest-neighbour search."""
  from tensorboard.plugins import base_plugin  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.projector import projector_plugin  # pylint: disable=g-import-not-at-top
  _, path, _ = exported
  root = tmp_path / 'imgs'
  helpers.make_class_folder(str(root / 'train'), rng, classes=('x', 'y'),
                            per_class=6, size=(SIZE, SIZE + 4))
  helpers.make_class_folder(str(root / 'test'), rng, classes=('x', 'y'),
                            per_class=2, size=(SIZE, SIZE))
  logdir, picture = tmp_path / 'projector', tmp_path / 'retrievals.png'
  result = run('--mode=embed', f'--saved_model={path}',
               f'--dataset=folder:{root}', f'--output={tmp_path / "e.npz"}',
               f'--projector_dir={logdir}', f'--retrievals={picture}',
               '--retrieval_queries=3', '--retrieval_neighbors=4')
  assert result.returncode == 0, result.stderr[-3000:]
  data = np.load(tmp_path / 'e.npz')
  paths, labels = [str(p) for p in data['paths']], data['labels']

  plugin = projector_plugin.ProjectorPlugin(
      base_plugin.TBContext(logdir=str(logdir), data_provider=None))
  configs, config_paths = plugin._read_latest_config_files(  # pylint: disable=protected-access
      [('.', str(logdir))])
  plugin._configs, plugin.config_fpaths = configs, config_paths  # pylint: disable=protected-access
  plugin._augment_configs_with_checkpoint_info()  # pylint: disable=protected-access
  (embedding,) = configs['.'].embeddings
  assert list(embedding.tensor_shape) == [16, 128]
  tensor = plugin._get_reader_for_run('.').get_tensor(embedding.tensor_name)  # pylint: disable=protected-access
  np.testing.assert_array_equal(tensor, data['embeddings'])
  rows = (logdir / embedding.metadata_path).read_text().splitlines()
  assert rows == ['label\tpath'] + [f'{"xy"[l]}\t{p}'
                                    for l, p in zip(labels, paths)]
  side = embedding.sprite.single_image_dim[0]
  sprite = np.asarray(Image.open(logdir / embedding.sprite.image_path))
  per_row = sprite.shape[1] // side
  assert per_row == 4 and sprite.shape[0] == 4 * side  # 16 images
  for i in (0, 7, 15):
    top, left = (i // per_row) * side, (i % per_row) * side
    tile = sprite[top:top + side, left:left + side]
    np.testing.assert_array_equal(tile, projector.thumbnail(paths[i], side))
  # A 16 x 20 image fitted in the square: centred, black bars above/below.
  first = projector.thumbnail(paths[0], side)
  bar = (side - round(side * SIZE / (SIZE + 4))) // 2
  assert bar > 0 and not first[:bar - 1].any() and first[bar + 1:-bar - 1].any()

  # Retrievals: 3 seeded test images, each with its 4 most cosine-similar
  # training images, numpy's search.
  unit = data['embeddings'] / np.linalg.norm(data['embeddings'], axis=1,
                                             keepdims=True)
  test_rows = np.flatnonzero(data['splits'] == 'test')
  train_rows = np.flatnonzero(data['splits'] == 'train')
  queries = test_rows[retrievals.choose_queries(len(test_rows), 3)]
  similarity = unit[queries] @ unit[train_rows].T
  expected = train_rows[np.argsort(-similarity, axis=1)[:, :4]]
  grid = np.asarray(Image.open(picture))
  tile, gap, frame = retrievals.TILE_SIDE, 4, retrievals.FRAME
  assert grid.shape == (3 * tile + 2 * gap, 5 * tile + 5 * gap, 3)
  for row, query in enumerate(queries):
    top = row * (tile + gap)
    np.testing.assert_array_equal(grid[top:top + tile, :tile],
                                  projector.thumbnail(paths[query], tile))
    for j, neighbor in enumerate(expected[row]):
      left = tile + 2 * gap + j * (tile + gap)
      shown = grid[top:top + tile, left:left + tile]
      inner = slice(frame, tile - frame)
      np.testing.assert_array_equal(
          shown[inner, inner],
          projector.thumbnail(paths[neighbor], tile)[inner, inner])
      color = (40, 160, 60) if labels[neighbor] == labels[query] else (
          210, 40, 40)
      assert tuple(shown[0, tile // 2]) == color


def test_retrievals_without_query_images_fail_before_embedding(exported,
                                                               tmp_path, rng):
  _, path, _ = exported
  # One image per class: a flat folder holds none of them out.
  root = helpers.make_class_folder(str(tmp_path / 'imgs'), rng,
                                   classes=('x', 'y'), per_class=1,
                                   size=(SIZE, SIZE))
  result = run('--mode=embed', f'--saved_model={path}',
               f'--dataset=folder:{root}', f'--output={tmp_path / "e.npz"}',
               f'--retrievals={tmp_path / "r.png"}')
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines()
           if line.startswith('run.py')]
  assert lines == [f'run.py: error: --retrievals draws its queries from '
                   f"{root}'s evaluation split (test), which has no images; "
                   'add images there, or leave --retrievals out.']
  assert not (tmp_path / 'e.npz').exists()
