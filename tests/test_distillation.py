"""Distillation (--train_mode=distill): its objective against the
definition in numpy, its step on one and two replicas, the teacher against
its own SavedModel and never changed, a student that learns its teacher,
and bad teachers refused in one line."""

import dataclasses
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.inputs import augment
from simclr_tf.settings import registry
from simclr_tf.settings import resolver
from simclr_tf.storage import records
from simclr_tf.training import distillation
from simclr_tf.training import teacher
from simclr_tf.training.task import Plan, TrainTask, build_model
from tests import helpers


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference(teacher, student, labels, temperature, label_weight):
  """SimCLRv2's eq. 3 per image, and label_weight x the cross-entropy of
  the images with a label (>= 0), 0 for the others."""
  p = np.exp(_log_softmax(teacher / temperature))
  distill = -(p * _log_softmax(student / temperature)).sum(-1)
  log_q = _log_softmax(student)
  labeled = np.array([label_weight * -log_q[i, y] if y >= 0 else 0.0
                      for i, y in enumerate(labels)])
  agree = (teacher.argmax(-1) == student.argmax(-1)).astype(np.float32)
  return distill, labeled, agree


@pytest.mark.parametrize('temperature', [0.5, 1.0, 4.0])
@pytest.mark.parametrize('label_weight', [0.0, 0.3])
def test_terms_are_the_definition(temperature, label_weight):
  rng = np.random.default_rng(0)
  teacher = rng.normal(0, 3, (8, 5)).astype(np.float32)
  student = rng.normal(0, 3, (8, 5)).astype(np.float32)
  labels = np.array([0, -1, 4, -1, -1, 2, 1, -1])
  terms = distillation.distillation_terms(
      tf.constant(teacher), tf.constant(student), tf.constant(labels),
      temperature, label_weight)
  distill, labeled, agree = _reference(teacher, student, labels, temperature,
                                       label_weight)
  np.testing.assert_allclose(terms['distill_loss'], distill, rtol=1e-5)
  np.testing.assert_array_equal(terms['teacher_agreement'], agree)
  if label_weight:
    np.testing.assert_allclose(terms['distill_label_loss'], labeled,
                               rtol=1e-5, atol=1e-7)
    assert np.all(terms['distill_label_loss'].numpy()[labels < 0] == 0)
  else:
    assert 'distill_label_loss' not in terms


def test_a_student_equal_to_its_teacher_pays_the_teachers_entropy():
  # Hand-computed: logits (0, log 3) at T = 1 give p = (1/4, 3/4); the
  # cross-entropy of p with itself is its entropy.
  logits = tf.constant([[0.0, np.log(3.0)]])
  loss = distillation.soft_cross_entropy(logits, logits, 1.0)
  entropy = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
  np.testing.assert_allclose(loss, [entropy], rtol=1e-6)


def test_only_the_student_gets_gradients_and_they_are_the_softmax_gap():
  # d/ds of -sum p log softmax(s / T) is (softmax(s / T) - p) / T.
  teacher = tf.Variable([[1.0, -2.0, 0.5]])
  student = tf.Variable([[0.3, 0.1, -0.4]])
  temperature = 2.0
  with tf.GradientTape() as tape:
    loss = distillation.soft_cross_entropy(teacher, student, temperature)
  d_teacher, d_student = tape.gradient(loss, [teacher, student])
  assert d_teacher is None or np.all(d_teacher.numpy() == 0)
  p = np.exp(_log_softmax(teacher.numpy() / temperature))
  q = np.exp(_log_softmax(student.numpy() / temperature))
  np.testing.assert_allclose(d_student, (q - p) / temperature, rtol=1e-5)


def test_bfloat16_logits_are_scored_in_float32():
  rng = np.random.default_rng(1)
  teacher = rng.normal(0, 2, (4, 10)).astype(np.float32)
  student = rng.normal(0, 2, (4, 10)).astype(np.float32)
  terms = distillation.distillation_terms(
      tf.constant(teacher, tf.bfloat16), tf.constant(student, tf.bfloat16),
      tf.constant([1, -1, -1, 3]), 1.0, 1.0)
  assert all(v.dtype == tf.float32 for v in terms.values())
  # What float32 gives on the same (bfloat16-rounded) logits.
  rounded = [tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
             for x in (teacher, student)]
  distill, labeled, _ = _reference(*rounded, np.array([1, -1, -1, 3]), 1.0,
                                   1.0)
  np.testing.assert_allclose(terms['distill_loss'], distill, rtol=1e-5)
  np.testing.assert_allclose(terms['distill_label_loss'], labeled, rtol=1e-5)


# --- The distillation step, the teacher and run.py ------------------------

