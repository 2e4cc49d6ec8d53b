"""Encoder features on disk as shards: what `extract` writes and the probes stream.

  OUT/extraction.json    what is extracted: run, step, weights, dataset, split, shard plan
  OUT/shard-00000.npz    examples [0, S): {feature: [n, ...], 'labels': [n]} (uncompressed)
  OUT/shard-00001.npz    examples [S, 2S) ...
  OUT/index.json         written last, once every shard exists: the shards and their sizes

Reading them back:

  features = bigbigan_jax.feature_store.load("OUT")          # {key: [N, ...]}, small splits
  for shard in bigbigan_jax.feature_store.iterate("OUT"): ... # one shard in memory at a time

A shard is written whole (a local rename or one cloud object), so a killed extraction keeps
every finished shard and a rerun writes only the missing ones. `Source` feeds shards (or arrays
held in memory) to the probes in batches, split between the processes of a run.
"""

import json
import math
import os

import numpy as np

from bigbigan_jax import paths
from bigbigan_jax.errors import UserError

PLAN = "extraction.json"
INDEX = "index.json"
# Target size of one shard: bounds the host memory of extraction and of the probes.
SHARD_BYTES = 128 << 20


def shard_name(index: int) -> str:
  return f"shard-{index:05d}.npz"


def shard_examples_for(bytes_per_example: int, batch_size: int,
                       target_bytes: int = SHARD_BYTES) -> int:
  """Examples per shard: a multiple of `batch_size` near `target_bytes` (at least one batch)."""
  batches = max(1, target_bytes // max(1, bytes_per_example * batch_size))
  return int(batches * batch_size)


def plan_shards(count: int, shard_examples: int) -> list:
  """[(start, stop)] of each shard of a split of `count` examples."""
  return [(s, min(s + shard_examples, count)) for s in range(0, count, shard_examples)]


def write_shard(out, index: int, arrays: dict):
  """Writes one shard whole: to a temporary file renamed into place on a local disk; as one
  object upload (complete or absent) in cloud storage."""
  p = paths.path(out) / shard_name(index)
  p.parent.mkdir(parents=True, exist_ok=True)
  target = p if not paths.is_local(p) else p.parent / f"{p.name}.{os.getpid()}.tmp"
  with target.open("wb") as f:
    np.savez(f, **arrays)
  if target != p:
    target.replace(p)


def read_shard(out, index_or_name, keys=None) -> dict:
  name = index_or_name if isinstance(index_or_name, str) else shard_name(index_or_name)
  p = paths.path(out) / name
  # Only the arrays asked for are read: a .npz is a zip, whose members a seekable file (a local
  # one, or a cloud object opened for reading) gives one by one.
  with p.open("rb") as f, np.load(f) as data:
    return {k: data[k] for k in (keys or data.files)}


def existing_shards(out) -> set:
  """Indices of the shards already written under `out`."""
  out = paths.path(out)
  if not out.exists():
    return set()
  return {int(p.name[6:-4]) for p in out.iterdir()
          if p.name.startswith("shard-") and p.name.endswith(".npz")}


def planned(out) -> dict:
  """The plan an earlier extraction into `out` recorded ({} if none)."""
  p = paths.path(out) / PLAN
  return json.loads(p.read_text()) if p.exists() else {}


def check_plan(out, plan: dict, *, write: bool = True):
  """Records what `out` holds on its first use (if `write`: one process of a run writes it); a
  rerun must extract the same thing."""
  old = planned(out)
  if old:
    if old != plan:
      diff = next(k for k in sorted(set(plan) | set(old)) if old.get(k) != plan.get(k))
      raise UserError(f"{out} holds features with {diff}={old.get(diff)!r}, not "
                      f"{plan.get(diff)!r}: pass a new --out, or delete it to start over")
  elif write:
    paths.write_text(paths.path(out) / PLAN, json.dumps(plan, indent=1))


def write_index(out, plan: dict, shards: list):
  """The index of a complete extraction: `plan` plus [{file, start, count}] of every shard."""
  index = dict(plan, shards=[{"file": shard_name(i), "start": start, "count": stop - start}
                             for i, (start, stop) in enumerate(shards)],
               count=sum(stop - start for start, stop in shards))
  paths.write_text(paths.path(out) / INDEX, json.dumps(index, indent=1))


def read_index(out) -> dict:
  p = paths.path(out) / INDEX
  if not p.exists():
    hint = ("the extraction has not finished: rerun the same extract command"
            if (paths.path(out) / PLAN).exists() else "run `python -m bigbigan_jax.extract` first")
    raise UserError(f"no {INDEX} in {out}: {hint}")
  return json.loads(p.read_text())


def iterate(out, keys=None):
  """Yields the shards of a finished extraction in order, one in memory at a time."""
  for shard in read_index(out)["shards"]:
    yield read_shard(out, shard["file"], keys)


def load(out, keys=None) -> dict:
  """All the features of a finished extraction, {key: [N, ...]}, in the split's order."""
  parts = list(iterate(out, keys))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Source:
  """Labelled features, as shards on disk (`from_dir`) or arrays in memory (`from_arrays`),
  read in batches by the probes with a bounded amount in host memory (about two shards).

  With several processes, process p reads the p-th of P contiguous, equal (to a row) parts of
  the rows, from the shards that hold them; every process yields the same number of batches of
  its `local_batch` rows.
  """

  def __init__(self, counts, loader, dims, index=None):
    self.counts, self._load, self.dims = list(counts), loader, dims
    self.count = sum(self.counts)
    self.index = index  # what `extract` recorded (from_dir), else None

  @classmethod
  def from_dir(cls, out):
    index = read_index(out)
    return cls([s["count"] for s in index["shards"]],
               lambda i, keys: read_shard(out, index["shards"][i]["file"], keys),
               {k: (v[0] if v else None) for k, v in index["shapes"].items()}, index)

  @classmethod
  def of(cls, split):
    """A split's features as a Source: a Source as it is, or {key: [N, ...]} arrays."""
    return split if isinstance(split, cls) else cls.from_arrays(split)

  @classmethod
  def from_arrays(cls, arrays: dict, shard_examples: int = 1 << 16):
    n = len(arrays["labels"])
    bounds = plan_shards(n, shard_examples) or [(0, 0)]
    return cls([b - a for a, b in bounds],
               lambda i, keys: {k: arrays[k][bounds[i][0]:bounds[i][1]] for k in keys},
               {k: (v.shape[1] if v.ndim > 1 else None) for k, v in arrays.items()})

  def _pieces(self, process_index, process_count) -> list:
    """This process's rows as [(shard, first row, end row)] in the split's order."""
    start = self.count * process_index // process_count
    stop = self.count * (process_index + 1) // process_count
    pieces, offset = [], 0
    for i, n in enumerate(self.counts):
      first, end = max(start, offset), min(stop, offset + n)
      if first < end:
        pieces.append((i, first - offset, end - offset))
      offset += n
    return pieces

  def rows_per_process(self, process_count=1) -> list:
    """How many examples each of `process_count` processes reads."""
    return [self.count * (p + 1) // process_count - self.count * p // process_count
            for p in range(process_count)]

  def ordered(self, key, local_batch, *, process_index=0, process_count=1):
    """Every example once: yields (x [b, D] float32, labels [b] int32, mask [b] bool), padded."""
    num_batches = max(math.ceil(r / local_batch) for r in self.rows_per_process(process_count))
    batches = self._batches(key, local_batch, self._pieces(process_index, process_count), None)
    for _ in range(num_batches):
      yield next(batches, None) or self._padding(key, local_batch)

  def shuffled(self, key, local_batch, *, seed, process_index=0, process_count=1):
    """One epoch in an order drawn from `seed`: the shards in a random order, the rows of each
    shuffled together with the few left over from the one before; full batches only."""
    rng = np.random.default_rng(seed)
    pieces = self._pieces(process_index, process_count)
    pieces = [pieces[i] for i in rng.permutation(len(pieces))]
    steps = min(r // local_batch for r in self.rows_per_process(process_count))
    batches = self._batches(key, local_batch, pieces, rng)
    for _ in range(steps):
      yield next(batches)

  def _padding(self, key, local_batch):
    return (np.zeros((local_batch, self.dims[key]), np.float32),
            np.zeros((local_batch,), np.int32), np.zeros((local_batch,), bool))

  def _batches(self, key, local_batch, pieces, rng):
    x, y = np.zeros((0, self.dims[key]), np.float32), np.zeros((0,), np.int32)
    full = np.ones((local_batch,), bool)
    for i, first, end in pieces:
      shard = self._load(i, (key, "labels"))
      x = np.concatenate([x, np.asarray(shard.pop(key)[first:end], np.float32)])
      y = np.concatenate([y, np.asarray(shard.pop("labels")[first:end], np.int32)])
      order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
      batches = len(x) // local_batch - (rng is not None)  # shuffling keeps some to mix
      for b in range(max(batches, 0)):
        rows = order[b * local_batch:(b + 1) * local_batch]
        yield x[rows], y[rows], full
      rest = order[max(batches, 0) * local_batch:]
      x, y = x[rest], y[rest]
    for b in range(len(x) // local_batch):
      rows = slice(b * local_batch, (b + 1) * local_batch)
      yield x[rows], y[rows], full
    done = len(x) // local_batch * local_batch
    x, y = x[done:], y[done:]
    if len(x) and rng is None:
      pad = local_batch - len(x)
      yield (np.pad(x, ((0, pad), (0, 0))), np.pad(y, (0, pad)),
             np.arange(local_batch) < len(x))
