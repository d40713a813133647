"""The training loop's hooks: stop requests (SIGTERM / Ctrl-C, NaN, time
budget), progress lines, TensorBoard summaries, checkpoints, and work at
every N-th checkpoint (the kNN monitor)."""

import signal
import threading
import time

from absl import logging
import numpy as np

from simclr_tf.training.loop import Hook, next_multiple


class Preempted(Exception):
  """Training stopped early on request (SIGTERM, Ctrl-C), after a
  checkpoint."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.exit_code = 128 + signum  # The shell's code for that signal.


# Signals that stop training with a checkpoint at the current step: what
# schedulers send before killing (SIGTERM), and Ctrl-C (SIGINT).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionHook(Hook):
  """Turns SIGTERM and Ctrl-C into a stop after the current steps (with a
  checkpoint), then raises `Preempted`. A second Ctrl-C aborts at once.

  Under several workers a signal usually reaches one of them: each votes
  the signal it received (the loop sums the votes over the workers), so
  every worker stops at the same pause, where the checkpoint hook after
  this one saves. The handler is this process's own, so this works the same
  wherever the workers run (TensorFlow's PreemptionCheckpointHandler picks
  its behaviour from the platform it detects, and on Google Cloud VMs
  installs no SIGTERM handler at all).
  """

  def __init__(self, latest_checkpoint=lambda: None,
               workers=('this process',), own: int = 0,
               model_dir: str = ''):
    self.signum = None
    self.stop_signal = None
    self.workers = list(workers)
    self.own = own
    self.model_dir = model_dir
    self._senders = []
    self._previous = {}
    self._latest_checkpoint = latest_checkpoint

  def begin(self, state):
    if threading.current_thread() is threading.main_thread():
      for signum in STOP_SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      self.close()
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning('%s received: saving a checkpoint and stopping (Ctrl-C '
                    'again aborts without one).', signal.Signals(signum).name)

  @staticmethod
  def _vote_name(index: int) -> str:
    return f'signal received by worker {index:04d}'

  def votes(self, state):
    return {self._vote_name(i): float(self.signum or 0) if i == self.own
            else 0.0 for i in range(len(self.workers))}

  def after_steps(self, state):
    if self.stop_signal is not None:
      return
    received = [int(state.agreed.get(self._vote_name(i), vote))
                for i, vote in enumerate(self.votes(state).values())]
    if not any(received):
      return
    # A preemption notice outweighs a Ctrl-C elsewhere.
    self.stop_signal = (signal.SIGTERM if signal.SIGTERM in received
                        else max(received))
    self._senders = [name for name, signum in zip(self.workers, received)
                     if signum == self.stop_signal]
    state.request_stop(signal.Signals(self.stop_signal).name)

  def end(self, state):
    if self.stop_signal is None:
      return
    name = signal.Signals(self.stop_signal).name
    if len(self.workers) == 1:
      message = (f'Stopped by {name} at step {state.step} with checkpoint '
                 f'{self._latest_checkpoint()}; run the same command again '
                 'to resume.')
    else:
      senders = ' and '.join(self._senders)
      message = (f'{senders[0].upper()}{senders[1:]} received {name}: every '
                 f'worker stopped at step {state.step}, checkpointed in '
                 f'{self.model_dir}; launch all workers again with the same '
                 'command to resume.')
    raise Preempted(message, self.stop_signal)

  def close(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


class NanGuardHook(Hook):
  """Fails when the loss is not finite, before a checkpoint would keep it:
  checks wherever metrics are read anyway (every `every` steps, at
  checkpoints, at the end)."""

  def __init__(self, every: int, checkpoint_steps: int,
               latest_checkpoint=lambda: None):
    self.every = every
    self.checkpoint_steps = checkpoint_steps
    self._latest_checkpoint = latest_checkpoint

  def next_step(self, step):
    return min(next_multiple(step, self.every),
               next_multiple(step, self.checkpoint_steps))

  def after_steps(self, state):
    if not (state.at(self.every) or state.at(self.checkpoint_steps)):
      return
    loss = state.metrics['total_loss']
    if not np.isfinite(loss):
      raise FloatingPointError(
          f'The loss became {loss} at step {state.step}; the last good '
          f'checkpoint is {self._latest_checkpoint()}.')


class TimeBudgetHook(Hook):
  """Ends training (as at its last step: checkpoint, export, evaluation)
  once it has trained for `seconds`; under several workers, once any of
  them has (their clocks differ, and all must stop at the same step)."""

  VOTE = 'time budget spent'

  def __init__(self, seconds: float):
    self.seconds = seconds
    self.started = None

  def begin(self, state):
    self.started = time.monotonic()

  def votes(self, state):
    return {self.VOTE: float(time.monotonic() - self.started >= self.seconds)}

  def after_steps(self, state):
    own = self.votes(state)[self.VOTE]
    if not state.agreed.get(self.VOTE, own):
      return
    if not state.at_end:
      if own:
        logging.info('Time budget of %.0f s spent at step %d.', self.seconds,
                     state.step)
      else:
        logging.info('Another worker spent its time budget at step %d; '
                     'every worker stops there.', state.step)
    state.request_stop('time budget')


def format_duration(seconds: float) -> str:
  """'HH:MM:SS', with days in front from one day on ('2d 03:04:05')."""
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  days, hours = divmod(hours, 24)
  clock = f'{hours:02d}:{minutes:02d}:{secs:02d}'
  return f'{days}d {clock}' if days else clock


class ProgressHook(Hook):
  """A line every few seconds: step / total, metrics, images/s, ETA.

  (keras.utils.Progbar assumes counting from zero, which misestimates the
  ETA of a resumed run, and writes terminal control codes into log files.)
  """

  # The contrastive loss and the supervised head's apart: their sum would
  # read as unstable pretraining whenever the supervised head's loss moves.
  SHOWN = ('contrast_loss', 'contrast_acc', 'supervised_loss',
           'supervised_acc', 'distill_loss', 'distill_label_loss',
           'teacher_agreement')

  def __init__(self, every_seconds: float, log=logging.info):
    self.every_seconds = every_seconds
    self.log = log
    self.started = self.last = None

  VOTE = 'progress line due'

  def begin(self, state):
    self.started = self.last = time.monotonic()

  def votes(self, state):
    # Reading the metrics is a collective under several workers: all print
    # a line at the same pauses, when any worker's clock says so.
    return {self.VOTE: float(time.monotonic() - self.last >=
                             self.every_seconds)}

  def after_steps(self, state):
    due = state.agreed.get(self.VOTE, self.votes(state)[self.VOTE])
    if not due and not state.at_end:
      return
    now = time.monotonic()
    self.last = now
    done = state.step - state.start_step
    eta = (now - self.started) / max(done, 1) * max(
        0, state.total_steps - state.step)
    metrics = state.metrics
    names = [name for name in self.SHOWN if name in metrics] or [
        name for name in ('total_loss',) if name in metrics]
    shown = ''.join(f'  {name} {metrics[name]:.4f}' for name in names)
    self.log('step %d/%d%s  images/s %.1f  ETA %s', state.step,
             state.total_steps, shown, state.images_per_second,
             format_duration(eta))


class SummaryHook(Hook):
  """Scalars every `every` steps (metric means since the last summary,
  learning rate, images/s), then resets the metrics."""

  def __init__(self, writer, every: int):
    self.writer = writer
    self.every = every

  def next_step(self, step):
    return next_multiple(step, self.every)

  def after_steps(self, state):
    if not state.at(self.every):
      return
    self.writer.scalars(state.step, {
        **state.metrics, 'learning_rate': state.task.learning_rate,
        'images_per_second': state.images_per_second})
    state.reset_metrics()


class CheckpointHook(Hook):
  """Saves every `every` steps, at the end and when stopping early."""

  def __init__(self, manager, every: int):
    self.manager = manager
    self.every = every
    self.saved_step = None
    self.count = 0

  def next_step(self, step):
    return next_multiple(step, self.every)

  def _save(self, state):
    self.manager.save(checkpoint_number=state.step)
    self.saved_step = state.step
    self.count += 1

  def after_steps(self, state):
    if state.at(self.every):
      self._save(state)

  def end(self, state):
    if self.saved_step != state.step:
      self._save(state)


class EveryNthCheckpointHook(Hook):
  """Calls `fn(task, step)` at every `n`-th checkpoint before the end (the
  end has its own evaluation): the kNN monitor."""

  def __init__(self, checkpoint_hook: CheckpointHook, n: int, fn):
    self.checkpoint_hook = checkpoint_hook
    self.n = n
    self.fn = fn
    self._count = 0

  def after_steps(self, state):
    count = self.checkpoint_hook.count
    if (count != self._count and count % self.n == 0 and not state.at_end
        and self.checkpoint_hook.saved_step == state.step):
      self.fn(state.task, state.step)
    self._count = count


class StepTimesHook(Hook):
  """Records (step, seconds since begin) after every call but the last (whose
  pause holds the final checkpoint): what a benchmark reads images/s from,
  excluding the first calls (tracing, warm-up)."""

  def __init__(self):
    self.times = []
    self.started = None

  def begin(self, state):
    self.started = time.perf_counter()

  def after_steps(self, state):
    if not state.at_end:
      self.times.append((state.step, time.perf_counter() - self.started))

  def images_per_second(self, batch_size: int, skip_calls: int) -> float:
    (first_step, first), (last_step, last) = (self.times[skip_calls - 1],
                                              self.times[-1])
    return (last_step - first_step) * batch_size / (last - first)