GLOBAL_BATCH = 12
SIZE = 12
_ARCHITECTURE = {'image_size': SIZE, 'resnet_depth': 18, 'cifar_stem': True,
                 'proj_out_dim': 16, 'num_proj_layers': 2, 'num_classes': 3,
                 'precision': 'float32'}


def write_teacher(directory, logit_spread=3.0, **settings):
  """A run directory holding a network with a supervised head (a checkpoint
  and flags.json, as a fine-tuning run leaves them); returns its weights.
  Its head is rescaled so that on random images each class's logit varies
  by `logit_spread` (standard deviation) around 0: a confident teacher
  whose top class varies from image to image."""
  config = registry.build({'model_dir': str(directory), **_ARCHITECTURE,
                           'width_multiplier': 0.25, 'train_mode': 'finetune',
                           **settings})
  keras.utils.set_random_seed(7)
  model = build_model(config)
  size = config.augment.image_size
  images = np.random.default_rng(7).uniform(0, 1, (64, size, size, 3))
  logits = model(images.astype(np.float32), training=False)['logits_sup']
  scale = logit_spread / float(tf.math.reduce_std(logits, 0).numpy().mean())
  mean = tf.reduce_mean(logits, 0)
  kernel, bias = model.supervised_head.linear.trainable_variables
  kernel.assign(kernel * scale)
  bias.assign((bias - mean) * scale)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                       str(directory), 1,
                                       checkpoint_name='ckpt')
  manager.save(checkpoint_number=1)
  records.write_json(os.path.join(directory, records.FLAGS_FILE),
                     {'config': dataclasses.asdict(config)})
  return [w.numpy() for w in model.weights]


def _student_config(teacher_dir, label_weight, temperature):
  return registry.build({
      'model_dir': 'unused', **_ARCHITECTURE, 'width_multiplier': 0.125,
      'train_mode': 'distill', 'teacher': str(teacher_dir),
      'distill_label_weight': label_weight,
      'distill_temperature': temperature, 'optimizer': 'momentum',
      'learning_rate': 0.5, 'weight_decay': 1e-4,
      'train_batch_size': GLOBAL_BATCH})


def _distill_batch():
  rng = np.random.default_rng(3)
  return {'image': rng.uniform(0, 1, (GLOBAL_BATCH, SIZE, SIZE, 3)).astype(
              np.float32),
          # Labels only where the run may use them; UNLABELED elsewhere.
          'label': np.array([2, -1, -1, 0, -1, 1, -1, -1, 0, -1, 2, -1])}


def _spec(path, image_size, num_classes=3):
  """The resolver's description of the teacher at `path` for a run on
  `image_size` px images of `num_classes` classes."""
  return resolver.resolve_teacher(registry.build({
      'model_dir': 'unused', 'image_size': image_size,
      'num_classes': num_classes, 'train_mode': 'distill',
      'teacher': str(path)}))


def _distill_step(config, replicas, initial):
  strategy = helpers.cpu_strategy(replicas)
  task = TrainTask(config, strategy, Plan(64, 8, 100, 0, 10),
                   _spec(config.model.distill.teacher, SIZE))
  task.model.set_weights(initial)
  teacher_before = [v.numpy() for v in task.teacher.variables]
  batch, local = _distill_batch(), GLOBAL_BATCH // replicas
  values = strategy.experimental_distribute_values_from_function(
      lambda ctx: {k: tf.constant(v[ctx.replica_id_in_sync_group * local:]
                                  [:local]) for k, v in batch.items()})
  tf.function(lambda b: strategy.run(task.replica_step, args=(b,)))(values)
  return (task.read_metrics(), [w.numpy() for w in task.model.weights],
          teacher_before, [v.numpy() for v in task.teacher.variables])


