"""The README's and the docs' relative links resolve: files and headings."""

import os
import re

import pytest

from tests.helpers import REPO

PAGES = ['README.md'] + sorted(
    os.path.join('docs', name)
    for name in os.listdir(os.path.join(REPO, 'docs')) if name.endswith('.md'))
_LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
_FENCE = re.compile(r'^(```|~~~)')


def _prose_lines(path):
  """The lines of a Markdown file outside fenced code blocks."""
  fenced = False
  with open(os.path.join(REPO, path), encoding='utf-8') as f:
    for line in f:
      if _FENCE.match(line):
        fenced = not fenced
      elif not fenced:
        yield line.rstrip('\n')


def github_anchor(heading: str) -> str:
  """The anchor GitHub gives a heading: lower case, punctuation other than
  '-' and '_' dropped, spaces turned into '-'."""
  text = heading.strip().lower()
  text = re.sub(r'[^\w\- ]', '', text)
  return text.replace(' ', '-')


def _anchors(path):
  return {github_anchor(line.lstrip('#'))
          for line in _prose_lines(path) if re.match(r'#{1,6} ', line)}


@pytest.mark.parametrize('heading,anchor', [
    ('Learning: Fashion-MNIST on 2 CPU cores',
     'learning-fashion-mnist-on-2-cpu-cores'),
    ('Fine-tuning on 1% and 10% of the labels',
     'fine-tuning-on-1-and-10-of-the-labels'),
    ("Importing the original code's models", 'importing-the-original-codes-models'),
    ('Large batches on small memory (`simclr_tf/training/gradient_cache.py`)',
     'large-batches-on-small-memory-simclr_tftraininggradient_cachepy')])
def test_anchors_follow_githubs_rule(heading, anchor):
  assert github_anchor(heading) == anchor


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_resolve(page):
  broken = []
  for line in _prose_lines(page):
    for target in _LINK.findall(line):
      if re.match(r'[a-z]+:', target):  # https:, mailto:
        continue
      path, _, anchor = target.partition('#')
      resolved = (os.path.normpath(os.path.join(os.path.dirname(page), path))
                  if path else page)
      if not os.path.exists(os.path.join(REPO, resolved)):
        broken.append(f'{target} (no file {resolved})')
      elif anchor and resolved.endswith('.md') and (
          anchor not in _anchors(resolved)):
        broken.append(f'{target} (no heading #{anchor} in {resolved})')
  assert not broken, f'{page}: ' + '; '.join(broken)


def test_every_docs_page_is_linked_from_the_readme():
  linked = {os.path.normpath(target.partition('#')[0])
            for line in _prose_lines('README.md')
            for target in _LINK.findall(line)}
  assert [page for page in PAGES[1:] if page not in linked] == []


def _command(text: str, start: str) -> list[str]:
  """The words of the shell command in `text` that begins with `start`,
  continuation lines joined."""
  command = text[text.index(start):].replace('\\\n', ' ')
  return command.splitlines()[0].split()


def test_the_readme_shows_the_command_the_quickstart_runs():
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    readme = _command(f.read(), '.venv/bin/python run.py')
  with open(os.path.join(REPO, 'scripts', 'quickstart.sh'),
            encoding='utf-8') as f:
    script = _command(f.read(), '.venv/bin/python run.py')
  assert script[-1] == '"$@"' and readme == script[:-1]
