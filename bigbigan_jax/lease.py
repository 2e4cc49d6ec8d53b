"""One run per workdir: a lease file that the running job's process 0 holds and refreshes.

`WORKDIR/lease.json` = {holder, host, pid, started, heartbeat} (times in seconds since the
epoch). It is created only if absent (an exclusive create on a local disk; a create with the
precondition "no such object" in cloud storage), taken over by one starter at a time (an
exclusive takeover marker and a rename; a generation precondition in cloud storage), refreshed
every `HEARTBEAT_S` seconds, and removed when the run ends. A second run on a live lease stops
with a one-line error naming the holder; a lease whose heartbeat is older than `STALE_S`
seconds, or whose process is gone from this host, is taken over with a warning (the holder was
killed or its machine lost).
"""

import json
import os
import socket
import threading
import time
import uuid

from bigbigan_jax import paths
from bigbigan_jax.errors import UserError

NAME = "lease.json"
HEARTBEAT_S = 30.0
STALE_S = 120.0


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _gcs_blob(path):
  from google.cloud import storage  # pylint: disable=g-import-not-at-top  (gs:// only)
  bucket, _, name = str(path).removeprefix("gs://").partition("/")
  return storage.Client().bucket(bucket).blob(name)


class Lease:
  """The lease of `workdir`; `acquire()` takes it (or raises UserError), `release()` gives it
  back."""

  def __init__(self, workdir, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
    self.path = paths.path(workdir) / NAME
    self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
    now = time.time()
    self.record = {"holder": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                   "started": now, "heartbeat": now}
    self._stop = threading.Event()
    self._thread = None
    self.lost = None  # why this run no longer holds the lease (another run took it over)

  def _create(self, text: str, replace_generation=None) -> bool:
    """Writes the lease if absent (or if it is still the stale one read); False if another run
    got there first."""
    if paths.is_local(self.path):
      if replace_generation is not None:
        return self._take_over_local(text, replace_generation)
      try:
        fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    if str(self.path).startswith("gs://"):
      from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
      try:
        _gcs_blob(self.path).upload_from_string(
            text, if_generation_match=replace_generation or 0)
        return True
      except exceptions.PreconditionFailed:
        return False
    if self.path.exists() and replace_generation is None:  # other stores: best effort
      return False
    paths.write_text(self.path, text)
    return True

  def _take_over_local(self, text: str, stale_text: str) -> bool:
    """Replaces the stale lease `stale_text` by `text` unless another starter is taking it over
    too: only the one that creates `lease.json.takeover` (exclusively) may, and only if the lease
    is still `stale_text`; the new lease appears at once, whole (a rename)."""
    marker = f"{self.path}.takeover"
    try:
      os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
      try:  # left by a starter that died while taking over
        if time.time() - os.path.getmtime(marker) > self.stale_s:
          os.unlink(marker)
      except OSError:
        pass
      return False
    try:
      if self._read()[1] != stale_text:
        return False  # taken over or released meanwhile
      staged = f"{self.path}.{self.record['holder']}"
      paths.write_text(staged, text)
      os.replace(staged, str(self.path))
      return True
    finally:
      os.unlink(marker)

  def _read(self):
    """(record, generation) of the current lease, or (None, None)."""
    if str(self.path).startswith("gs://"):
      blob = _gcs_blob(self.path)
      try:
        blob.reload()
        return json.loads(blob.download_as_text()), blob.generation
      except Exception:  # pylint: disable=broad-except  absent or unreadable
        return None, None
    try:
      text = self.path.read_text()  # on a local disk the text is the generation
      return json.loads(text), text
    except (OSError, ValueError):
      return None, None

  def acquire(self):
    """Takes the lease; raises UserError naming the holder of a live one."""
    text = json.dumps(self.record)
    for _ in range(3):
      if self._create(text):
        break
      held, generation = self._read()
      if held is None:
        continue  # released meanwhile: try again
      age = time.time() - float(held.get("heartbeat", 0))
      gone = held.get("host") == self.record["host"] and not _alive(int(held.get("pid", -1)))
      if age < self.stale_s and not gone:
        raise UserError(
            f"{self.path.parent} is in use by another run (pid {held.get('pid')} on "
            f"{held.get('host')}, heartbeat {age:.0f} s ago): wait for it to end or stop it, or "
            "pass another --workdir")
      why = "its process is gone" if gone else f"no heartbeat for {age:.0f} s"
      if self._create(text, replace_generation=generation):
        print(f"warning: took over the lease of {self.path.parent} from pid {held.get('pid')} "
              f"on {held.get('host')} ({why})", flush=True)
        break
    else:
      raise UserError(f"could not take the lease {self.path}: another run is starting on the "
                      "same --workdir")
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      held, generation = self._read()
      if held is None or held.get("holder") != self.record["holder"]:
        self.lost = (f"another run took over the lease of {self.path.parent} (pid "
                     f"{(held or {}).get('pid')} on {(held or {}).get('host')})")
        return
      self.record["heartbeat"] = time.time()
      try:
        if str(self.path).startswith("gs://"):  # only over our own object
          if not self._create(json.dumps(self.record), replace_generation=generation):
            continue  # changed meanwhile: the next beat reads who holds it
        else:
          paths.write_text(self.path, json.dumps(self.record))
      except Exception:  # pylint: disable=broad-except  the next beat tries again
        pass

  def check(self):
    """Raises UserError if another run has taken the lease over (this run must stop)."""
    if self.lost:
      raise UserError(f"{self.lost}: stopping; both runs must not write the same --workdir")

  def release(self):
    """Stops the heartbeat and removes the lease if this run still holds it."""
    self._stop.set()
    if self._thread is None:
      return
    self._thread.join(timeout=10)
    held, _ = self._read()
    if held is not None and held.get("holder") == self.record["holder"]:
      try:
        self.path.unlink()
      except OSError:
        pass