def test_a_distillation_step_is_its_definition_on_1_and_2_replicas(tmp_path):
  teacher_dir = tmp_path / 'teacher'
  teacher_weights = write_teacher(teacher_dir)
  config = _student_config(teacher_dir, label_weight=0.5, temperature=2.0)
  keras.utils.set_random_seed(0)
  student = build_model(config)
  initial = [w.numpy() for w in student.weights]
  batch = _distill_batch()
  # The reference: the teacher's logits from its own network, the
  # student's from its forward pass over the whole batch (global batch
  # norm), the terms in numpy.
  teacher_model = build_model(registry.build(
      {'model_dir': 'unused', **_ARCHITECTURE, 'width_multiplier': 0.25,
       'train_mode': 'finetune'}))
  teacher_model.set_weights(teacher_weights)
  teacher_logits = teacher_model(batch['image'],
                                 training=False)['logits_sup'].numpy()
  student_logits = student(batch['image'], training=True)['logits_sup'].numpy()
  distill, labeled, agree = _reference(teacher_logits, student_logits,
                                       batch['label'], 2.0, 0.5)
  assert agree.mean() < 1  # The student does not already agree.

  one, weights_one, before, after = _distill_step(config, 1, initial)
  assert one['distill_loss'] == pytest.approx(distill.mean(), rel=1e-5)
  assert one['distill_label_loss'] == pytest.approx(labeled.mean(), rel=1e-5)
  assert one['teacher_agreement'] == pytest.approx(agree.mean())
  assert one['total_loss'] == pytest.approx(
      distill.mean() + labeled.mean() + one['weight_decay'], rel=1e-5)
  # The teacher is the checkpoint's network, and the step left it alone.
  for got, want, kept in zip(before, teacher_weights, after):
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(kept, want)

  two, weights_two, _, after_two = _distill_step(config, 2, initial)
  for name in ('distill_loss', 'distill_label_loss', 'teacher_agreement',
               'total_loss'):
    assert two[name] == pytest.approx(one[name], rel=1e-5), name
  moved = 0
  for start, want, got in zip(initial, weights_one, weights_two):
    assert np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want) + 1e-9
    moved += not np.array_equal(want, start)
  assert moved > len(initial) // 2
  for kept, want in zip(after_two, teacher_weights):
    np.testing.assert_array_equal(kept, want)


def test_the_teacher_computes_what_its_runs_saved_model_does(tiny_run):
  saved_model = tf.io.gfile.glob(os.path.join(tiny_run.model_dir,
                                              'saved_model', '*'))[0]
  images = np.random.default_rng(0).uniform(0, 1, (5, 16, 16, 3)).astype(
      np.float32)
  exported = tf.saved_model.load(saved_model).signatures['serving_default'](
      images=tf.constant(images))['logits_sup'].numpy()
  run_spec = _spec(tiny_run.model_dir, 16)
  model_spec = _spec(saved_model, 16)
  for spec in (run_spec, model_spec):
    assert (spec.num_classes, spec.image_size) == (3, 16)
    logits = teacher.build(spec, 'float32')(tf.constant(images)).numpy()
    np.testing.assert_allclose(logits, exported, rtol=1e-4, atol=1e-5)


_STEPS = 80


def _colour_folder(root):
  """24 images in 3 class folders, each class brightest in one channel, by
  a margin that varies from image to image."""
  rng = np.random.default_rng(5)
  for label, name in enumerate(('red', 'green', 'blue')):
    for i in range(8):
      base = rng.uniform(0.2, 0.5, 3)
      base[label] += rng.uniform(0.05, 0.4)
      image = np.clip(base + rng.normal(0, 0.05, (20, 20, 3)), 0, 1)
      helpers.write(os.path.join(root, name, f'{i}.png'),
                    helpers.encode((255 * image).astype(np.uint8), 'PNG'))
  return str(root)


