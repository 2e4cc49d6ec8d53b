"""The processes of a multi-host run watch each other: a dead or frozen one ends the run in one line.

Every process publishes a counter in the coordination service's key-value store every
`BEAT_S` seconds (from a thread, so a long compilation, evaluation or save does not stop it) and
reads the others'. A process whose counter has not moved for `--heartbeat_timeout_s` seconds
(killed, frozen by SIGSTOP, its host gone), or a coordination service that stopped answering
(process 0 dead or frozen), ends every other process with `exit_lost_contact`'s one line.

JAX's own heartbeat would notice too, but it aborts the process with a C++ stack dump (and its
client's error callback cannot be used from Python: it crashes converting the status), so it is
left as a backstop with a longer timeout (`backstop_s`). Where JAX's runtime ends the process
first anyway (it does at once when process 0 dies: its client loses the coordination service),
`guard_stderr`'s filter turns what the runtime prints into the same one line.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

# Seconds a process may go silent before the others stop: a killed or frozen peer ends the run
# within about this long (plus one beat), while a slow step never does.
HEARTBEAT_TIMEOUT_S = 20
BEAT_S = 1.0
_PREFIX = "bigbigan_jax/alive/"
_LOST_CONTACT = threading.Lock()
# What JAX's runtime writes when its coordination service reports a lost process, before it
# ends this one (LOG(QFATAL), or an abort and its stack dump).
_RUNTIME_SIGNS = ("coordination_service", "preemption_sync_manager",
                  "distributed service detected fatal errors")
_filter = None  # the process `guard_stderr` started


def backstop_s(timeout_s: int) -> int:
  """The heartbeat timeout given to JAX's coordination service: long after the watchdog's."""
  return max(100, 3 * timeout_s)


def lost_contact_line(process_id: int, num_processes: int, why: str, workdir=None) -> str:
  """The one line that ends a process whose peer died or froze: the problem, the fix and the
  step the run will resume from."""
  resume = "the newest complete checkpoint"
  try:
    from bigbigan_jax import paths  # pylint: disable=g-import-not-at-top
    directory = paths.path(workdir) / "checkpoints" if workdir else None
    steps = ([int(p.name) for p in directory.iterdir() if p.name.isdigit()]
             if directory is not None and directory.is_dir() else [])
    resume = f"step {max(steps)}" if steps else "step 0 (no checkpoint yet)"
  except Exception:  # pylint: disable=broad-except  the line matters more than the step
    pass
  return (f"error: process {process_id} of {num_processes} lost contact with another process of "
          f"this run, which died or stopped responding ({' '.join(why.split())[:300]}); rerun the "
          f"same command on all hosts to resume from the last complete checkpoint, {resume}")


def exit_lost_contact(cause, workdir=None):
  """Ends a multi-process run whose peer died or froze: `lost_contact_line`, then `os._exit(1)`
  at once. (A normal exit would first wait at JAX's shutdown barrier for the lost process, then
  abort with a stack dump.) Complete checkpoints are safe: saves are atomic, and an interrupted
  one is set aside when the run is resumed. Any thread may call it; the first caller speaks, the
  others wait for the exit."""
  if not _LOST_CONTACT.acquire(blocking=False):
    threading.Event().wait()
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  state = distributed.global_state
  why = f"{type(cause).__name__}: {cause}" if isinstance(cause, Exception) else str(cause)
  print(lost_contact_line(state.process_id, state.num_processes, why, workdir), file=sys.stderr,
        flush=True)
  sys.stdout.flush()
  if _filter is not None:  # let it pass the line on before this process ends
    os.close(2)
    try:
      _filter.wait(timeout=5)
    except subprocess.TimeoutExpired:
      pass
  os._exit(1)  # pylint: disable=protected-access


def guard_stderr(process_id: int, num_processes: int, workdir=None):
  """Sends this process's stderr (file descriptor 2, so the runtime's C++ lines too) through a
  small filter process (`_filter_lines`) that replaces the runtime's report of a lost process,
  and anything after it, with `lost_contact_line`."""
  global _filter
  read, write = os.pipe()
  _filter = subprocess.Popen(
      [sys.executable, "-m", "bigbigan_jax.peers", str(process_id), str(num_processes),
       str(workdir or "")], stdin=read, stdout=sys.stderr.fileno())
  sys.stderr.flush()
  os.dup2(write, 2)
  os.close(write)
  os.close(read)


def _pieces(stream):
  """The bytes of `stream` as they come, cut after each newline or carriage return (a progress
  bar redraws itself after a carriage return and would otherwise wait for the next newline)."""
  pending = b""
  while chunk := stream.read(1 << 16):
    pending += chunk
    cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
    if cut:
      yield from re.split(rb"(?<=[\r\n])", pending[:cut])[:-1]
      pending = pending[cut:]
  if pending:
    yield pending


def _filter_lines(process_id: int, num_processes: int, workdir: str):
  """Copies stdin to stdout until a line of `_RUNTIME_SIGNS`; from there on only `error:` lines,
  and at the end `lost_contact_line` unless the process said it itself."""
  # A Ctrl-C or a scheduler's SIGTERM reaches the whole process group; the filter ends when its
  # process does (end of input).
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  lost, said = None, False
  for line in _pieces(sys.stdin.buffer.raw):
    text = line.decode(errors="replace")
    if any(sign in text for sign in _RUNTIME_SIGNS) and (lost is None or "fatal" in text):
      lost = text.split("] ", 1)[-1]  # without the log prefix (severity, time, thread, file)
    if text.startswith("error: process"):
      said = True
    if lost is None or text.startswith("error:"):
      sys.stdout.buffer.write(line)
      sys.stdout.flush()
  if lost is not None and not said:
    print(lost_contact_line(process_id, num_processes, f"JAX's runtime: {lost}", workdir or None),
          flush=True)


class Watchdog:
  """Publishes this process's heartbeat and ends the run when a peer's stops (see the module
  docstring). `stop()` before a normal exit: the others then stop watching this process."""

  def __init__(self, client, process_id: int, num_processes: int, timeout_s: float, workdir=None,
               beat_s: float = BEAT_S):
    self.client, self.process_id, self.timeout_s = client, process_id, timeout_s
    self.peers = [p for p in range(num_processes) if p != process_id]
    self.workdir, self.beat_s = workdir, beat_s
    now = time.monotonic()
    self.contact = now  # the last time the store answered
    self.seen = {p: (None, now) for p in self.peers}  # peer: (its counter, when it last moved)
    self._stop = threading.Event()
    threading.Thread(target=self._beat, daemon=True, name="peers-beat").start()
    threading.Thread(target=self._watch, daemon=True, name="peers-watch").start()

  def _beat(self):
    """Publishes the counter and reads the peers' (RPCs that may block: the store is in process
    0, which may be frozen; `_watch` keeps the time)."""
    count = 0
    while not self._stop.is_set():
      count += 1
      try:
        self.client.key_value_set(f"{_PREFIX}{self.process_id}", str(count), allow_overwrite=True)
        published = dict(self.client.key_value_dir_get(_PREFIX))
      except Exception:  # pylint: disable=broad-except  unreachable: `_watch` decides when to stop
        self._stop.wait(self.beat_s)
        continue
      now = time.monotonic()
      self.contact = now
      for peer in self.peers:
        value = published.get(f"{_PREFIX}{peer}")
        if value == "done":  # ended normally: no longer watched
          self.seen[peer] = (value, float("inf"))
        elif value != self.seen[peer][0]:
          self.seen[peer] = (value, now)
      self._stop.wait(self.beat_s)

  def _watch(self):
    while not self._stop.wait(self.beat_s / 2):
      now = time.monotonic()
      if now - self.contact > self.timeout_s:
        exit_lost_contact(f"the coordination service (in process 0) has not answered for "
                          f"{now - self.contact:.0f} s", self.workdir)
      for peer, (_, moved) in self.seen.items():
        if now - moved > self.timeout_s:
          exit_lost_contact(f"process {peer} sent no heartbeat for {now - moved:.0f} s",
                            self.workdir)

  def stop(self):
    """Stops watching and tells the peers that this process ends normally."""
    self._stop.set()
    try:
      self.client.key_value_set(f"{_PREFIX}{self.process_id}", "done", allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  the run is over anyway
      pass


if __name__ == "__main__":
  _filter_lines(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
