"""The evaluators of evaluators.py, by name (--evaluators). No TensorFlow:
the resolver checks and records them before evaluation starts."""

EVALUATORS = ('supervised_head', 'knn', 'linear_probe', 'random_init',
              'raw_pixels')
