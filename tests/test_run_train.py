"""run.py end to end on a tiny image folder: train_then_eval, resume,
fine-tune with a label fraction, eval, and the artefacts docs/contract.md
lists."""

import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from simclr_tf.config import EncoderConfig, ModelConfig, SupervisedHeadConfig
from simclr_tf.network.model import SimCLRModel
from tests import helpers
from tests.helpers import run, run_process

TINY = ['--image_size=16', '--resnet_depth=18', '--width_multiplier=0.25',
        '--train_batch_size=8', '--eval_batch_size=8', '--summary_steps=2',
        '--steps_per_loop=2', '--knn_k=5', '--seed=3']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('data') / 'shapes'
  helpers.make_class_folder(str(root), np.random.default_rng(0),
                            classes=('a', 'b', 'c'), per_class=12,
                            size=(20, 20))
  return str(root)


@pytest.fixture(scope='module')
def pretrained(folder, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('runs') / 'pretrain')
  result = run_process('--mode=train_then_eval', f'--dataset=folder:{folder}',
                       f'--model_dir={model_dir}', '--train_steps=4',
                       '--checkpoint_steps=2', '--knn_every_n_checkpoints=1',
                       '--log_every_seconds=0', *TINY, as_user=True)
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, result


def _tags(directory):
  tags = set()
  for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
    accumulator = event_accumulator.EventAccumulator(path)
    accumulator.Reload()
    tags |= set(accumulator.Tags()['tensors']) | set(
        accumulator.Tags()['images'])
  return tags


def _encoder_kernels(model_dir, train_mode):
  """Kernels per encoder stage, restored from the run's latest checkpoint."""
  config = ModelConfig(
      encoder=EncoderConfig(resnet_depth=18, width_multiplier=0.25,
                            cifar_stem=True),
      supervised_head=SupervisedHeadConfig(num_classes=3),
      train_mode=train_mode)
  model = SimCLRModel(config)
  model(tf.zeros([1, 16, 16, 3]))
  tf.train.Checkpoint(model=model).read(
      tf.train.latest_checkpoint(model_dir)).expect_partial()
  stages = [model.encoder.stem, *model.encoder.block_groups]
  return {stage.name: [v.numpy() for v in stage.weights
                       if v.name == 'kernel'] for stage in stages}


def test_train_then_eval_leaves_every_artefact(pretrained):
  model_dir, result = pretrained
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-4')
  assert os.path.exists(os.path.join(model_dir, 'ckpt-2.index'))
  flags = json.load(open(os.path.join(model_dir, 'flags.json')))
  assert flags['flags']['train_steps'] == 4
  assert flags['config']['augment']['image_size'] == 16
  outcome = json.load(open(os.path.join(model_dir, 'result.json')))
  assert outcome['global_step'] == 4
  for key in ('label_top_1_accuracy', 'label_top_5_accuracy',
              'knn_top_1_accuracy'):
    assert 0.0 <= outcome[key] <= 1.0
  assert outcome['num_eval_examples'] == 3  # 10% of each class held out.
  assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['4']
  assert {'total_loss', 'contrast_loss', 'contrast_acc', 'contrast_entropy',
          'supervised_loss', 'supervised_acc', 'learning_rate',
          'weight_decay', 'images_per_second', 'augmented_views'} <= _tags(
              os.path.join(model_dir, 'train'))
  assert {'label_top_1_accuracy', 'knn_top_1_accuracy'} <= _tags(
      os.path.join(model_dir, 'eval'))
  assert 'Results at step 4' in result.stdout


def _scalar_steps(directory, tag):
  steps = []
  for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
    accumulator = event_accumulator.EventAccumulator(path)
    accumulator.Reload()
    if tag in accumulator.Tags()['tensors']:
      steps += [event.step for event in accumulator.Tensors(tag)]
  return sorted(steps)


def test_knn_monitor_runs_at_checkpoints_and_at_the_end(pretrained):
  model_dir, _ = pretrained
  assert _scalar_steps(os.path.join(model_dir, 'eval'),
                       'knn_top_1_accuracy') == [2, 4]


