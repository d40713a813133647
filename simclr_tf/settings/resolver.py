"""The one place where a run's settings become a `RunConfig`.

Order of precedence (docs/command_line.md): the defaults of config.py, then
what the `flags.json` of the run being continued recorded, then the preset,
then the settings given, then the values that follow from the dataset and
the devices for whatever is still unset. Every check that can fail before
work starts runs here, with one line for the user (checks.UsageError).

A mode asks `resolve_command` once and receives all it needs (`Resolved`:
the configuration, the record it continues, the dataset source opened when
it needs one). `read_record` is the only part that reads files; `resolve`
is a function of its arguments. TensorFlow starts when this module is
imported: the command line imports it after setting up its logging.
"""

from collections.abc import Mapping
import dataclasses
import json
import os
import re
from typing import Any

import tensorflow as tf

from simclr_tf.config import DataConfig, EvalConfig, RunConfig
from simclr_tf.devices import precision
from simclr_tf.evaluation import evaluator_names
from simclr_tf.inputs import augmentation_names
from simclr_tf.inputs import sources
from simclr_tf.network import architectures
from simclr_tf.serving import format_names
from simclr_tf.settings import checks
from simclr_tf.settings import recipes
from simclr_tf.settings import registry
from simclr_tf.settings.command import Command
from simclr_tf.storage import checkpoints
from simclr_tf.storage import records
from simclr_tf.training import teacher

# Settings that fix a model's variables and inputs (image_size through the
# stem it picks). Unless given, a run on a model_dir that holds checkpoints
# takes them from its flags.json, and a new run from --checkpoint
# (fine-tuning) from the flags.json beside it.
ARCHITECTURE = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio',
                'proj_head_mode', 'proj_out_dim', 'num_proj_layers',
                'image_size')
DATA_SOURCE = ('dataset', 'data_dir', 'train_split', 'eval_split')
# What a continued run (resume, evaluation, export) keeps, its data included.
SAME_RUN = ARCHITECTURE + DATA_SOURCE + (
    'ft_proj_selector', 'lineareval_while_pretraining',
    'lineareval_standardize', 'train_mode', 'fine_tune_after_block',
    'teacher', 'distill_temperature', 'distill_label_weight')
# Modes that work on the model a model_dir (or --checkpoint) holds.
CONTINUING_MODES = ('train', 'eval', 'train_then_eval', 'export')
TRAINING_MODES = ('train', 'train_then_eval')


@dataclasses.dataclass(frozen=True)
class Record:
  """What an earlier run's flags.json recorded, and what this run takes."""

  settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # The setting names this run takes from it, unless given.
  taken: tuple[str, ...] = ()
  # Whether it is the record of model_dir itself, whose checkpoints this
  # run resumes (then the architecture must not change).
  resumes: bool = False

  def values(self) -> dict[str, Any]:
    # num_classes None is recorded information: the model has no head.
    values = {name: self.settings[name] for name in self.taken
              if name in self.settings and (self.settings[name] is not None or
                                            name == 'num_classes')}
    if self.settings:  # Recorded before a setting existed: its old value.
      values.update({name: value
                     for name, value in registry.LEGACY_DEFAULTS.items()
                     if name in self.taken and name not in self.settings})
    return values


