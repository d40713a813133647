"""The custom training loop: runs a task's steps and calls hooks.

The loop calls `task.run_steps(iterator, n)` with n up to `steps_per_loop`,
cut short where a hook needs the loop to pause (`Hook.next_step`), then
calls every hook's `after_steps(state)` in order. Nothing is read from the
devices unless a hook asks (`state.metrics`, read once per pause). The task
provides `step`, `run_steps(iterator, n)`, `read_metrics()`,
`reset_metrics()` and `may_skip_steps`. A hook ends training early with
`state.request_stop(reason)`; the loop then stops after the hooks of that
pause have run (so a checkpoint hook placed after it saves the step it
stopped at).

Under several workers every worker must pause, read metrics and stop at
the same steps. What a worker sees alone (a signal, its clock) is put to
the others: at each pause every hook's `votes(state)` are summed over the
workers by `agree` (one small all-reduce) before any `after_steps`, which
read the sums from `state.agreed`.
"""

import dataclasses
import time

INFINITY = float('inf')


class Hook:
  """Work between calls of the training loop. Hooks run in list order."""

  def next_step(self, step: int) -> float:
    """The next step after `step` at which this hook must run (INFINITY:
    none in particular; `after_steps` still runs after every call)."""
    del step
    return INFINITY

  def begin(self, state: 'LoopState'):
    """Before the first step."""

  def votes(self, state: 'LoopState') -> dict[str, float]:
    """What this worker alone knows and every worker must act on alike
    (whole numbers, summed over workers into `state.agreed` before any
    `after_steps`); the same names at every pause."""
    del state
    return {}

  def after_steps(self, state: 'LoopState'):
    """After each call of the loop."""

  def end(self, state: 'LoopState'):
    """After the last step (also after a stop request); not after an
    exception."""

  def close(self):
    """Always, last: release what `begin` took (signal handlers, ...)."""


@dataclasses.dataclass
class LoopState:
  """What hooks see: where training is and how fast it goes."""

  task: object
  step: int
  total_steps: int
  start_step: int
  images_per_second: float = 0.0  # Of the last call.
  stop_reason: str | None = None
  # Every hook's votes of this pause, summed over the workers.
  agreed: dict[str, float] = dataclasses.field(default_factory=dict)
  _metrics: dict | None = None

  @property
  def at_end(self) -> bool:
    return self.step >= self.total_steps or self.stopping

  @property
  def stopping(self) -> bool:
    return self.stop_reason is not None

  @property
  def metrics(self) -> dict:
    """Metric means since the last reset; read from the devices at most
    once per pause, and only if a hook asks."""
    if self._metrics is None:
      self._metrics = self.task.read_metrics()
    return self._metrics

  def reset_metrics(self):
    self.task.reset_metrics()

  def request_stop(self, reason: str):
    if self.stop_reason is None:
      self.stop_reason = reason

  def at(self, every: int) -> bool:
    """True at multiples of `every`, at the end, and when stopping."""
    return self.at_end or (every > 0 and self.step % every == 0)


def next_multiple(step: int, every: int) -> float:
  return (step // every + 1) * every if every > 0 else INFINITY


def _alone(values):
  return list(values)


def train_until(task, iterator, *, total_steps: int, steps_per_loop: int,
                hooks: list[Hook], batch_size: int, agree=_alone) -> LoopState:
  """Trains from the task's current step to `total_steps` (or a stop
  request); returns the final state. `agree` sums a list of numbers over
  the workers (distribute.summed_over_workers); one worker: as they are."""
  step = task.step
  state = LoopState(task, step, total_steps, start_step=step)
  try:
    for hook in hooks:
      hook.begin(state)
    while state.step < total_steps and not state.stopping:
      pause = min([total_steps, state.step + steps_per_loop] +
                  [hook.next_step(state.step) for hook in hooks])
      num_steps = int(pause - state.step)
      started = time.perf_counter()
      task.run_steps(iterator, num_steps)
      seconds = time.perf_counter() - started
      # Loss scaling (float16) skips steps whose gradients overflow: then
      # the step is read back; otherwise it is known here.
      state.step = (task.step if task.may_skip_steps
                    else state.step + num_steps)
      state.images_per_second = num_steps * batch_size / max(seconds, 1e-9)
      state._metrics = None  # pylint: disable=protected-access
      votes = {}
      for hook in hooks:
        votes.update(hook.votes(state))
      if votes:
        names = sorted(votes)
        state.agreed = dict(zip(names, map(float, agree(
            [votes[n] for n in names]))))
      for hook in hooks:
        hook.after_steps(state)
    for hook in hooks:
      hook.end(state)
  finally:
    for hook in hooks:
      hook.close()
  return state
