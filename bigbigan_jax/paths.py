"""Paths the user gives, on a local disk or in cloud storage (gs://BUCKET/...), through
`etils.epath`, the path layer orbax and TFDS use too.

Cloud objects cannot be appended to or renamed atomically; the helpers here write whole files
instead (an object appears complete or not at all), and use append and rename on local disks.
"""

import json
import threading

from etils import epath


def path(p) -> epath.Path:
  """`p` as an epath.Path; a relative local path is made absolute (orbax requires it)."""
  out = epath.Path(p)
  return out if not is_local(out) else out.resolve()


def is_local(p) -> bool:
  return "://" not in str(p)


def write_text(p, text: str):
  """Writes `text` (UTF-8) to `p` as `write_bytes` does."""
  write_bytes(p, text.encode())


def write_bytes(p, data: bytes):
  """Writes `data` to `p` so that a reader sees the old or the new file, never a part."""
  p = path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(p):
    p.write_bytes(data)  # an object upload is all-or-nothing
    return
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_bytes(data)
  tmp.replace(p)


def read_jsonl(p) -> list:
  """The JSON objects of a JSON-lines file ([] if it does not exist)."""
  p = path(p)
  if not p.exists():
    return []
  return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def append_jsonl(p, records):
  """Appends JSON objects as lines: in place on a local disk; in cloud storage by rewriting the
  whole object (small files: metrics and evaluation logs)."""
  p = path(p)
  text = "".join(json.dumps(r) + "\n" for r in records)
  if is_local(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
      f.write(text)
  else:
    old = p.read_text() if p.exists() else ""
    write_text(p, old + text)


def files_under(root):
  """Every file under `root`, recursively (cloud storage has no recursive glob in epath)."""
  for entry in path(root).iterdir():
    if entry.is_dir():
      yield from files_under(entry)
    else:
      yield entry


def move_dir(src, dst):
  """Moves a directory: a rename on a local disk; a copy of every object, then a delete, in
  cloud storage (which has no directories to rename)."""
  src, dst = path(src), path(dst)
  if is_local(src):
    src.rename(dst)
    return
  for item in files_under(src):
    target = dst / str(item)[len(str(src)) + 1:]
    target.parent.mkdir(parents=True, exist_ok=True)
    item.copy(target)
  src.rmtree()


def check_reachable(p, timeout_s: float = 20.0):
  """For a cloud path, raises a one-line UserError if its storage does not answer within
  `timeout_s` seconds or refuses access (instead of the storage clients' minutes of retries)."""
  from bigbigan_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  p = path(p)
  if is_local(p):
    return
  outcome = {}

  def probe():
    try:
      outcome["exists"] = p.exists()
    except Exception as e:  # pylint: disable=broad-except  any client error ends in one line
      outcome["error"] = e

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if "error" in outcome:
    e = outcome["error"]
    cause = " ".join(str(e).split())[:200]
    raise UserError(f"cannot reach {p} ({type(e).__name__}: {cause}): check the bucket name, "
                    "the credentials and the network")
  if "exists" not in outcome:
    raise UserError(f"no answer from the storage of {p} in {timeout_s:.0f} s: check the bucket "
                    "name, the credentials and the network")
