"""Seconds per call of a function whose result is a tensor, after warm-up
calls (tracing, oneDNN's primitive creation), each call waited for."""

import time


def call_seconds(function, *args, repeats: int, warmup: int = 3) -> list:
  """The seconds of `repeats` calls of `function(*args)`, after `warmup`
  untimed ones."""
  for _ in range(warmup):
    function(*args).numpy()
  seconds = []
  for _ in range(repeats):
    started = time.perf_counter()
    function(*args).numpy()
    seconds.append(time.perf_counter() - started)
  return seconds
