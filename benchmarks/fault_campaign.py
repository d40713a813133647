"""Faults on a two-worker training run on localhost, each followed by a
relaunch of both workers with the same command; at the end the weights are
compared with an uninterrupted run's (bit for bit under --deterministic).

  python -m benchmarks.fault_campaign --faults=24 \
      --output=benchmarks/results/fault_campaign.json

A fault is SIGTERM, Ctrl-C (SIGINT) or SIGKILL to either worker (the chief
included) a few steps after the launch resumed, or a time budget that runs
out on one worker's clock only, with TensorFlow's platform detection made to
say what it says on a Google Cloud CPU VM (a stand-in for the GCE metadata
server on 127.0.0.1) or GPU VM (the detection patched in the workers), or
left off-cloud. The campaign draws them at random (--seed); the test suite
runs a scripted few (tests/test_multi_worker.py). docs/resuming.md reports
the result.
"""

import dataclasses
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
import tensorflow as tf

from benchmarks import machine
from simclr_tf.devices import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIGNALS = {'sigterm': signal.SIGTERM, 'sigint': signal.SIGINT,
           'sigkill': signal.SIGKILL}
PLATFORMS = ('off-cloud', 'gce-cpu', 'gce-gpu')


@dataclasses.dataclass(frozen=True)
class Fault:
  """`kind` (sigterm, sigint, sigkill) to worker `worker` (0 is the chief)
  once the chief reports `after_steps` steps past where the launch resumed,
  or `time_budget`: that worker's --max_train_seconds runs out after 1 s
  of training, the others' not for a day. TensorFlow's platform detection
  says `platform`."""
  kind: str
  worker: int
  after_steps: int = 2
  platform: str = 'off-cloud'


@dataclasses.dataclass
class Outcome:
  """What a launch with a fault did."""
  fault: Fault
  addresses: list        # The workers' host:port.
  resumed_from: int      # The step the launch started at.
  exit_codes: list       # Per worker; -9 for a SIGKILL.
  last_lines: list       # Each worker's last stderr line.
  tracebacks: list       # Whether each worker's stderr holds a traceback.
  trained: list          # Each worker's 'Trained to step' line, or ''.
  reached: int           # The last step any worker reported.
  saved: int             # The newest checkpoint's step afterwards.
  stop_seconds: float    # From the fault until both workers had exited.
  faulted_at: float      # time.monotonic() at the fault.
  resume_seconds: float | None = None  # From it to the relaunch's 1st step.

  @property
  def steps_lost(self) -> int:
    return self.reached - self.saved


_PROGRESS_LINE = re.compile(r'(?:\S.*\] )?step (\d+)/\d+ ')


def ephemeral_ports() -> range:
  """The ports the kernel hands to outgoing connections and to bind(0)."""
  try:
    with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
      low, high = map(int, f.read().split())
  except (OSError, ValueError):
    low, high = 32768, 60999  # Linux's default.
  return range(low, high + 1)


def free_port() -> int:
  """A port free now and outside the ephemeral range: a port bind(0) gave
  could be handed to another process's outgoing connection (a gRPC
  channel) before the worker binds it ("Could not start gRPC server")."""
  ephemeral = ephemeral_ports()
  candidates = [p for p in range(10000, 65536) if p not in ephemeral]
  for port in random.SystemRandom().sample(candidates, 200):
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', port))
      except OSError:
        continue
      return port
  raise RuntimeError('No free port outside the ephemeral range.')


