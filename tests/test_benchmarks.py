"""The FLOP count that benchmarks/throughput.py reports GFLOP/s with
(benchmarks/flops.py), the
supervised baseline's budget in benchmarks/fashion_mnist.py, the
fine-tuning configurations of benchmarks/semi_supervised.py, the findings
studies' cells, the side-by-side summary, the oneDNN log's sums and the
small-folder benchmark's runs and folder."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import flops
from simclr_tf.settings import registry
from simclr_tf.training.task import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resnet18_cifar_macs(size=32, width=64):
  """Multiply-adds of ResNet-18 with the CIFAR stem, by hand."""
  macs = size * size * 3 * width * 9  # Stem: 3x3, stride 1.
  channels = width
  for group in range(4):
    out = width * 2**group
    side = size // 2**group
    # First block: 3x3 (maybe strided) + 3x3, then 1x1 shortcut if needed.
    macs += side * side * (channels * out * 9 + out * out * 9)
    if group > 0 or channels != out:
      macs += side * side * channels * out
    macs += side * side * 2 * out * out * 9  # Second block.
    channels = out
  return macs


def test_forward_flops_of_resnet18_match_the_hand_count():
  config = registry.build({'model_dir': '/tmp/unused', 'image_size': 32,
                           'resnet_depth': 18, 'cifar_stem': True,
                           'proj_head_mode': 'none'})
  model = build_model(config)
  counted = flops.forward_flops(model, 32)
  expected = 2 * _resnet18_cifar_macs()
  assert expected == pytest.approx(1.11e9, rel=0.01)  # 6.7 GFLOP / 6.
  # Convolutions dominate; batch norm, ReLU and the add are ~1% more.
  assert counted == pytest.approx(expected, rel=0.02)


_SUPERVISED_CHECK = r'''
import json, os, sys
from benchmarks import fashion_mnist
from simclr_tf.training import hooks

# One epoch of 10 steps took 30 s in all; after the first two calls the
# steps ran at 0.5 s each, so an epoch is 5 s and the fixed cost 25 s:
# (4 min - 25 s) / 5 s = 43 epochs.
timer = hooks.StepTimesHook()
timer.times = [(2, 1.0), (4, 2.0), (8, 4.0)]
epochs = fashion_mnist.supervised_epochs(4, 30.0, timer, steps_per_epoch=10)

directory = sys.argv[1]
with open(os.path.join(directory, 'result.json'), 'w') as f:
  json.dump({'methods': {'SimCLR, linear probe': 0.87,
                         'supervised (9 min), its own head': 0.5,
                         'supervised (9 min), linear probe': 0.5},
             'supervised': {'train_seconds': 540,
                            'label_top_1_accuracy': 0.5,
                            'linear_probe_top_1_accuracy': 0.5}}, f)
drawn = []
fashion_mnist.plot = lambda result, where: drawn.append(where)
supervised = {'train_seconds': 2700.0, 'label_top_1_accuracy': 0.91,
              'linear_probe_top_1_accuracy': 0.92}
fashion_mnist.add_to_result(directory, supervised)
with open(os.path.join(directory, 'result.json')) as f:
  result = json.load(f)

from absl import flags
flags.FLAGS(['fashion_mnist.py', '--view_size=20', '--min_crop_area=0.4',
             '--color_jitter_strength=1.0', '--temperature=0.2'])
pretrain = fashion_mnist.recipe('/tmp/unused', epochs=24)
baseline = fashion_mnist.recipe('/tmp/unused', 'finetune', epochs=2)
print(json.dumps({'epochs': epochs, 'result': result, 'drawn': drawn,
    'pretrain': [pretrain.augment.view_size, pretrain.augment.min_crop_area,
                 pretrain.augment.color_jitter_strength,
                 pretrain.train.temperature, pretrain.optim.warmup_epochs],
    'supervised': [baseline.augment.view_size,
                   baseline.augment.min_crop_area]}))
'''


@pytest.fixture(scope='module')
def fashion_mnist_report(tmp_path_factory):
  # In a subprocess: the benchmark scripts define the same absl flags.
  directory = tmp_path_factory.mktemp('fashion_mnist')
  output = subprocess.run(
      [sys.executable, '-c', _SUPERVISED_CHECK, str(directory)],
      capture_output=True, text=True, cwd=REPO, check=True).stdout
  return json.loads(output.strip().splitlines()[-1]), str(directory)


def test_fashion_mnist_supervised_baseline_fills_its_budget_and_joins_the_result(
    fashion_mnist_report):
  report, directory = fashion_mnist_report
  assert report['epochs'] == 43
  assert report['result']['methods'] == {
      'SimCLR, linear probe': 0.87,
      'supervised (45 min), its own head': 0.91,
      'supervised (45 min), linear probe': 0.92}
  assert report['result']['supervised']['train_seconds'] == 2700.0
  assert report['drawn'] == [directory]


def test_the_hours_benchmark_takes_view_crop_and_jitter_for_pretraining_only(
    fashion_mnist_report):
  report, _ = fashion_mnist_report
  # Warm-up: a tenth of the epochs, at most 2.
  assert report['pretrain'] == [20, 0.4, 1.0, 0.2, 2]
  # The supervised baseline crops as the paper fine-tunes, at image size.
  assert report['supervised'] == [0, 0.08]


_CONFIGS_CHECK = r'''
import json
from absl import flags
from benchmarks.semi_supervised import (METHODS, fine_tuning_config,
                                        make_setting, probe_config)
FLAGS = flags.FLAGS
FLAGS(['semi_supervised.py', '--min_crop_area=0.2',
       '--random_min_crop_area=0.5'])
searched = make_setting('SimCLR', 600, 0, 0.01, 0.0, crop=0.7)
config = fine_tuning_config(searched, '/tmp/unused', epochs=2,
                               batch_size=64, encoder=None)
random = fine_tuning_config(
    make_setting('random weights', 600, 1, 0.1, 5e-4), '/tmp/unused',
    epochs=2, batch_size=64, encoder=None)
print(json.dumps({
    'crop': config.augment.min_crop_area, 'name': searched.name,
    'random_crop': random.augment.min_crop_area,
    'flags_crop': [FLAGS.min_crop_area, FLAGS.random_min_crop_area],
    'label_fraction': config.data.label_fraction,
    'preset_temperature': config.train.temperature,
    'learning_rate': random.optim.learning_rate,
    'evaluators': list(config.eval.evaluators)}))
'''


def test_semi_supervised_configs_come_from_the_resolver_without_flag_changes():
  from simclr_tf.settings import recipes  # pylint: disable=g-import-not-at-top
  output = subprocess.run(
      [sys.executable, '-c', _CONFIGS_CHECK],
      capture_output=True, text=True, cwd=REPO, check=True).stdout
  report = json.loads(output.strip().splitlines()[-1])
  # A crop searched is the setting's own; the flags keep their values.
  assert report['crop'] == 0.7 and report['name'].endswith('-crop0.7')
  assert report['random_crop'] == 0.5
  assert report['flags_crop'] == [0.2, 0.5]
  assert report['label_fraction'] == 600 / 50000
  assert report['preset_temperature'] == recipes.PRESETS['fashion_mnist'][
      'temperature']
  assert report['learning_rate'] == 0.1
  assert report['evaluators'] == ['supervised_head', 'knn']


_DISTILLATION_CHECK = r'''
import json
from absl import flags
from benchmarks import distillation
flags.FLAGS(['distillation.py', '--distill_label_weight=0.5',
             '--distill_temperature=2', '--model_dir=/tmp/unused'])
teacher = distillation.run_config(
    'teacher', 2, train_mode='finetune', init=None, learning_rate=0.01,
    epochs=40, batch_size=64, architecture={'width_multiplier': 0.5})
student = distillation.run_config(
    'small', 2, train_mode='distill', init=None, learning_rate=0.02,
    epochs=1, batch_size=256, teacher='/tmp/unused/teacher-s2',
    architecture={'resnet_depth': 18, 'width_multiplier': 0.25})
subset = lambda c: [c.data.train_split, c.data.label_fraction, c.data.seed]
print(json.dumps({
    'subsets': [subset(teacher), subset(student)],
    'teacher': [teacher.model.train_mode,
                teacher.model.encoder.width_multiplier,
                teacher.train.model_dir],
    'student': [student.model.train_mode, student.model.distill.teacher,
                student.model.distill.distill_temperature,
                student.model.distill.distill_label_weight,
                student.model.encoder.width_multiplier,
                student.augment.min_crop_area, student.optim.learning_rate,
                student.model.supervised_head.num_classes]}))
'''


def test_distillation_students_see_their_teachers_labeled_subset():
  output = subprocess.run(
      [sys.executable, '-c', _DISTILLATION_CHECK],
      capture_output=True, text=True, cwd=REPO, check=True).stdout
  report = json.loads(output.strip().splitlines()[-1])
  # The same split, fraction and seed: the same 600 labeled images.
  assert report['subsets'] == [['train[:50000]', 600 / 50000, 2]] * 2
  assert report['teacher'] == ['finetune', 0.5, '/tmp/unused/teacher-s2']
  assert report['student'] == ['distill', '/tmp/unused/teacher-s2', 2.0,
                               0.5, 0.25, 0.08, 0.02, 10]

_ARCHITECTURE_CHECK = r'''
import json, os, sys
from absl import flags
from benchmarks.semi_supervised import (METHODS, fine_tuning_config,
                                       make_setting, probe_config)
from simclr_tf.settings import registry
encoder_dir, recorded_width = sys.argv[1], float(sys.argv[2])
# A flags.json as a pretraining run leaves it: the nested configuration.
nested = {}
for name, value in (('width_multiplier', recorded_width),
                    ('resnet_depth', 18)):
  part = nested
  for key in registry.SETTINGS[name].section.split('.'):
    part = part.setdefault(key, {})
  part[name] = value
os.makedirs(encoder_dir, exist_ok=True)
with open(os.path.join(encoder_dir, 'flags.json'), 'w') as f:
  json.dump({'config': nested}, f)
flags.FLAGS(['semi_supervised.py', f'--encoder={encoder_dir}/ckpt-7'])
widths = [fine_tuning_config(make_setting(method, 600, 0, 0.01, 0.0),
                                '/tmp/unused', epochs=2, batch_size=64,
                                encoder=None).model.encoder.width_multiplier
          for method in METHODS]
flags.FLAGS.encoder = '/nonexistent/pretrain'
unrecorded = fine_tuning_config(make_setting('SimCLR', 600, 0, 0.01, 0.0),
                                   '/tmp/unused', epochs=2, batch_size=64,
                                   encoder=None).model.encoder.width_multiplier
probe = probe_config(600, 2)
print(json.dumps({'widths': widths, 'unrecorded': unrecorded,
                  'probe': [probe.model.encoder.width_multiplier,
                            probe.data.label_fraction, probe.data.seed]}))
'''


def test_semi_supervised_builds_the_encoders_recorded_width_not_the_presets(
    tmp_path):
  from simclr_tf.settings import recipes  # pylint: disable=g-import-not-at-top
  preset_width = recipes.PRESETS['fashion_mnist']['width_multiplier']
  recorded_width = 0.75 if preset_width != 0.75 else 0.25
  output = subprocess.run(
      [sys.executable, '-c', _ARCHITECTURE_CHECK, str(tmp_path / 'pretrain'),
       str(recorded_width)],
      capture_output=True, text=True, cwd=REPO, check=True).stdout
  report = json.loads(output.strip().splitlines()[-1])
  # Fine-tuned and random-weights networks alike: the encoder's width.
  assert report['widths'] == [recorded_width, recorded_width]
  assert report['unrecorded'] == preset_width
  # The frozen probe's network and subset: the encoder's width, 1%, seed 2.
  assert report['probe'] == [preset_width, 600 / 50000, 2]


_FINDINGS_CHECK = r'''
import json, os, sys
from absl import flags
from benchmarks import findings
flags.FLAGS(['findings.py', '--study=augmentations'])
study = findings.Study(
    name='augmentations', dataset='fashion_mnist', data_dir='data',
    model_dir='/tmp/unused', seed=3, train_examples=1000, probe_examples=500,
    width_multiplier=0.25, image_size=24, precision='float32')
config = study.config('color+crop', train_epochs=2, train_batch_size=64,
                      augmentations='color,gray,crop',
                      second_view_augmentations='none')
names = ['crop', 'color', 'rotate']
cells = {f'{a}+{b}': {'final_avg_pool': {'linear_probe': 10 * i + j}}
         for i, a in enumerate(names) for j, b in enumerate(names) if i <= j}
result = {'transformations': names, 'cells': cells,
          'simclr_default': {'final_avg_pool': {'linear_probe': 5.0}},
          'random_weights': {'final_avg_pool': {'linear_probe': 4.0}}}
grid = findings.heat_map(result)
quick = findings.Study(**{**study.__dict__, 'recipe': 'quickstart'}).config(
    'simclr_default', train_epochs=2, train_batch_size=64)
print(json.dumps({
    'quickstart': [quick.train.temperature, quick.augment.min_crop_area,
                   quick.augment.color_jitter_strength,
                   quick.augment.view_size, quick.optim.learning_rate,
                   quick.model.encoder.width_multiplier],
    'augmentations': config.augment.augmentations,
    'second': config.augment.second_view_augmentations,
    'split': config.data.train_split, 'seed': config.data.seed,
    'image_size': config.augment.image_size,
    'width': config.model.encoder.width_multiplier,
    'warmup': config.optim.warmup_epochs,
    'supervised_head': (
        config.model.supervised_head.lineareval_while_pretraining),
    'probe_examples': config.eval.probe_train_examples,
    'temperature': config.train.temperature,
    'hour_augment': [config.augment.min_crop_area,
                     config.augment.color_jitter_strength,
                     config.augment.view_size],
    'learning_rate': config.optim.learning_rate,
    'model_dir': config.train.model_dir, 'grid': grid.tolist()}))
'''


def test_findings_cells_are_the_paper_protocol_and_the_grid_is_symmetric():
  output = subprocess.run(
      [sys.executable, '-c', _FINDINGS_CHECK],
      capture_output=True, text=True, cwd=REPO, check=True).stdout
  report = json.loads(output.strip().splitlines()[-1])
  # One view made of the pair, in application order; the other the image.
  assert report['augmentations'] == 'crop,color,gray'
  assert report['second'] == 'none'
  assert report['split'] == 'train[:1000]' and report['seed'] == 3
  assert report['image_size'] == 24 and report['width'] == 0.25
  assert report['warmup'] == 0.2 and report['supervised_head'] is False
  assert report['probe_examples'] == 500
  # The studies' own learning rate and temperature (docs/findings.md).
  assert (report['learning_rate'], report['temperature']) == (0.075, 0.3)
  # Crops from 20%, jitter 0.5, views at the image size: the hour's recipe
  # when the studies were first run, whatever the preset is now.
  assert report['hour_augment'] == [0.2, 0.5, 0]
  assert report['model_dir'] == '/tmp/unused/augmentations/color+crop'
  # Cell (i, j) and (j, i) are the same run; the diagonal the single one.
  assert report['grid'] == [[0, 1, 2], [1, 11, 12], [2, 12, 22]]
  # --recipe=quickstart: that preset's temperature, crops, jitter and base
  # learning rate (docs/recipes.md), views at the image size, the study's
  # width.
  assert report['quickstart'] == [0.2, 0.4, 1.0, 0, 0.2, 0.25]


def test_side_by_side_summary_averages_rounds_and_takes_the_ratios():
  """Means over rounds, the ratio to the faster torch.compile variant (for
  ResNet-18 only) and to the baseline checkout, by hand."""
  from benchmarks import side_by_side  # pylint: disable=g-import-not-at-top

  def run(label, memory, **images_per_second):
    return {'precision': 'bfloat16', 'label': label,
            'images_per_second': images_per_second,
            'result': {'peak_memory_gb': memory}}

  r18 = 'simclr_tf resnet18_32px_b128'
  runs = [run(r18, 2.0, train=100, model=120),
          run(r18, 2.2, train=110, model=130),
          run('simclr_tf baseline resnet18_32px_b128', 2.0, train=80, model=100),
          run('simclr_tf baseline resnet18_32px_b128', 2.0, train=80, model=100),
          run('lightly + PyTorch, torch.compile', 1.3, model=100),
          run('lightly + PyTorch, torch.compile', 1.3, model=110),
          run('lightly + PyTorch, torch.compile, channels-last', 1.4, model=90),
          run('simclr_tf resnet18x0.25_28px_b512', 1.5, train=900, model=1000)]
  rows = {row['label']: row for row in side_by_side.summarize(runs)}
  ours = rows[r18]
  assert ours['rounds'] == 2
  assert ours['train_images_per_second'] == pytest.approx(105)
  assert ours['train_images_per_second_range'] == [100, 110]
  assert ours['peak_memory_gb'] == pytest.approx(2.1)
  assert ours['model_vs_fastest_torch_compile'] == pytest.approx(125 / 105)
  assert ours['train_vs_baseline'] == pytest.approx(105 / 80)
  assert ours['model_vs_baseline'] == pytest.approx(125 / 100)
  channels_last = rows['lightly + PyTorch, torch.compile, channels-last']
  assert channels_last['model_vs_fastest_torch_compile'] == pytest.approx(
      90 / 105)
  # Another model: no ratio to PyTorch's ResNet-18, and no baseline here.
  quickstart = rows['simclr_tf resnet18x0.25_28px_b512']
  assert 'model_vs_fastest_torch_compile' not in quickstart
  assert 'train_vs_baseline' not in quickstart


def test_onednn_layers_sums_the_log_per_primitive():
  from benchmarks import onednn_layers  # pylint: disable=g-import-not-at-top
  conv = ('onednn_verbose,v1,primitive,exec,cpu,convolution,'
          'brgconv_bwd_w:avx10_1_512_amx,backward_weights,'
          'src:bf16::blocked:acdb::f0,,alg:convolution_direct,'
          'mb256_ic512oc512_ih4oh4kh3sh1dh0ph1_iw4ow4kw3sw1dw0pw1,{}\n')
  log = [conv.format('80.5'), conv.format('19.5'),
         'onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,'
         'brgconv_bwd_w:avx10_1_512_amx,backward_weights,,,,shape,0.3\n',
         'onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx10_1_512_amx'
         ',undef,src:bf16::blocked:ab::f0,,,512x4096:4096x512,1.25\n',
         'RESULT {}\n']
  assert onednn_layers.primitive_times(log) == {
      ('convolution', 'backward_weights', 'brgconv_bwd_w:avx10_1_512_amx',
       'mb256_ic512oc512_ih4oh4kh3sh1dh0ph1_iw4ow4kw3sw1dw0pw1'): [2, 100.0],
      ('matmul', 'undef', 'brg_matmul:avx10_1_512_amx',
       '512x4096:4096x512'): [1, 1.25]}


def test_onednn_layers_counts_each_primitives_flops_from_its_shape():
  from benchmarks import onednn_layers  # pylint: disable=g-import-not-at-top
  # 256 images, 4x4 outputs, 3x3 kernel, 512 -> 512 channels: multiply-adds
  # per output pixel 3 * 3 * 512 per output channel.
  assert onednn_layers.flops(
      'convolution', 'mb256_ic512oc512_ih4oh4kh3sh1dh0ph1_iw4ow4kw3sw1dw0pw1'
  ) == 2 * 256 * (4 * 4) * (3 * 3 * 512) * 512
  # Stride 2 on a padded 34 px input: 16x16 outputs.
  assert onednn_layers.flops(
      'convolution', 'mb8_ic3oc16_ih34oh16kh3sh2dh0ph0_iw34ow16kw3sw2dw0pw0'
  ) == 2 * 8 * 16 * 16 * 9 * 3 * 16
  # Grouped (depthwise) convolutions count each group's channels only.
  assert onednn_layers.flops(
      'convolution', 'g32mb2_ic32oc32_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1'
  ) == 2 * 2 * 64 * 9 * 1 * 32
  assert onednn_layers.flops('matmul', '512x4096:4096x256') == (
      2 * 512 * 4096 * 256)
  assert onednn_layers.flops('matmul', '3x4x5:3x5x6') == 2 * 3 * 4 * 5 * 6
  assert onednn_layers.flops('batch_normalization', 'mb256ic64ih32iw32') is None



def test_weight_gradient_layers_are_the_resnets_3x3_convolutions():
  from benchmarks import weight_gradient_layers  # pylint: disable=g-import-not-at-top
  shapes = [(l['input_size'], l['in_channels'], l['out_channels'],
             l['strides'])
            for l in weight_gradient_layers.layers(32, 1.0, 256)]
  # ResNet-18 with the CIFAR stem at 32 px: groups at 32, 16, 8, 4 px with
  # 64-512 channels; each strided 3x3 reads the previous group's output
  # padded by one pixel per side.
  assert shapes == [(32, 64, 64, 1), (34, 64, 128, 2), (16, 128, 128, 1),
                    (18, 128, 256, 2), (8, 256, 256, 1), (10, 256, 512, 2),
                    (4, 512, 512, 1)]
  quarter = weight_gradient_layers.layers(28, 0.25, 1024)
  assert [(l['input_size'], l['out_channels']) for l in quarter] == [
      (28, 16), (30, 32), (14, 32), (16, 64), (7, 64), (9, 128), (4, 128)]


_SMALL_FOLDER_CHECK = r'''
import json, sys
import numpy as np
from absl import flags
from PIL import Image
from benchmarks import small_folder
flags.FLAGS(['small_folder.py', '--image_size=16', '--train_steps=200',
             '--train_batch_size=64', '--width_multiplier=0.25',
             '--work_dir=/tmp/unused'])
configs = {name: small_folder.config_of(name, 2, '/tmp/folder')
           for name in small_folder.SETTINGS}
images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
small_folder.write_folder(sys.argv[1], images, [4, 7, 4], 16)
expected = Image.fromarray(images[1]).resize((16, 16), Image.BILINEAR)
runs = [{'setting': 's', 'trained': {'linear_probe': 80.0, 'knn': 70.0},
         'random_weights': {'linear_probe': 78.0, 'knn': 71.0}},
        {'setting': 's', 'trained': {'linear_probe': 84.0, 'knn': 73.0},
         'random_weights': {'linear_probe': 80.0, 'knn': 71.0}}]
print(json.dumps({'configs': {name: {
    'dataset': c.data.dataset, 'seed': c.data.seed,
    'image_size': c.augment.image_size, 'steps': c.train.train_steps,
    'batch': c.train.train_batch_size,
    'width': c.model.encoder.width_multiplier,
    'precision': c.model.precision,
    'learning_rate': c.optim.learning_rate,
    'scaling': c.optim.learning_rate_scaling,
    'temperature': c.train.temperature,
    'min_crop_area': c.augment.min_crop_area,
    'color_jitter_strength': c.augment.color_jitter_strength,
    'probe_examples': c.eval.probe_train_examples,
    'model_dir': c.train.model_dir} for name, c in configs.items()},
    'expected_image': np.asarray(expected).tolist(),
    'summary': small_folder.summary(runs)}))
'''


def test_small_folder_runs_resolve_the_users_flags_and_sum_gains(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from simclr_tf.settings import recipes  # pylint: disable=g-import-not-at-top
  output = subprocess.run(
      [sys.executable, '-c', _SMALL_FOLDER_CHECK, str(tmp_path)],
      capture_output=True, text=True, cwd=REPO, check=True).stdout
  report = json.loads(output.strip().splitlines()[-1])
  # Each setting is run.py's resolution of the user's flags over it.
  preset = recipes.PRESETS['small_folder']
  for name, run in report['configs'].items():
    assert run['dataset'] == 'folder:/tmp/folder' and run['seed'] == 2
    assert (run['image_size'], run['steps'], run['batch'], run['width']) == (
        16, 200, 64, 0.25)
    assert run['precision'] == 'float32' and run['probe_examples'] == 0
  defaults = report['configs']['defaults']
  assert (defaults['learning_rate'], defaults['temperature']) == (1.0, 0.5)
  assert defaults['model_dir'] == '/tmp/unused/runs/defaults/2'
  tuned = report['configs']['small_folder preset']
  assert (tuned['learning_rate'], tuned['scaling'], tuned['temperature'],
          tuned['min_crop_area'], tuned['color_jitter_strength']) == (
              preset['learning_rate'], preset['learning_rate_scaling'],
              preset['temperature'], preset['min_crop_area'],
              preset['color_jitter_strength'])
  assert tuned['model_dir'] == '/tmp/unused/runs/small_folder/2'
  # The preset as it was: its rate, the earlier crops, temperature, jitter.
  earlier = report['configs']['earlier small_folder preset']
  assert (earlier['learning_rate'], earlier['scaling'],
          earlier['temperature'], earlier['min_crop_area'],
          earlier['color_jitter_strength']) == (
              preset['learning_rate'], preset['learning_rate_scaling'], 0.3,
              0.2, 0.5)
  assert earlier['model_dir'] == '/tmp/unused/runs/earlier/2'
  # The folder: a sub-folder a class, each image resized with PIL.
  assert sorted(os.listdir(tmp_path)) == ['4', '7']
  assert sorted(os.listdir(tmp_path / '4')) == ['0.png', '2.png']
  np.testing.assert_array_equal(
      np.asarray(Image.open(tmp_path / '7' / '1.png')),
      np.array(report['expected_image'], np.uint8))
  # Trained minus random weights, by hand: gains 2 and 4 (mean 3, sample
  # deviation sqrt(2)) and -1 and 2.
  assert report['summary']['s'] == {
      'linear_probe': {'trained_mean': 82.0, 'gain_over_random_mean': 3.0,
                       'gain_over_random_std': 1.41},
      'knn': {'trained_mean': 71.5, 'gain_over_random_mean': 0.5,
              'gain_over_random_std': 2.12}}