def layered(given: Mapping[str, Any], *, preset: str | None = None,
            recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Defaults < recorded < preset < given; derived settings left unset."""
  defaults = {name: s.default for name, s in registry.SETTINGS.items()
              if not s.required and name not in registry.DERIVED}
  try:
    chosen = recipes.with_preset(preset, dict(given))
  except ValueError as e:
    raise checks.UsageError(str(e)) from None
  kept = {k: v for k, v in (recorded or {}).items() if k not in chosen}
  return {**defaults, **kept, **chosen}


def default_model_dir(values: Mapping[str, Any]) -> str:
  """models/<dataset>-<train_mode>; a folder dataset by its folder's name."""
  name = values['dataset']
  if name.startswith('folder:'):
    name = os.path.basename(os.path.normpath(name[len('folder:'):]))
  return os.path.join('models', re.sub(r'[^\w.-]+', '_', name) +
                      f'-{values["train_mode"]}')


def model_dir_of(values: Mapping[str, Any]) -> str:
  """--model_dir, or its default."""
  return values.get('model_dir') or default_model_dir(values)


def read_settings(model_dir: str) -> dict:
  """{setting: value} of the configuration recorded in `model_dir`'s
  flags.json; {} when there is none or it cannot be read."""
  try:
    with open(os.path.join(model_dir, records.FLAGS_FILE)) as f:
      recorded = json.load(f)['config']
  except (OSError, ValueError, KeyError, TypeError):
    return {}
  return registry.settings_of(recorded) if isinstance(recorded, dict) else {}


def read_record(mode: str, values: Mapping[str, Any]) -> Record:
  """The record a `mode` run with `values` (layered, without a record)
  continues: model_dir's flags.json when it holds checkpoints (SAME_RUN),
  else the one beside --checkpoint (its ARCHITECTURE, for a new run from
  it). An export of --checkpoint takes SAME_RUN from beside it, and an
  export takes num_classes (so it needs no data) and the training precision
  (which export.json records) too."""
  if mode not in CONTINUING_MODES:
    return Record()
  model_dir = model_dir_of(values)
  checkpoint = values.get('checkpoint')
  beside_checkpoint = checkpoint and (
      checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint))
  resumes = bool(os.path.isdir(model_dir) and
                 checkpoints.candidates(model_dir))
  if mode == 'export' and checkpoint:
    directory, names, resumes = beside_checkpoint, SAME_RUN, False
  elif resumes:
    directory, names = model_dir, SAME_RUN
  elif checkpoint:
    directory, names = beside_checkpoint, ARCHITECTURE
  else:
    return Record()
  if mode == 'export':
    names += ('num_classes', 'precision')
  return Record(read_settings(directory), names, resumes)


def derive(values: Mapping[str, Any], *, native_image_size: int | None,
           num_classes: int | None, strategy,
           mixed_precision: str = 'auto') -> dict[str, Any]:
  """Fills the settings that follow from the dataset and the devices when
  `values` leaves them unset (absent or None): config.DERIVED."""
  values = {k: v for k, v in values.items() if v is not None}
  image_size = values.setdefault('image_size',
                                 recipes.default_image_size(native_image_size))
  derive_augmentations(values, image_size)
  values.setdefault('cifar_stem',
                    image_size <= augmentation_names.SMALL_IMAGE_MAX_SIZE)
  if num_classes is not None:
    values.setdefault('num_classes', num_classes)
  values.setdefault('precision',
                    precision.choose_precision(mixed_precision, strategy))
  values.setdefault('jit_compile', precision.default_jit_compile(
      precision.device_type(strategy), strategy.num_replicas_in_sync))
  return values


def derive_augmentations(values: dict[str, Any], image_size: int):
  """--augmentations and --use_blur say the same of blur: each follows from
  the other when given, from the image size when neither is; the
  composition is recorded in the order a view applies it."""
  if values.get('second_view_augmentations'):
    values['second_view_augmentations'] = (
        augmentation_names.canonical_augmentations(
            values['second_view_augmentations']))
  named = values.get('augmentations')
  if named is None:
    values.setdefault('use_blur',
                      augmentation_names.default_use_blur(image_size))
    values['augmentations'] = augmentation_names.default_augmentations(
        values['use_blur'])
    return
  blur = 'blur' in augmentation_names.parse(named)
  checks.check(values.setdefault('use_blur', blur) == blur,
               f'--augmentations={named} and --use_blur={values["use_blur"]} '
               'disagree on blur; give one of them.')
  values['augmentations'] = augmentation_names.canonical_augmentations(named)


def resolve(given: Mapping[str, Any], *, mode: str = 'train',
            preset: str | None = None, record: Record = Record(),
            source=None, strategy=None,
            mixed_precision: str = 'auto') -> RunConfig:
  """The RunConfig of a `mode` run: `given` settings (flags given
  explicitly, or a benchmark's choices) over `preset`, over what `record`
  hands on, over the defaults; then what `source` (a dataset source, or None
  when the record says enough) and `strategy` (default: the current one)
  tell. Raises checks.UsageError, one line, on settings that cannot work."""
  if strategy is None:
    strategy = tf.distribute.get_strategy()
  values = layered(given, preset=preset, recorded=record.values())
  checks.check_settings(values)
  values = derive(values, native_image_size=source and source.native_image_size,
                  num_classes=source and source.num_classes, strategy=strategy,
                  mixed_precision=mixed_precision)
  values.setdefault('model_dir', default_model_dir(values))
  checks.check(values['image_size'] >= 8, f'--image_size={values["image_size"]}'
               ' is too small for the CIFAR stem: use 8 or more.')
  known = evaluator_names.EVALUATORS
  unknown = set(values.get('evaluators') or ()) - set(known)
  checks.check(not unknown, f'Unknown evaluators {sorted(unknown)}; use '
               f'some of {", ".join(known)}.')
  config = registry.build(values)
  # The evaluators are named in the config that flags.json records.
  config = dataclasses.replace(config, eval=dataclasses.replace(
      config.eval, evaluators=named_evaluators(config)))
  if mode != 'import':  # An import neither trains nor evaluates.
    replicas = strategy.num_replicas_in_sync
    checks.check_batches(config, replicas)
    checks.check_activation_memory(config, replicas)
  if mode in TRAINING_MODES and record.resumes:
    check_same_architecture(config, record.settings)
  return config