class Workers:
  """Two run.py workers on 127.0.0.1 (MultiWorkerMirroredStrategy from
  TF_CONFIG), their stderr read line by line as it comes, each line with
  the time it came."""

  def __init__(self, flags_, extra_flags=((), ()), env=None):
    self.addresses = [f'127.0.0.1:{free_port()}' for _ in range(2)]
    self.lines = [[], []]
    self.times = [[], []]
    self._wanted = threading.Condition()
    self.processes = []
    for index in range(2):
      worker_env = dict(
          os.environ, TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='',
          **(env or {}),
          TF_CONFIG=json.dumps({'cluster': {'worker': self.addresses},
                                'task': {'type': 'worker', 'index': index}}))
      self.processes.append(subprocess.Popen(
          [sys.executable, os.path.join(REPO, 'run.py'), *flags_,
           *extra_flags[index]], env=worker_env, cwd=REPO,
          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    self._readers = [threading.Thread(target=self._read, args=(i,))
                     for i in range(2)]
    for reader in self._readers:
      reader.start()

  def _read(self, index):
    for line in self.processes[index].stderr:
      with self._wanted:
        self.lines[index].append(line.rstrip('\n'))
        self.times[index].append(time.monotonic())
        self._wanted.notify_all()
    # stderr closed: the worker is exiting. Waiters look at its exit code,
    # which they would otherwise see only on a later line or their timeout.
    self.processes[index].wait()
    with self._wanted:
      self._wanted.notify_all()

  def steps(self, index) -> list:
    """(step, time) of each progress line of worker `index` (plain, or
    with absl's prefix under --verbosity=1)."""
    return [(int(match.group(1)), at)
            for line, at in zip(self.lines[index], self.times[index])
            for match in [_PROGRESS_LINE.match(line)] if match]

  def reached(self) -> int:
    return max([0] + [step for i in range(2) for step, _ in self.steps(i)])

  def wait_for_step(self, step, timeout=300):
    """Until the chief's progress line reports `step` or more."""
    def reached():
      return (any(s >= step for s, _ in self.steps(0)) or
              any(p.poll() is not None for p in self.processes))
    with self._wanted:
      assert self._wanted.wait_for(reached, timeout), self.stderr(0)[-3000:]
    assert all(p.poll() is None for p in self.processes), (
        'a worker ended before step %d:\n%s\n%s' % (
            step, self.stderr(0)[-2000:], self.stderr(1)[-2000:]))

  def first_step_time(self):
    """When the chief reported its first step (None if it never did)."""
    with self._wanted:
      self._wanted.wait_for(lambda: self.steps(0) or all(
          p.poll() is not None for p in self.processes), 300)
    steps = self.steps(0)
    return steps[0][1] if steps else None

  def stderr(self, index) -> str:
    return '\n'.join(self.lines[index])

  def finish(self, timeout=300) -> list:
    """Exit codes, once both have exited."""
    codes = [p.wait(timeout) for p in self.processes]
    for reader in self._readers:
      reader.join()
    return codes

  def kill(self):
    for process in self.processes:
      if process.poll() is None:
        process.kill()


class MetadataStandIn:
  """An HTTP server on 127.0.0.1 that answers as the GCE metadata server
  does (200 with `Metadata-Flavor: Google`; no maintenance event), so that
  TensorFlow's own platform detection says GCE. `address` is what
  GCE_METADATA_IP takes; `requests` lists the paths asked for."""

  def __init__(self):
    self.requests = []
    stand_in = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # pylint: disable=invalid-name
        stand_in.requests.append(self.path)
        body = (b'NONE' if self.path.endswith('maintenance-event')
                else b'stand-in')
        self.send_response(200)
        self.send_header('Metadata-Flavor', 'Google')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        pass

    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.address = f'127.0.0.1:{self._server.server_address[1]}'
    self._thread = threading.Thread(target=self._server.serve_forever,
                                    daemon=True)
    self._thread.start()

  def close(self):
    self._server.shutdown()
    self._server.server_close()


# Loaded by every Python process started with its folder on PYTHONPATH:
# TensorFlow's platform detection says GCE_GPU (what it says on a Google
# Cloud GPU VM) on a machine without a GPU.
_GCE_GPU_SITECUSTOMIZE = '''
import importlib.abc
import importlib.util
import sys

_NAME = 'tensorflow.python.distribute.failure_handling.failure_handling_util'


class _SayGceGpu(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name != _NAME:
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    load = spec.loader.exec_module

    def exec_module(module):
      load(module)
      module.on_gcp = lambda: True
      module.detect_platform = lambda: module.PlatformDevice.GCE_GPU
    spec.loader.exec_module = exec_module
    return spec


sys.meta_path.insert(0, _SayGceGpu())
'''


class Platforms:
  """The environment that makes TensorFlow's platform detection say each
  of PLATFORMS in a worker."""

  def __init__(self):
    self.metadata = MetadataStandIn()
    self._folder = tempfile.mkdtemp(prefix='gce-gpu-')
    with open(os.path.join(self._folder, 'sitecustomize.py'), 'w') as f:
      f.write(_GCE_GPU_SITECUSTOMIZE)

  def env(self, platform: str) -> dict:
    if platform == 'off-cloud':
      return {}
    env = {'GCE_METADATA_IP': self.metadata.address}
    if platform == 'gce-gpu':
      env['PYTHONPATH'] = os.pathsep.join(
          [self._folder] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    return env

  def close(self):
    self.metadata.close()
    shutil.rmtree(self._folder, ignore_errors=True)


def latest_step(model_dir) -> int:
  """The step of the newest checkpoint in `model_dir` (0: none)."""
  latest = tf.train.latest_checkpoint(str(model_dir))
  return int(latest.rsplit('-', 1)[1]) if latest else 0


def fingerprints(workers: Workers) -> list:
  """Each worker's last 'weights fingerprint' line's digest."""
  return [[line.split('weights fingerprint ')[1].rstrip('.')
           for line in workers.lines[i] if 'weights fingerprint' in line][-1:]
          for i in range(2)]


def launch_with_fault(flags_, model_dir, fault: Fault,
                      platforms: Platforms) -> tuple[Outcome, Workers]:
  """One launch of both workers, with `fault` once the chief reports
  `fault.after_steps` steps past where it resumed; returns when both have
  exited."""
  resumed_from = latest_step(model_dir)
  extra = [(), ()]
  if fault.kind == 'time_budget':
    # Both have a budget (the same hooks on every worker), which runs out
    # on the faulted worker's clock long before the other's.
    extra = [('--max_train_seconds=100000',)] * 2
    extra[fault.worker] = ('--max_train_seconds=1',)
  workers = Workers(flags_, extra, platforms.env(fault.platform))
  try:
    if fault.kind == 'time_budget':
      faulted = workers.first_step_time() or time.monotonic()
    else:
      workers.wait_for_step(resumed_from + fault.after_steps)
      faulted = time.monotonic()
      workers.processes[fault.worker].send_signal(SIGNALS[fault.kind])
    codes = workers.finish()
  finally:
    workers.kill()
  stopped = time.monotonic()
  return Outcome(
      fault=fault, addresses=workers.addresses, resumed_from=resumed_from,
      exit_codes=codes,
      last_lines=[(workers.lines[i] or [''])[-1] for i in range(2)],
      tracebacks=['Traceback' in workers.stderr(i) for i in range(2)],
      trained=[([l for l in workers.lines[i] if l.startswith('Trained to ')]
                or [''])[-1] for i in range(2)],
      reached=workers.reached(), saved=latest_step(model_dir),
      stop_seconds=stopped - faulted, faulted_at=faulted), workers


def expected_lines(outcome: Outcome, model_dir) -> tuple[list, list]:
  """The last line each worker should print after `outcome.fault`, and
  the exit codes (None: any line)."""
  fault = outcome.fault
  names = [f'worker {i} ({address})'
           for i, address in enumerate(outcome.addresses)]
  if fault.kind in ('sigterm', 'sigint'):
    name = SIGNALS[fault.kind].name
    sender = names[fault.worker]
    line = (f'warning: {sender[0].upper()}{sender[1:]} received {name}: '
            f'every worker stopped at step {outcome.saved}, checkpointed in '
            f'{model_dir}; launch all workers again with the same command '
            'to resume.')
    return [line, line], [128 + SIGNALS[fault.kind]] * 2
  if fault.kind == 'sigkill':
    survivor = 1 - fault.worker
    lines = [None, None]
    lines[survivor] = re.compile(
        re.escape(f'run.py: error: Lost {names[fault.worker]} during '
                  'training (') + r'\w+Error' + re.escape(
                      '); this worker stops too. Launch all workers again '
                      'with the same command: they resume from '
                      f'{model_dir}/ckpt-{outcome.saved}.'))
    codes = [None, None]
    codes[survivor] = distribute.WORKER_LOST_EXIT_CODE
    codes[fault.worker] = -signal.SIGKILL
    return lines, codes
  # A time budget ends the run as its last step would, on both workers.
  return [None, None], [0, 0]


def check(outcome: Outcome, model_dir) -> list:
  """What went wrong with `outcome` against what its fault should do; empty
  when all is as documented."""
  problems = []
  lines, codes = expected_lines(outcome, model_dir)
  if outcome.exit_codes != codes:
    problems.append(f'exit codes {outcome.exit_codes}, expected {codes}')
  for index, (line, expected) in enumerate(zip(outcome.last_lines, lines)):
    if expected is None:
      continue
    matched = (expected.fullmatch(line) if isinstance(expected, re.Pattern)
               else line == expected)
    if not matched:
      problems.append(f'worker {index} ended with {line!r}')
  survivors = ([1 - outcome.fault.worker] if outcome.fault.kind == 'sigkill'
               else [0, 1])
  for index in survivors:
    if outcome.tracebacks[index]:
      problems.append(f'worker {index} printed a traceback')
  if outcome.fault.kind != 'sigkill' and outcome.steps_lost:
    problems.append(f'{outcome.steps_lost} steps lost')
  if outcome.fault.kind == 'time_budget':
    trained = f'Trained to step {outcome.saved}; weights fingerprint '
    if not all(line.startswith(trained) for line in outcome.trained) or (
        outcome.trained[0] != outcome.trained[1]):
      problems.append(f'the workers ended with {outcome.trained}, expected '
                      f'both {trained!r} and the same weights')
  return problems


def campaign(flags_, model_dir, faults, log=print) -> tuple[list, Workers]:
  """Runs each of `faults` in a launch of its own, then one launch to the
  end; returns the outcomes and the last launch's Workers."""
  outcomes = []
  platforms = Platforms()

  def resumed(workers):
    first = workers.first_step_time()
    if outcomes and first is not None:
      outcomes[-1].resume_seconds = first - outcomes[-1].faulted_at

  try:
    for fault in faults:
      outcome, workers = launch_with_fault(flags_, model_dir, fault,
                                           platforms)
      resumed(workers)
      outcomes.append(outcome)
      log(f'{fault}: exit codes {outcome.exit_codes}, reached step '
          f'{outcome.reached}, saved {outcome.saved}, both stopped '
          f'{outcome.stop_seconds:.1f} s after it')
      for problem in check(outcome, model_dir):
        log(f'  problem: {problem}')
    last = Workers(flags_)
    try:
      resumed(last)
      codes = last.finish()
    finally:
      last.kill()
    log(f'final launch: exit codes {codes}')
    return outcomes, last
  finally:
    platforms.close()


# --- The benchmark ----------------------------------------------------------

CAMPAIGN_FLAGS = flags.FlagValues()
flags.DEFINE_integer('faults', 24, 'Faults to draw.',
                     flag_values=CAMPAIGN_FLAGS)
flags.DEFINE_integer('seed', 0, 'Seeds the draw.', flag_values=CAMPAIGN_FLAGS)
flags.DEFINE_string('output', None, 'JSON file for the results.',
                    flag_values=CAMPAIGN_FLAGS)
flags.DEFINE_string('workdir', None, 'Where the runs go (default: a '
                    'temporary folder).', flag_values=CAMPAIGN_FLAGS)


def tiny_flags(data_folder, model_dir, train_steps) -> list:
  """A tiny deterministic float32 run, one step per loop call."""
  return ['--mode=train', f'--dataset=folder:{data_folder}',
          '--image_size=16', '--resnet_depth=18', '--width_multiplier=0.125',
          '--train_batch_size=8', '--eval_batch_size=4',
          f'--train_steps={train_steps}', '--checkpoint_steps=4',
          '--knn=false', '--steps_per_loop=1', '--log_every_seconds=0',
          '--deterministic', '--mixed_precision=float32',
          f'--model_dir={model_dir}']


def draw(count: int, seed: int) -> list:
  chooser = random.Random(seed)
  kinds = ['sigterm', 'sigkill', 'sigkill', 'sigint', 'time_budget']
  return [Fault(kind=chooser.choice(kinds), worker=chooser.randrange(2),
                after_steps=chooser.randint(1, 6),
                platform=chooser.choice(PLATFORMS)) for _ in range(count)]


def write_images(folder, classes=2, per_class=8, size=16, seed=0):
  """A tiny image folder of random PNGs."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for label in range(classes):
    os.makedirs(os.path.join(folder, f'class_{label}'), exist_ok=True)
    for index in range(per_class):
      Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
          os.path.join(folder, f'class_{label}', f'{index}.png'))
  return folder


def summarize(outcomes, problems) -> dict:
  """Faults of each kind survived, steps lost and times, per kind;
  `problems[i]` is what `check` found wrong with `outcomes[i]`."""
  by_kind = {}
  for outcome, wrong in zip(outcomes, problems):
    entry = by_kind.setdefault(outcome.fault.kind, {
        'faults': 0, 'as_documented': 0, 'steps_lost': [],
        'stop_seconds': [], 'resume_seconds': []})
    entry['faults'] += 1
    entry['as_documented'] += not wrong
    entry['steps_lost'].append(outcome.steps_lost)
    entry['stop_seconds'].append(round(outcome.stop_seconds, 1))
    if outcome.resume_seconds is not None:
      entry['resume_seconds'].append(round(outcome.resume_seconds, 1))
  return by_kind


def _parse(argv):
  """This benchmark's own flags (none of absl's global FLAGS, which run.py
  defines too); absl.app wants those parsed all the same."""
  flags.FLAGS(argv[:1])
  return CAMPAIGN_FLAGS(argv)


def main(argv):
  del argv
  count = CAMPAIGN_FLAGS.faults
  workdir = CAMPAIGN_FLAGS.workdir or tempfile.mkdtemp(prefix='campaign-')
  images = write_images(os.path.join(workdir, 'images'))
  # Steps enough for every fault to land a few steps past its resume point.
  steps = 8 * count + 16
  reference_dir = os.path.join(workdir, 'uninterrupted')
  started = time.monotonic()
  reference = Workers(tiny_flags(images, reference_dir, steps))
  assert reference.finish() == [0, 0], reference.stderr(0)[-3000:]
  expected = fingerprints(reference)[0]
  faults = draw(count, CAMPAIGN_FLAGS.seed)
  model_dir = os.path.join(workdir, 'faulted')
  outcomes, last = campaign(tiny_flags(images, model_dir, steps), model_dir,
                            faults, log=lambda line: print(line, flush=True))
  final = fingerprints(last)
  problems = [check(outcome, model_dir) for outcome in outcomes]
  result = {
      'machine': machine.description(), 'date': time.strftime('%Y-%m-%d'),
      'faults': count, 'seed': CAMPAIGN_FLAGS.seed, 'train_steps': steps,
      'identical_to_uninterrupted': final == [expected, expected],
      'fingerprints': {'uninterrupted': expected, 'after_faults': final},
      'by_kind': summarize(outcomes, problems),
      'by_platform': {platform: sum(o.fault.platform == platform
                                    for o in outcomes)
                      for platform in PLATFORMS},
      'problems': {str(outcome.fault): wrong
                   for outcome, wrong in zip(outcomes, problems) if wrong},
      'minutes': round((time.monotonic() - started) / 60, 1)}
  print(json.dumps(result, indent=1))
  if CAMPAIGN_FLAGS.output:
    with open(CAMPAIGN_FLAGS.output, 'w') as f:
      json.dump(result, f, indent=1)
      f.write('\n')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse)
