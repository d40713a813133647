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
