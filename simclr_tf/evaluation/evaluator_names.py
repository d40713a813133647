"""The evaluators of evaluators.py, by name (--evaluators), and the names of
the few-label probe's fractions (--label_fractions). No TensorFlow: the
resolver checks and records them before evaluation starts."""

EVALUATORS = ('supervised_head', 'knn', 'linear_probe', 'random_init',
              'raw_pixels')


def label_fractions(value: str) -> tuple[float, ...]:
  """The fractions of a --label_fractions value ('0.01,0.1'; '': none)."""
  return tuple(float(part) for part in value.split(',') if part.strip())


def few_label_prefix(fraction: float) -> str:
  """'linear_probe_1pct' for 0.01: the prefix of a fraction's metrics."""
  return f'linear_probe_{fraction * 100:g}pct'.replace('.', 'p')