def named_evaluators(config: RunConfig) -> tuple[str, ...]:
  """The evaluators a run names, or those its flags ask for: the supervised
  head's accuracy when the model has one, kNN (--knn), the linear probe
  (--linear_probe, the baselines' comparison, and the linear evaluation of a
  model without a head), the baselines (--random_baseline)."""
  if config.eval.evaluators is not None:
    return tuple(config.eval.evaluators)
  has_head = architectures.has_supervised_head(config.model)
  names = ['supervised_head'] if has_head else []
  if config.eval.knn:
    names.append('knn')
  if config.eval.linear_probe or config.eval.random_baseline or not has_head:
    names.append('linear_probe')
  if config.eval.random_baseline:
    names += ['random_init', 'raw_pixels']
  return tuple(names)


def check_same_architecture(config: RunConfig, before: Mapping[str, Any]):
  """A resumed run whose architecture differs from the one recorded would
  fail to restore; say which flags differ instead. image_size matters
  through the stem it picks."""
  now = registry.flatten(config)
  differ = []
  for flag in ARCHITECTURE:
    name = 'cifar_stem' if flag == 'image_size' else flag
    if name in before and before[name] != now[name]:
      part = registry.SETTINGS[name].section.split('.')[-1]
      differ.append(f'--{flag} ({part}.{name}: {before[name]} before, '
                    f'{now[name]} now)')
  checks.check(not differ, f'{config.train.model_dir} holds a run with '
               f'another architecture: {"; ".join(differ)}. Resume with the '
               'same flags, or use another --model_dir.')


@dataclasses.dataclass(frozen=True)
class Resolved:
  """What a mode needs from its settings, worked out once."""

  # None for --mode=embed, which works with an exported model, not ours.
  config: RunConfig | None
  data: DataConfig
  eval: EvalConfig
  record: Record = Record()
  # The dataset, opened when the mode needs it (None: an export whose
  # flags.json recorded enough, an import).
  source: sources.Source | None = None
  # A distillation's --teacher, described (None: no distillation run).
  teacher_spec: teacher.TeacherSpec | None = None


def check_given(command: Command):
  """Fails on given settings that cannot work, before any other work."""
  checks.check_settings(layered(command.given, preset=command.preset))


def resolve_command(command: Command, *, open_source=None, strategy=None,
                    imported=None) -> Resolved:
  """Everything `command.mode` needs: `open_source(DataConfig)` opens its
  dataset when it needs one, after the checks that need none; `imported`
  is (checkpoint path, the settings read from it) for --mode=import."""
  mode = command.mode
  values = layered(command.given, preset=command.preset)
  if mode == 'embed':
    return Resolved(None, registry.section('data', values),
                    registry.section('eval', values))
  if mode == 'import':
    config = resolve_import(command, *imported)
    return Resolved(config, config.data, config.eval)
  record = read_record(mode, values)
  recorded = record.values()
  checks.check(mode != 'export' or format_names.export_formats(
      values['export_formats']),
      '--mode=export with --export_formats=none writes nothing; name the '
      'formats to write (saved_model by default).')
  # A directory without a checkpoint to work on fails before any dataset is
  # looked at.
  if mode == 'export' and not values.get('checkpoint') or (
      mode == 'eval' and not command.eval_watch):
    checkpoints.latest_to_work_on(model_dir_of(values), mode)
  # An export of a run whose flags.json recorded its settings needs no data.
  needs_data = not (mode == 'export' and 'image_size' in recorded and
                    'num_classes' in recorded)
  source = None
  if needs_data:
    source = open_source(registry.section('data', layered(
        command.given, preset=command.preset, recorded=recorded)))
  config = resolve(command.given, mode=mode, preset=command.preset,
                   record=record, source=source, strategy=strategy,
                   mixed_precision=command.mixed_precision)
  if config.model.train_mode == 'finetune' and source is not None:
    sources.require_labels(source, 'fine-tuning')
  if config.model.distill.distill_label_weight and source is not None:
    sources.require_labels(source, 'distillation with '
                           '--distill_label_weight')
    # Which images keep their labels is looked up by index.
    checks.check(source.random_access or config.data.cache_dataset,
                 f'--distill_label_weight needs random access to '
                 f'{source.name}\'s training records; add --cache_dataset.')
  distills = config.model.train_mode == 'distill' and mode in TRAINING_MODES
  distilled_from = resolve_teacher(config) if distills else None
  return Resolved(config, config.data, config.eval, record, source,
                  distilled_from)


