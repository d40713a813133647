"""The settings registry: every field of the configuration's sections
(config.py) under one flat namespace of unique names, the namespace of the
command line, presets and flags.json.

`build` turns {setting: value} into a RunConfig, `flatten` the other way;
`settings_of` reads a recorded configuration.
"""

from collections.abc import Mapping
import dataclasses
import operator
import typing
from typing import Any

from simclr_tf import config

# Settings added after runs were recorded without them, with the value those
# runs had: a run continued from such a record takes it (resolver.py).
LEGACY_DEFAULTS = {'lineareval_standardize': False}

# Settings whose default follows from the dataset and the devices
# (resolver.py derives them unless given; their flags default to None).
DERIVED = ('image_size', 'use_blur', 'augmentations', 'cifar_stem',
           'num_classes', 'precision', 'jit_compile')

# Where each section lives in a RunConfig.
_SECTIONS = (('data', config.DataConfig), ('augment', config.AugmentConfig),
             ('model', config.ModelConfig),
             ('model.encoder', config.EncoderConfig),
             ('model.projection_head', config.ProjectionHeadConfig),
             ('model.supervised_head', config.SupervisedHeadConfig),
             ('model.distill', config.DistillConfig),
             ('optim', config.OptimConfig), ('train', config.TrainConfig),
             ('eval', config.EvalConfig))
_NO_DEFAULT = object()


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  section: str  # 'model.encoder', ...
  default: Any  # _NO_DEFAULT for required settings.
  type: Any  # The field's annotation (e.g. float, str | None).

  @property
  def required(self) -> bool:
    return self.default is _NO_DEFAULT


def _settings() -> dict[str, Setting]:
  settings = {}
  for section, cls in _SECTIONS:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
      if dataclasses.is_dataclass(hints[field.name]):
        continue  # A nested section.
      default = (field.default if field.default is not dataclasses.MISSING
                 else _NO_DEFAULT)
      assert field.name not in settings, field.name  # Names are unique.
      settings[field.name] = Setting(field.name, section, default,
                                     hints[field.name])
  return settings


SETTINGS = _settings()


def build(values: Mapping[str, Any]) -> config.RunConfig:
  """A RunConfig from flat {setting name: value}; the rest are defaults.

  Raises ValueError on unknown names and on missing required settings
  (`model_dir`, `image_size`).
  """
  unknown = sorted(set(values) - set(SETTINGS))
  if unknown:
    raise ValueError(f'Unknown settings: {", ".join(unknown)}.')
  by_section = {section: {} for section, _ in _SECTIONS}
  for name, setting in SETTINGS.items():
    if name in values:
      by_section[setting.section][name] = values[name]
    elif setting.required:
      raise ValueError(f'The setting {name!r} has no default; give it.')
  classes = dict(_SECTIONS)

  def make(section):
    return classes[section](**by_section[section])

  model = dataclasses.replace(
      make('model'), encoder=make('model.encoder'),
      projection_head=make('model.projection_head'),
      supervised_head=make('model.supervised_head'),
      distill=make('model.distill'))
  return config.RunConfig(data=make('data'), augment=make('augment'),
                          model=model, optim=make('optim'),
                          train=make('train'), eval=make('eval'))


def section(name: str, values: Mapping[str, Any]):
  """One section of a configuration ('data', 'eval', ...) from flat
  {setting: value}: its own settings of `values`, defaults for the rest."""
  cls = dict(_SECTIONS)[name]
  return cls(**{setting: value for setting, value in values.items()
                if setting in SETTINGS and SETTINGS[setting].section == name})


def flatten(run_config: config.RunConfig) -> dict[str, Any]:
  """The inverse of `build`: {setting name: value}."""
  return {name: getattr(operator.attrgetter(setting.section)(run_config), name)
          for name, setting in SETTINGS.items()}


def settings_of(nested: Mapping[str, Any]) -> dict[str, Any]:
  """{setting name: value} from a RunConfig as a nested dict (what
  `dataclasses.asdict` gives and flags.json stores), in whichever section
  it sits (a record written before a setting moved section holds it in the
  old one); names it lacks are left out."""
  values = {}
  for key, value in nested.items():
    if key in SETTINGS:
      values[key] = value
    elif isinstance(value, Mapping):
      values.update(settings_of(value))
  return values
