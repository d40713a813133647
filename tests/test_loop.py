"""The training loop and its hooks, on a fake task (no TensorFlow)."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from simclr_tf.training import hooks
from simclr_tf.training import loop


class FakeTask:
  """Counts steps, calls and host reads; its loss is `loss_at(step)`."""

  may_skip_steps = False

  def __init__(self, step=0, loss_at=lambda step: 1.0, on_call=None):
    self._step = step
    self.calls = []
    self.reads = 0
    self.resets = 0
    self.loss_at = loss_at
    self.on_call = on_call
    self.learning_rate = 0.5

  @property
  def step(self):
    return self._step

  def run_steps(self, iterator, num_steps):
    del iterator
    self._step += num_steps
    self.calls.append(num_steps)
    if self.on_call is not None:
      self.on_call(self)

  def read_metrics(self):
    self.reads += 1
    return {'total_loss': self.loss_at(self._step)}

  def reset_metrics(self):
    self.resets += 1


class FakeManager:
  def __init__(self):
    self.saved = []

  def save(self, checkpoint_number):
    self.saved.append(checkpoint_number)

  @property
  def latest_checkpoint(self):
    return f'ckpt-{self.saved[-1]}' if self.saved else None


class FakeWriter:
  def __init__(self):
    self.written = []

  def scalars(self, step, values):
    self.written.append((step, dict(values)))


def _run(task, total, hook_list, steps_per_loop=4):
  return loop.train_until(task, None, total_steps=total,
                          steps_per_loop=steps_per_loop, hooks=hook_list,
                          batch_size=8)


def test_calls_pause_where_hooks_need_them_and_nothing_is_read_otherwise():
  task, manager = FakeTask(), FakeManager()
  state = _run(task, 20, [hooks.CheckpointHook(manager, every=7)])
  # steps_per_loop 4, cut at the checkpoints 7 and 14, then the end.
  assert task.calls == [4, 3, 4, 3, 4, 2]
  assert manager.saved == [7, 14, 20]
  assert state.step == 20 and task.reads == 0


def test_summaries_read_the_metrics_once_per_summary_and_reset_them():
  task, writer = FakeTask(), FakeWriter()
  _run(task, 20, [hooks.SummaryHook(writer, every=5),
                  hooks.NanGuardHook(every=5, checkpoint_steps=10)])
  assert [step for step, _ in writer.written] == [5, 10, 15, 20]
  assert task.reads == 4 and task.resets == 4  # Shared by both hooks.
  step, values = writer.written[0]
  assert values['learning_rate'] == 0.5 and values['total_loss'] == 1.0
  assert values['images_per_second'] > 0


def test_a_resumed_run_continues_from_the_task_step():
  task, manager = FakeTask(step=12), FakeManager()
  state = _run(task, 20, [hooks.CheckpointHook(manager, every=5)])
  assert task.calls == [3, 4, 1] and manager.saved == [15, 20]
  assert state.start_step == 12


def test_nan_guard_fails_before_the_checkpoint_keeps_the_bad_step():
  task = FakeTask(loss_at=lambda step: np.nan if step >= 9 else 1.0)
  manager = FakeManager()
  guard = hooks.NanGuardHook(every=100, checkpoint_steps=5,
                             latest_checkpoint=lambda: 'ckpt-5')
  with pytest.raises(FloatingPointError, match='nan at step 10; the last '
                     'good checkpoint is ckpt-5'):
    _run(task, 20, [guard, hooks.CheckpointHook(manager, every=5)])
  assert manager.saved == [5]


def test_sigterm_stops_with_a_checkpoint_and_restores_the_handler():
  previous = signal.getsignal(signal.SIGTERM)

  def send_sigterm_at_step_6(task):
    if task.step == 6:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.05)  # Python runs the handler between bytecodes.

  task, manager = FakeTask(on_call=send_sigterm_at_step_6), FakeManager()
  preemption = hooks.PreemptionHook(lambda: manager.latest_checkpoint)
  with pytest.raises(hooks.Preempted, match='Stopped by SIGTERM at step 6 '
                     'with checkpoint ckpt-6') as stopped:
    _run(task, 1000, [preemption, hooks.CheckpointHook(manager, every=100)],
         steps_per_loop=3)
  assert stopped.value.exit_code == 143
  assert manager.saved == [6] and task.step == 6
  assert signal.getsignal(signal.SIGTERM) is previous


class FakeClock:
  """time.monotonic / time.perf_counter for hooks: 0.05 s per call."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now

  def advance(self, task, seconds=0.05):
    del task
    self.now += seconds