def test_export_mode_exports_a_given_checkpoint(pretrained, folder,
                                                tmp_path):
  model_dir, _ = pretrained
  export_dir = str(tmp_path / 'exported')
  result = run('--mode=export', f'--dataset=folder:{folder}',
               f'--model_dir={export_dir}', '--mixed_precision=float16',
               f'--checkpoint={os.path.join(model_dir, "ckpt-2")}', *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(os.path.join(export_dir, 'saved_model')) == ['2']
  exported = os.path.join(export_dir, 'saved_model', '2')
  loaded = tf.saved_model.load(exported)
  assert loaded.signatures['serving_default'](
      images=tf.zeros([2, 16, 16, 3]))['logits_sup'].shape == (2, 3)
  record = json.load(open(os.path.join(exported, 'export.json')))
  assert record['compute_precision'] == 'float32'
  # What the run trained in, from its flags.json, not this process's choice.
  trained = json.load(open(os.path.join(model_dir, 'flags.json')))[
      'config']['model']['precision']
  assert record['trained_precision'] == trained
  # Asked for, the export computes in bfloat16 and says so.
  result = run('--mode=export', f'--dataset=folder:{folder}',
               f'--model_dir={export_dir}', '--export_precision=bfloat16',
               f'--checkpoint={os.path.join(model_dir, "ckpt-2")}', *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.load(open(os.path.join(exported, 'export.json')))[
      'compute_precision'] == 'bfloat16'


def test_eval_mode_reproduces_result_json(pretrained, folder):
  model_dir, _ = pretrained
  before = json.load(open(os.path.join(model_dir, 'result.json')))
  # Plain, then --eval_watch, which evaluates the checkpoint there and stops
  # after waiting --eval_timeout seconds for a newer one.
  for watch in ([], ['--eval_watch', '--eval_timeout=1']):
    result = run('--mode=eval', f'--dataset=folder:{folder}',
                 f'--model_dir={model_dir}', *watch, *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.load(open(os.path.join(model_dir, 'result.json')))
    for key in ('global_step', 'label_top_1_accuracy', 'label_top_5_accuracy',
                'knn_top_1_accuracy', 'num_eval_examples'):
      assert after[key] == before[key], key


def test_finetune_with_label_fraction_changes_only_unfrozen_blocks(
    pretrained, folder, tmp_path):
  model_dir, _ = pretrained
  finetune_dir = str(tmp_path / 'finetune')
  result = run('--mode=train', f'--dataset=folder:{folder}',
               '--train_mode=finetune', f'--checkpoint={model_dir}',
               f'--model_dir={finetune_dir}', '--label_fraction=0.34',
               '--fine_tune_after_block=2', '--train_steps=3',
               '--learning_rate=0.5', '--knn=False', *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Restored the encoder and projection head' in result.stderr
  # round(0.34 * 33 / 3) = 4 of each class's 11 training images; said once.
  assert result.stderr.count('Fine-tuning on 12 labeled examples') == 1
  before = _encoder_kernels(model_dir, 'pretrain')
  after = _encoder_kernels(finetune_dir, 'finetune')
  changed = {stage: [not np.array_equal(x, y)
                     for x, y in zip(before[stage], after[stage])]
             for stage in before}
  assert not any(changed['stem'] + changed['block_group1'] +
                 changed['block_group2'])
  assert any(changed['block_group3']) and any(changed['block_group4'])
  assert os.listdir(os.path.join(finetune_dir, 'saved_model')) == ['3']


def test_a_second_invocation_resumes(pretrained, folder, tmp_path):
  model_dir, _ = pretrained
  resumed_dir = str(tmp_path / 'resumed')
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(model_dir, resumed_dir)
  flags = [f'--dataset=folder:{folder}', f'--model_dir={resumed_dir}',
           '--train_steps=6', '--checkpoint_steps=2', '--knn=False', *TINY]
  result = run('--mode=train', '--export_formats=none', *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resuming from' in result.stderr and 'ckpt-4' in result.stderr
  assert 'step 6/6' in result.stderr
  assert tf.train.latest_checkpoint(resumed_dir).endswith('ckpt-6')
  # Only steps 5 and 6 ran: the weights at 4 were the starting point.
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(resumed_dir))
  assert reader.get_tensor(
      'optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE') == 6
  # --export_formats=none: the run's export stays that of step 4, and
  # --mode=export writes step 6's from the newest checkpoint.
  assert ('No export at step 6 (--export_formats=none): --mode=export '
          'writes one from any checkpoint.') in result.stdout
  saved = os.path.join(resumed_dir, 'saved_model')
  assert os.listdir(saved) == ['4']
  assert run('--mode=export', *flags).returncode == 0
  assert sorted(os.listdir(saved)) == ['6']


def test_evaluation_of_unlabeled_images_says_so(tmp_path, rng):
  for i in range(6):
    helpers.write(str(tmp_path / 'flat' / f'{i}.png'),
                  helpers.encode(helpers.random_rgb(rng), 'PNG'))
  result = run('--mode=train_then_eval', f'--dataset=folder:{tmp_path}/flat',
               f'--model_dir={tmp_path}/m', '--train_steps=1', *TINY)
  assert result.returncode == 2
  assert 'has no labels, so it cannot be used for evaluation' in result.stderr
  assert not os.path.exists(tmp_path / 'm' / 'checkpoint')


def test_baselines_are_probed_like_the_learned_features(pretrained, folder,
                                                        tmp_path):
  model_dir, _ = pretrained
  evaluate = lambda: run('--mode=eval', f'--dataset=folder:{folder}',
                         f'--model_dir={model_dir}', '--random_baseline',
                         f'--data_dir={tmp_path}', *TINY)
  result = evaluate()
  assert result.returncode == 0, result.stderr[-3000:]
  outcome = json.load(open(os.path.join(model_dir, 'result.json')))
  for prefix in ('', 'random_init_', 'raw_pixels_'):
    for key in ('linear_probe_top_1_accuracy', 'knn_top_1_accuracy'):
      assert 0.0 <= outcome[prefix + key] <= 1.0, prefix + key
    assert outcome[prefix + 'linear_probe_converged'] is True
  header = [line for line in result.stdout.splitlines()
            if 'learned' in line][0]
  assert header.split() == ['learned', 'random', 'pixels']
  probe_row = [line for line in result.stdout.splitlines()
               if line.startswith('linear probe top-1')][0]
  assert [float(v) for v in probe_row.split()[-3:]] == [
      round(outcome[p + 'linear_probe_top_1_accuracy'], 4)
      for p in ('', 'random_init_', 'raw_pixels_')]
  # Again: the baselines are read back, and every printed digit is the same.
  again = evaluate()
  assert again.returncode == 0, again.stderr[-3000:]
  console = again.stdout + again.stderr
  for baseline in ('random_init', 'raw_pixels'):
    assert f'Baseline {baseline}: reused from {tmp_path}' in console
  table = lambda out: out[out.index('Results at step'):].splitlines()[:5]
  assert table(again.stdout) == table(result.stdout)
  # Every figure the same; only the time spent differs.
  figures = lambda result: {key: value for key, value in result.items()
                            if not key.endswith('evaluation_seconds')}
  again_outcome = json.load(open(os.path.join(model_dir, 'result.json')))
  assert figures(again_outcome) == figures(outcome)
  assert again_outcome['random_init_evaluation_seconds'] <= outcome[
      'random_init_evaluation_seconds']


# What TensorFlow and absl print by themselves: C++ log lines
# (`I0000 00:00:...`, `E0000 ... cuInit`), absl's prefix, TF's loggers.
_NOISE = re.compile(r'^[IWEF]\d{4} |^WARNING: All log messages|oneDNN|cuInit|'
                    r'cuda|INFO:tensorflow|WARNING:tensorflow|^W\d{4}|'
                    r'Assets written|absl::|Sharding callback|'
                    r'Writing fingerprint|unsupported characters',
                    re.IGNORECASE)


def test_the_console_shows_the_projects_lines_only(folder, pretrained,
                                                   tmp_path):
  _, result = pretrained  # train_then_eval, as a user runs it.
  lines = (result.stdout + result.stderr).splitlines()
  assert [line for line in lines if _NOISE.search(line)] == []
  assert any(line.startswith('step 4/4  contrast_loss ') and 'images/s' in line
             and 'ETA' in line for line in lines)
  assert any(line.startswith('Exported SavedModel') for line in lines)
  assert any(line.startswith('Results at step 4') for line in lines)
  # --verbosity=1 asks for TensorFlow's own logging (and absl's prefixes).
  model_dir = str(tmp_path / 'copy')
  shutil.copytree(pretrained[0], model_dir)
  verbose = run_process('--mode=eval', f'--dataset=folder:{folder}',
                f'--model_dir={model_dir}', '--verbosity=1', *TINY,
                as_user=True)
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert any(re.match(r'^I\d{4} ', line)
             for line in verbose.stderr.splitlines())