def resolve_teacher(config: RunConfig) -> teacher.TeacherSpec:
  """The --teacher of a distillation run, checked to predict the run's
  classes on the run's images; one line (UsageError) when it cannot."""
  path = config.model.distill.teacher
  fail = lambda why: checks.UsageError(f'--teacher={path} {why}.')
  if not tf.io.gfile.isdir(path):
    raise fail('is not a directory: give a run directory or an exported '
               'SavedModel')
  if teacher.is_saved_model(path):
    try:
      spec = teacher.saved_model_spec(path)
    except ValueError as e:
      raise fail(str(e)) from None
  elif checkpoints.candidates(path):
    spec = _run_teacher(path, fail)
  else:
    raise fail(f'holds neither checkpoints of a run nor a '
               f'{teacher.SAVED_MODEL_FILE}')
  checks.check_teacher_fits(spec.num_classes, spec.image_size, config)
  return spec


def _run_teacher(path: str, fail) -> teacher.TeacherSpec:
  """A run directory as a teacher: the network its flags.json records
  (as a run continued from it takes it), with class logits."""
  recorded = read_settings(path)
  if not recorded:
    raise fail(f'holds checkpoints but no readable {records.FLAGS_FILE}: '
               'give a run directory of this project, or an exported '
               'SavedModel')
  try:  # Recorded before a setting existed: the value it had then.
    config = registry.build({**registry.LEGACY_DEFAULTS, **recorded,
                             'model_dir': path})
  except ValueError as e:
    raise fail(f'records no network to build ({e})') from None
  if not architectures.has_supervised_head(config.model):
    raise fail('has no supervised head, so no class predictions; fine-tune '
               f'it first (--train_mode=finetune --checkpoint={path})')
  return teacher.TeacherSpec(
      path, config.model.supervised_head.num_classes,
      config.augment.image_size, checkpoint=checkpoints.latest_in(path),
      model=config.model)


def resolve_import(command: Command, checkpoint_path: str,
                   inferred: Mapping[str, Any]) -> RunConfig:
  """The configuration of a model read from a checkpoint of the original
  SimCLR code: its architecture (`inferred`) over the settings given, at an
  image size that suits its stem."""
  given = command.given
  conflicts = [f'--{name}={given[name]} (the checkpoint has {value})'
               for name, value in inferred.items()
               if name in given and given[name] != value]
  checks.check(not conflicts, f'{checkpoint_path} does not fit '
               f'{"; ".join(conflicts)}: leave these flags out, the '
               'architecture is read from the checkpoint.')
  # The original picks the CIFAR stem for images of 32 px and below.
  small = augmentation_names.SMALL_IMAGE_MAX_SIZE
  cifar_stem = inferred['cifar_stem']
  image_size = layered(given, preset=command.preset).get(
      'image_size') or recipes.default_image_size(
          small if cifar_stem else None)
  checks.check(cifar_stem == (image_size <= small),
               f'--image_size={image_size} does not suit the checkpoint\'s '
               f'{"CIFAR" if cifar_stem else "ImageNet"} stem, which the '
               f'original uses for images of {small} px and '
               f'{"below" if cifar_stem else "above"}.')
  return resolve({**given, **inferred, 'image_size': image_size},
                 mode='import', preset=command.preset,
                 mixed_precision=command.mixed_precision)

