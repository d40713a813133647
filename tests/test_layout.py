"""The package's layout (docs/layout.md): no import cycles, dependencies
one way between folders, a TensorFlow-free command line until its console
is set up, and the layout page listing every module where it lives."""

import ast
import collections
import os
import re
import subprocess
import sys

from tests import helpers

PACKAGE = os.path.join(helpers.REPO, 'simclr_tf')


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every module of the package."""
  modules = {}
  for directory, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path, helpers.REPO)[:-3].replace(os.sep, '.')
        modules[dotted.removesuffix('.__init__')] = path
  return modules


def _imports() -> dict[str, set[str]]:
  """{module: the package's modules it imports}, wherever the import is."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith(
          'simclr_tf'):
        for alias in node.names:
          name = f'{node.module}.{alias.name}'
          imported.add(name if name in modules else node.module)
      elif isinstance(node, ast.Import):
        imported.update(a.name for a in node.names
                        if a.name.startswith('simclr_tf'))
    graph[module] = imported - {module}
  return graph


def _folder(module: str) -> str:
  """simclr_tf.training.loop -> training; simclr_tf.modes -> modes."""
  return module.split('.')[1] if module.count('.') >= 1 else module


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of `graph` (a path that returns to its start), or None."""
  state = {}

  def visit(node, path):
    state[node] = 'open'
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, path + [nxt])
        if found:
          return found
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node, [node])
      if found:
        return found
  return None


def test_cycle_finder_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_no_module_imports_itself_back():
  assert _cycle(_imports()) is None


def test_folders_depend_on_each_other_one_way():
  folders = collections.defaultdict(set)
  for module, imported in _imports().items():
    for other in imported:
      if _folder(other) != _folder(module):
        folders[_folder(module)].add(_folder(other))
  assert _cycle(folders) is None, dict(folders)
  # Training never waits on evaluation's code; the bottom floor (the
  # configuration's dataclasses, devices, storage) needs nothing of the
  # package; the settings machinery sits above the catalogues it checks.
  assert 'evaluation' not in folders['training']
  assert not (folders['config'] or folders['devices'] or folders['storage'])
  assert folders['inputs'] <= {'config'}
  assert not any('settings' in folders[f] for f in
                 ('inputs', 'network', 'training', 'evaluation', 'serving'))


def test_the_command_line_defines_its_flags_without_tensorflow():
  # Its console is set up before TensorFlow starts (and logs).
  code = ('import sys, run; print(sorted(m for m in ("tensorflow", "keras") '
          'if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', code], cwd=helpers.REPO,
                          capture_output=True, text=True, timeout=120,
                          check=True)
  assert result.stdout.strip() == '[]'


def test_a_run_imports_no_optional_export_library():
  # torch alone takes seconds to import; only the formats asked for load
  # their libraries (docs/serving.md).
  code = ('import sys, run, simclr_tf.modes; print(sorted(m for m in '
          '("torch", "torchvision", "onnx", "tf2onnx", "onnxruntime") '
          'if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', code], cwd=helpers.REPO,
                          capture_output=True, text=True, timeout=120,
                          check=True)
  assert result.stdout.strip() == '[]'


def test_the_layout_page_lists_every_module_in_its_folder():
  with open(os.path.join(helpers.REPO, 'docs', 'layout.md')) as f:
    block = f.read().split('```')[1]
  # Each folder's entry: from its name to the next entry at its indent.
  entries = dict(re.findall(r'^  (\w+)/\s+(.*?)(?=^  \S|^\S)', block,
                            re.M | re.S))
  top = block.split('simclr_tf/', 1)[1]
  for module, path in _modules().items():
    parts = module.split('.')
    if path.endswith('__init__.py'):
      continue
    if len(parts) == 2:  # simclr_tf.modes
      assert re.search(rf'^  {parts[1]}\.py\b', top, re.M), module
    else:
      assert re.search(rf'\b{parts[2]}\b', entries[parts[1]]), module


# What the second redesign established (docs/layout.md): modules small
# enough to read whole, modules imported under their own names, the
# configuration's dataclasses holding data only, and settings worked out in
# the resolver alone.
MAX_MODULE_LINES = 400


def test_no_module_of_the_package_is_over_the_limit():
  long = {module: n for module, path in _modules().items()
          if (n := sum(1 for _ in open(path))) > MAX_MODULE_LINES}
  assert not long, long


def _python_files():
  for top in ('simclr_tf', 'tests', 'benchmarks', 'scripts'):
    for directory, _, files in os.walk(os.path.join(helpers.REPO, top)):
      yield from (os.path.join(directory, f) for f in files
                  if f.endswith('.py'))
  yield os.path.join(helpers.REPO, 'run.py')


def test_the_projects_modules_are_imported_under_their_own_names():
  ours = ('simclr_tf', 'benchmarks', 'tests')
  aliased = []
  for path in _python_files():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        aliased += [f'{path}: import {a.name} as {a.asname}'
                    for a in node.names
                    if a.asname and a.name.startswith(ours)]
      elif (isinstance(node, ast.ImportFrom) and
            (node.module or '').startswith(ours)):
        aliased += [f'{path}: from {node.module} import {a.name} as '
                    f'{a.asname}' for a in node.names if a.asname]
  assert not aliased, aliased


def test_the_configuration_holds_data_only():
  # No methods or properties: what follows from a setting is worked out in
  # settings/resolver.py (or by the code that uses it), once.
  import simclr_tf.config  # pylint: disable=g-import-not-at-top
  with open(simclr_tf.config.__file__) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.ClassDef):
      for item in node.body:
        assert not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)), (
            f'{node.name}.{item.name}')
    assert not isinstance(node, ast.FunctionDef), node.name


def test_settings_are_worked_out_in_the_resolver_alone():
  # The modes ask the resolver once per mode and build no configuration;
  # nothing else layers settings or builds one from flat values.
  import simclr_tf.config  # pylint: disable=g-import-not-at-top
  sections = {name for name, value in vars(simclr_tf.config).items()
              if isinstance(value, type) and name.endswith('Config')}
  allowed = {'simclr_tf.config', 'simclr_tf.settings.resolver',
             'simclr_tf.settings.registry'}
  calls = []
  for module, path in _modules().items():
    if module in allowed:
      continue
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Call):
        name = ast.unparse(node.func)
        if name in ('resolver.layered', 'resolver.derive', 'registry.build',
                    'registry.section', 'resolver.read_record') or (
                        name.split('.')[-1] in sections):
          calls.append(f'{module}: {name}')
  assert not calls, calls


def test_benchmarks_define_settings_flags_as_run_py_does():
  # A benchmark takes a setting through settings/setting_flags.py, with
  # run.py's help and type, never a flag of its own by the same name (on
  # absl's FLAGS; fault_campaign.py's own FlagValues seed its draws).
  from simclr_tf.settings import setting_flags  # pylint: disable=g-import-not-at-top
  own = []
  for path in _python_files():
    if os.sep + 'benchmarks' + os.sep not in path:
      continue
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if (isinstance(node, ast.Call) and
          ast.unparse(node.func).startswith('flags.DEFINE_') and node.args and
          isinstance(node.args[0], ast.Constant) and
          node.args[0].value in setting_flags.HELP and
          not any(k.arg == 'flag_values' for k in node.keywords)):
        own.append(f'{path}: --{node.args[0].value}')
  assert not own, own