def test_time_budget_ends_training_like_its_last_step(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(hooks.time, 'monotonic', clock)
  task = FakeTask(on_call=clock.advance)
  manager = FakeManager()
  state = _run(task, 10_000, [hooks.TimeBudgetHook(0.3),
                              hooks.CheckpointHook(manager, every=1000)],
               steps_per_loop=2)
  assert state.stop_reason == 'time budget'
  assert 4 <= state.step <= 20  # 0.3 s of 0.05 s calls of 2 steps.
  assert manager.saved == [state.step]


def test_a_stop_requested_after_the_checkpoint_hook_still_saves_its_step():
  class StopAt(loop.Hook):
    def after_steps(self, state):
      if state.step >= 6:
        state.request_stop('test')

  task, manager = FakeTask(), FakeManager()
  state = _run(task, 100, [hooks.CheckpointHook(manager, every=50), StopAt()],
               steps_per_loop=3)
  assert state.step == 6 and manager.saved == [6]


def test_progress_lines_show_step_metrics_and_eta():
  lines = []
  task = FakeTask(on_call=lambda task: time.sleep(0.01))
  _run(task, 12, [hooks.ProgressHook(
      every_seconds=0, log=lambda fmt, *args: lines.append(fmt % args))],
       steps_per_loop=4)
  assert len(lines) == 3
  assert lines[0].startswith('step 4/12  total_loss 1.0000  images/s ')
  # A pretraining task's losses are shown apart, without their sum.
  lines.clear()
  progress = hooks.ProgressHook(every_seconds=0, log=lambda fmt, *args:
                                lines.append(fmt % args))
  state = loop.LoopState(task, 3, 9, start_step=0, _metrics={
      'total_loss': 9.5, 'contrast_loss': 7.25, 'contrast_acc': 0.5,
      'supervised_loss': 2.25, 'supervised_acc': 0.125})
  progress.begin(state)
  progress.after_steps(state)
  assert lines[0].startswith('step 3/9  contrast_loss 7.2500  contrast_acc '
                             '0.5000  supervised_loss 2.2500  supervised_acc '
                             '0.1250  images/s ')
  assert lines[-1].endswith('ETA 00:00:00')
  assert task.reads == 3


@pytest.mark.parametrize('seconds,expected', [
    (0, '00:00:00'), (59.6, '00:01:00'), (3 * 3600 + 4 * 60 + 5, '03:04:05'),
    (86399, '23:59:59'), (86400, '1d 00:00:00'),
    # 46 hours: the clock alone would wrap to 22:00:00.
    (46 * 3600, '1d 22:00:00'), (9 * 86400 + 3661, '9d 01:01:01')])
def test_durations_show_days_past_24_hours(seconds, expected):
  assert hooks.format_duration(seconds) == expected


def test_every_nth_checkpoint_runs_before_the_end_only():
  task, manager = FakeTask(), FakeManager()
  checkpoint = hooks.CheckpointHook(manager, every=2)
  seen = []
  _run(task, 10, [checkpoint, hooks.EveryNthCheckpointHook(
      checkpoint, 2, lambda task, step: seen.append(step))], steps_per_loop=2)
  assert manager.saved == [2, 4, 6, 8, 10]
  assert seen == [4, 8]  # The 2nd and 4th; the end (10) has its own.


def test_step_times_give_images_per_second_after_warm_up(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(hooks.time, 'perf_counter', clock)
  task = FakeTask(on_call=lambda task: clock.advance(task, 0.02))
  timer = hooks.StepTimesHook()
  _run(task, 12, [timer], steps_per_loop=2)
  # Not after the last call, whose pause holds the final checkpoint.
  assert [step for step, _ in timer.times] == [2, 4, 6, 8, 10]
  # 8 images per step, 2 steps per ~0.02 s call: about 800 images/s.
  assert 400 < timer.images_per_second(8, skip_calls=2) < 820


def test_skipped_steps_are_made_up_for():
  # Loss scaling skips steps whose gradients overflow: every third here.
  class SkippingTask(FakeTask):
    may_skip_steps = True

    def __init__(self):
      super().__init__()
      self.attempts = 0

    def run_steps(self, iterator, num_steps):
      for _ in range(num_steps):
        self.attempts += 1
        if self.attempts % 3:
          self._step += 1
      self.calls.append(num_steps)

  task, manager = SkippingTask(), FakeManager()
  state = _run(task, 10, [hooks.CheckpointHook(manager, every=5)])
  assert state.step == 10 and task.step == 10
  assert task.attempts > 10 and manager.saved[-1] == 10


class FakeCluster:
  """`agree` functions for loops run by threads, one per worker: each call
  waits for every worker's and returns the sum, as the all-reduce of
  distribute.summed_over_workers does."""

  def __init__(self, workers: int):
    self._barrier = threading.Barrier(workers, timeout=10)
    self._votes = [None] * workers

  def agree_for(self, index):
    def agree(values):
      self._votes[index] = np.asarray(values, np.float64)
      self._barrier.wait()
      total = sum(self._votes)
      self._barrier.wait()
      return total
    return agree


def _run_workers(make_hooks, tasks, total, steps_per_loop=1):
  """Runs `tasks` as the workers of one cluster (a thread each); returns
  each worker's final state or exception."""
  cluster = FakeCluster(len(tasks))
  results = [None] * len(tasks)

  def work(index):
    try:
      results[index] = loop.train_until(
          tasks[index], None, total_steps=total,
          steps_per_loop=steps_per_loop, hooks=make_hooks(index),
          batch_size=8, agree=cluster.agree_for(index))
    except Exception as e:  # pylint: disable=broad-except
      results[index] = e
  threads = [threading.Thread(target=work, args=(i,))
             for i in range(len(tasks))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return results


WORKERS = ['worker 0 (10.0.0.1:2222)', 'worker 1 (10.0.0.2:2222)']


@pytest.mark.parametrize('stop_signal', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_one_worker_stops_every_worker_at_the_same_step(
    stop_signal):
  def signal_worker_1_at_step_5(task):
    if task.step == 5:
      preemptions[1].signum = stop_signal  # What its handler sets.

  tasks = [FakeTask(), FakeTask(on_call=signal_worker_1_at_step_5)]
  managers = [FakeManager(), FakeManager()]
  preemptions = [hooks.PreemptionHook(lambda: None, WORKERS, own=i,
                                      model_dir='gs://b/run')
                 for i in range(2)]
  results = _run_workers(
      lambda i: [preemptions[i], hooks.CheckpointHook(managers[i], 100)],
      tasks, total=1000)
  name = signal.Signals(stop_signal).name
  for result, task, manager in zip(results, tasks, managers):
    assert isinstance(result, hooks.Preempted)
    assert str(result) == (
        f'Worker 1 (10.0.0.2:2222) received {name}: every worker stopped at '
        'step 5, checkpointed in gs://b/run; launch all workers again with '
        'the same command to resume.')
    assert result.exit_code == 128 + stop_signal
    assert task.step == 5 and manager.saved == [5]


def test_a_preemption_notice_outweighs_ctrl_c_elsewhere():
  def signals_at_step_3(task):
    if task.step == 3:
      preemptions[tasks.index(task)].signum = (
          signal.SIGINT, signal.SIGTERM)[tasks.index(task)]

  tasks = [FakeTask(on_call=signals_at_step_3),
           FakeTask(on_call=signals_at_step_3)]
  preemptions = [hooks.PreemptionHook(lambda: None, WORKERS, own=i)
                 for i in range(2)]
  results = _run_workers(lambda i: [preemptions[i]], tasks, total=100)
  assert [r.exit_code for r in results] == [143, 143]
  assert all(str(r).startswith('Worker 1 (10.0.0.2:2222) received SIGTERM')
             for r in results)


class WorkerClocks:
  """time.monotonic for hooks run by several threads: each thread (worker)
  its own clock, started by `start()` and moved on by its task's calls."""

  def __init__(self, monkeypatch):
    self._now = {}
    monkeypatch.setattr(hooks.time, 'monotonic',
                        lambda: self._now[threading.current_thread().name])

  def start(self):
    self._now[threading.current_thread().name] = 0.0

  def advance(self, seconds):
    def on_call(task):
      del task
      self._now[threading.current_thread().name] += seconds
    return on_call


def test_a_time_budget_spent_on_one_workers_clock_stops_them_all_together(
    monkeypatch):
  clocks = WorkerClocks(monkeypatch)
  # Worker 1's clock runs 8x faster: its budget runs out after 8 calls.
  tasks = [FakeTask(on_call=clocks.advance(1 / 64)),
           FakeTask(on_call=clocks.advance(1 / 8))]
  managers = [FakeManager(), FakeManager()]

  def make_hooks(index):
    clocks.start()
    return [hooks.TimeBudgetHook(1.0),
            hooks.CheckpointHook(managers[index], 1000)]
  results = _run_workers(make_hooks, tasks, total=1000)
  assert [r.stop_reason for r in results] == ['time budget'] * 2
  assert [r.step for r in results] == [8, 8]
  assert managers[0].saved == managers[1].saved == [8]


def test_progress_lines_come_at_the_same_steps_on_every_worker(monkeypatch):
  clocks = WorkerClocks(monkeypatch)
  lines = [[], []]

  def make_hooks(index):
    clocks.start()
    return [hooks.ProgressHook(every_seconds=1.0, log=lambda fmt, *args:
                               lines[index].append(args[0]))]

  # Reading the metrics for a line is a collective: the clocks differ, the
  # steps of the lines must not. Alone, worker 0 (0.375 s a call) would
  # print at steps 3, 6, 9, 12 and worker 1 (0.5 s) at 2, 4, ...; together
  # both print whenever either is due.
  tasks = [FakeTask(on_call=clocks.advance(0.375)),
           FakeTask(on_call=clocks.advance(0.5))]
  _run_workers(make_hooks, tasks, total=12)
  assert lines[0] == lines[1] == [2, 4, 6, 8, 10, 12]
  assert tasks[0].reads == tasks[1].reads == 6
