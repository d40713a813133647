"""The training loop's hooks: stop requests (SIGTERM / Ctrl-C, NaN, time
budget), progress lines, TensorBoard summaries, checkpoints, and work at
every N-th checkpoint (the kNN monitor)."""

import shutil
import signal
import tempfile
import threading
import time

from absl import logging
import numpy as np
import tensorflow as tf

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
  checkpoint), then raises `Preempted`. A second Ctrl-C aborts at once."""

  def __init__(self, latest_checkpoint=lambda: None):
    self.signum = None
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

  def after_steps(self, state):
    if self.signum is not None:
      state.request_stop(signal.Signals(self.signum).name)

  def end(self, state):
    if self.signum is not None:
      raise Preempted(
          f'Stopped by {signal.Signals(self.signum).name} at step '
          f'{state.step} with checkpoint {self._latest_checkpoint()}; run the '
          'same command again to resume.', self.signum)

  def close(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


class ClusterPreemptionHook(Hook):
  """Several workers: SIGTERM to any of them stops all of them after the
  same step (where the checkpoint hook after this one saves), then raises
  `Preempted` on each.

  TensorFlow's PreemptionCheckpointHandler agrees on that step through the
  coordination service: it counts the loop's calls, and the signalled worker
  names the call after its next one. Its own checkpoint bookkeeping is kept
  apart, empty and in a temporary directory, so that every worker counts
  from zero after a restart; the run's checkpoints are the checkpoint
  hook's.
  """

  def __init__(self, cluster_resolver, model_dir: str):
    self._resolver = cluster_resolver
    self._model_dir = model_dir
    self._handler = self._directory = None
    self._previous = None
    self.stopped = False

  def begin(self, state):
    self._previous = signal.getsignal(signal.SIGTERM)
    self._directory = tempfile.mkdtemp(prefix='preemption-')
    bookkeeping = tf.train.CheckpointManager(tf.train.Checkpoint(),
                                             self._directory, max_to_keep=1)
    self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        self._resolver, bookkeeping,
        termination_config=tf.distribute.experimental.TerminationConfig(
            exit_fn=self._stop, save_fn=lambda: None))

  def _stop(self):
    self.stopped = True

  def after_steps(self, state):
    if not self.stopped:
      self._handler.save_checkpoint_if_preempted()
    if self.stopped:
      state.request_stop('preemption')

  def end(self, state):
    if self.stopped:
      raise Preempted(
          f'A worker was preempted (SIGTERM): every worker stopped at step '
          f'{state.step}, checkpointed in {self._model_dir}; launch all '
          'workers again with the same command to resume.',
          signal.SIGTERM)

  def close(self):
    if self._handler is not None:
      # TensorFlow's cleanup: ends its watcher threads, which keep it alive
      # (so it is never deleted on its own).
      self._handler.__del__()
      self._handler = None
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    if self._directory:
      shutil.rmtree(self._directory, ignore_errors=True)
      self._directory = None


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
  once it has trained for `seconds`."""

  def __init__(self, seconds: float):
    self.seconds = seconds
    self.started = None

  def begin(self, state):
    self.started = time.monotonic()

  def after_steps(self, state):
    if time.monotonic() - self.started >= self.seconds:
      if not state.at_end:
        logging.info('Time budget of %.0f s spent at step %d.', self.seconds,
                     state.step)
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
  # read as unstable pretraining whenever the side head's loss moves.
  SHOWN = ('contrast_loss', 'contrast_acc', 'supervised_loss',
           'supervised_acc')

  def __init__(self, every_seconds: float, log=logging.info):
    self.every_seconds = every_seconds
    self.log = log
    self.started = self.last = None

  def begin(self, state):
    self.started = self.last = time.monotonic()

  def after_steps(self, state):
    now = time.monotonic()
    if now - self.last < self.every_seconds and not state.at_end:
      return
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