def _colour_teacher(directory):
  """A SavedModel teacher whose logits follow each image's mean colour:
  the student can learn them from any crop."""
  module = tf.Module()
  module.serve = tf.function(
      lambda images: {'logits_sup': 12.0 * (
          tf.reduce_mean(images, [1, 2]) -
          tf.reduce_mean(images, [1, 2, 3])[:, None])},
      input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
  tf.saved_model.save(module, str(directory),
                      signatures={'serving_default': module.serve})
  return directory


@pytest.fixture(scope='module')
def distilled(tmp_path_factory):
  """A student distilled for _STEPS steps from the colour teacher on the
  colour folder (16 px, 3 classes), a checkpoint half-way."""
  root = tmp_path_factory.mktemp('distill')
  folder = _colour_folder(root / 'colours')
  teacher_dir = _colour_teacher(root / 'teacher')
  flags = [f'--dataset=folder:{folder}', '--mode=train',
           '--train_mode=distill', f'--teacher={teacher_dir}',
           f'--train_steps={_STEPS}', f'--checkpoint_steps={_STEPS // 2}',
           '--optimizer=momentum', '--learning_rate=0.1',
           '--learning_rate_scaling=sqrt', '--warmup_epochs=0',
           '--deterministic', *helpers.TINY_RUN]
  student_dir = root / 'student'
  result = helpers.run(*flags, f'--model_dir={student_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  return folder, teacher_dir, student_dir, flags, result.stderr


def _folder_images(folder):
  augment_config = registry.build({'model_dir': 'unused',
                                   'image_size': 16}).augment
  paths = sorted(tf.io.gfile.glob(os.path.join(folder, '*', '*.png')))
  return tf.stack([augment.eval_view(tf.io.decode_png(tf.io.read_file(p), 3),
                                     augment_config) for p in paths])


def test_a_student_learns_its_teachers_predictions(distilled):
  folder, teacher_dir, student_dir, _, _ = distilled
  images = _folder_images(folder)
  target = teacher.build(_spec(teacher_dir, 16), 'float32')(images).numpy()
  saved_model = tf.io.gfile.glob(os.path.join(student_dir, 'saved_model',
                                              '*'))[0]
  student = tf.saved_model.load(saved_model).signatures['serving_default'](
      images=images)['logits_sup'].numpy()
  p = np.exp(_log_softmax(target))
  kl = (p * (np.log(p + 1e-12) - _log_softmax(student))).sum(-1).mean()
  uniform_kl = (p * (np.log(p + 1e-12) + np.log(3))).sum(-1).mean()
  # The teacher is confident and not constant: there is something to learn.
  assert uniform_kl > 0.5 and len(set(target.argmax(-1))) > 1
  # The student's top class is the teacher's wherever the teacher is
  # sure (some images are near-ties between two colours).
  sure = p.max(-1) > 0.6
  assert sure.sum() >= 12
  np.testing.assert_array_equal(student.argmax(-1)[sure],
                                target.argmax(-1)[sure])
  assert kl < 0.1 * uniform_kl


def test_a_resumed_distillation_ends_identical(distilled, tmp_path):
  _, _, student_dir, flags, stderr = distilled
  middle = f'ckpt-{_STEPS // 2}'
  resumed_dir = tmp_path / 'resumed'
  os.makedirs(resumed_dir)
  for name in os.listdir(student_dir):
    if name == 'flags.json' or name.startswith(middle + '.'):
      shutil.copy(student_dir / name, resumed_dir / name)
  (resumed_dir / 'checkpoint').write_text(
      f'model_checkpoint_path: "{middle}"\nall_model_checkpoint_paths: '
      f'"{middle}"\n')
  resumed = helpers.run(*flags, f'--model_dir={resumed_dir}',
                        '--export_formats=none')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resuming from {resumed_dir}/{middle}' in resumed.stderr
  fingerprint = lambda text: [l for l in text.splitlines()
                              if 'weights fingerprint' in l][-1].split()[-1]
  assert fingerprint(resumed.stderr) == fingerprint(stderr)


def _no_logits_saved_model(directory):
  module = tf.Module()
  module.scale = tf.Variable(2.0)
  module.serve = tf.function(
      lambda images: {'default': tf.reduce_mean(images, [1, 2]) *
                                 module.scale},
      input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
  tf.saved_model.save(module, str(directory),
                      signatures={'serving_default': module.serve})
  return directory


@pytest.mark.parametrize('bad', ['missing', 'classes', 'image_size',
                                 'no_logits', 'not_given'])
def test_a_bad_teacher_is_one_line_before_any_work(distilled, tmp_path, bad):
  folder = distilled[0]
  teacher_dir = {
      'missing': lambda: tmp_path / 'nowhere',
      'classes': lambda: write_teacher(tmp_path / 't', image_size=16,
                                       num_classes=5) and tmp_path / 't',
      'image_size': lambda: write_teacher(tmp_path / 't') and tmp_path / 't',
      'no_logits': lambda: _no_logits_saved_model(tmp_path / 'sm'),
      'not_given': lambda: None}[bad]()
  model_dir = tmp_path / 'student'
  result = helpers.run(
      f'--dataset=folder:{folder}', '--mode=train', '--train_mode=distill',
      *([f'--teacher={teacher_dir}'] if teacher_dir else []),
      '--train_steps=2', f'--model_dir={model_dir}', *helpers.TINY_RUN)
  line = helpers.one_error_line(result)
  assert {'missing': 'is not a directory', 'classes': 'predicts 5 classes',
          'image_size': 'takes 12 px images',
          'no_logits': 'gives no logits_sup',
          'not_given': 'needs --teacher='}[bad] in line, line
  assert not (model_dir / 'flags.json').exists()
  assert not tf.io.gfile.glob(str(model_dir / 'ckpt-*'))


def test_a_distilled_run_is_continued_and_evaluated_without_its_flags(
    distilled):
  folder, teacher_dir, student_dir, _, _ = distilled
  # Resuming, evaluating and exporting take the objective from flags.json.
  recorded = resolver.read_record('eval', {'model_dir': str(student_dir)})
  assert {name: recorded.values()[name] for name in
          ('train_mode', 'teacher', 'distill_temperature')} == {
              'train_mode': 'distill', 'teacher': str(teacher_dir),
              'distill_temperature': 1.0}
  result = helpers.run(f'--dataset=folder:{folder}', '--mode=eval',
                       f'--model_dir={student_dir}', '--knn=False',
                       '--eval_batch_size=8')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'linear eval top-1 (supervised head)' in result.stdout
