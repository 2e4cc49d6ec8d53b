"""Checkpoints with orbax: the whole training state, the data iterator's position and the config.

Layout: `WORKDIR/checkpoints/<step>/{state,data,config}`. Saves are asynchronous (training
continues while arrays are written) and atomic: orbax writes `<step>.orbax-checkpoint-tmp/` and
renames it to `<step>/` only when every item is complete, so a crash (even SIGKILL in the middle
of a save) never leaves a half-written step that restore would load. A training run that finds
such a leftover temporary directory moves it to `checkpoints_unreadable/`, says so, and resumes
from the newest complete step (tested in tests/test_reliability.py).
"""

import collections
import errno
import hashlib
import json
import re
import shutil
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from bigbigan_jax import errors
from bigbigan_jax import paths
from bigbigan_jax.errors import UserError

# Written into a step's directory once orbax has written its items: the SHA-256 of every file
# but orbax's own bookkeeping, which it updates afterwards.
CHECKSUMS = "checksums.json"
_UNCHECKED = (CHECKSUMS, "_CHECKPOINT_METADATA", "commit_success.txt")
# orbax's name for a step that is still being written (or whose save was interrupted).
_INCOMPLETE = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def file_digests(step_dir) -> dict:
  """{path relative to `step_dir`: SHA-256} of every file of a saved step (but _UNCHECKED)."""
  step_dir = paths.path(step_dir)
  prefix = len(str(step_dir).rstrip("/")) + 1
  out = {}
  for f in sorted(paths.files_under(step_dir), key=str):
    if f.name in _UNCHECKED:
      continue
    digest = hashlib.sha256()
    with f.open("rb") as stream:
      for chunk in iter(lambda: stream.read(1 << 22), b""):
        digest.update(chunk)
    out[str(f)[prefix:]] = digest.hexdigest()
  return out


def verify(step_dir) -> list:
  """The files of a saved step whose bytes differ from its CHECKSUMS ([] if all match; a step
  saved without checksums, by an older version, is not checked)."""
  record = paths.path(step_dir) / CHECKSUMS
  if not record.exists():
    return []
  expected = json.loads(record.read_text())["sha256"]
  actual = file_digests(step_dir)
  return sorted(name for name in set(expected) | set(actual)
                if expected.get(name) != actual.get(name))


def checkpoint_dir(workdir):
  """WORKDIR/checkpoints as an epath.Path (local or cloud storage)."""
  return paths.path(workdir) / "checkpoints"


def is_disk_full(error) -> bool:
  """Whether `error`, or an error it was raised from, says the disk is full (an OSError, or the
  message of orbax's or TensorStore's own error types)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "no space left on device" in str(error).lower():
      return True
    error = error.__cause__ or error.__context__
  return False


def silence_disk_full_echoes():
  """Keeps a full disk to the one line of `disk_full_error`: drops the log records of the
  background writers (orbax, TensorStore, the TensorBoard writer) that report it, each with its
  traceback, and the "Event loop is closed" errors TensorStore raises for orbax's abandoned
  writes."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  def keep(record):
    error = record.exc_info[1] if record.exc_info else None
    return not (is_disk_full(error) or "no space left on device" in record.getMessage().lower())

  for handler in std_logging.getLogger().handlers:
    handler.addFilter(keep)
  previous = sys.excepthook

  closed = lambda value: isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

  def excepthook(kind, value, traceback):
    if not closed(value):
      previous(kind, value, traceback)
  sys.excepthook = excepthook
  # TensorStore reports the same error from its own threads as "unraisable" (a bare traceback).
  previous_unraisable = sys.unraisablehook

  def unraisablehook(unraisable):
    if not closed(unraisable.exc_value):
      previous_unraisable(unraisable)
  sys.unraisablehook = unraisablehook


def disk_full_error(workdir) -> UserError:
  """The one-line error for a save that failed because the disk is full: the workdir, the
  space a save needs (the size of the newest complete step) and the step a rerun resumes from.
  The complete steps are untouched; the partial one is set aside when the run is resumed."""
  directory = checkpoint_dir(workdir)
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
  latest = max(steps) if steps else None
  need = (sum(f.stat().length for f in paths.files_under(directory / str(latest)))
          if latest is not None else 0)
  free = (f", {shutil.disk_usage(str(directory)).free / 2**20:.1f} MB free"
          if paths.is_local(directory) else "")
  resume = f"step {latest}" if latest is not None else "step 0 (no complete checkpoint yet)"
  return errors.DiskFull(
      f"no space left on the disk of {directory.parent}{free}: saving a checkpoint needs about "
      f"{need / 2**20:.1f} MB (the size of the last one); free at least that much (or lower "
      f"config.keep_checkpoints) and rerun the same command to resume from {resume}")


class Checkpointer:
  """Saves a step when asked (asynchronously, with checksums) and keeps the newest `keep`."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=True,
        async_options=None if read_only else ocp.AsyncOptions(
            post_finalization_callback=self._seal))
    self._saving = collections.deque()  # steps saved and not finalized yet, in order
    self.directory = checkpoint_dir(workdir)
    paths.check_reachable(self.directory)
    self.unreadable = self.directory.parent / "checkpoints_unreadable"
    self.read_only = read_only
    if read_only and not self.directory.is_dir():
      raise UserError(f"no checkpoints under {self.directory}; pass the --workdir of a training "
                      "run (or its checkpoints/ directory)")
    incomplete = [] if read_only else self._set_aside_incomplete()
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))
    if incomplete:
      latest = self.manager.latest_step()
      resume = (f"resuming from step {latest}, the newest complete checkpoint"
                if latest is not None else "no complete checkpoint is left, starting from step 0")
      print(f"warning: the save of step {', '.join(map(str, incomplete))} never completed (the "
            f"run stopped while writing it); moved it to {self.unreadable}/ and "
            f"{resume}", flush=True)

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return self.manager.all_steps()

  def save(self, step: int, state, data_state: dict, config: ml_collections.ConfigDict):
    """Starts an asynchronous save of step `step` (returns before the arrays are on disk); once
    orbax has finished it, `_seal` records its checksums."""
    self._saving.append(step)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(json.loads(config.to_json_best_effort()))), force=True)

  def _seal(self):
    """Writes CHECKSUMS into the step orbax has just written (process 0, in orbax's save thread,
    before orbax renames the temporary directory or marks the step complete: the checksums
    become part of the same atomic step)."""
    step = self._saving.popleft()  # orbax finalizes the saves in the order they were made
    if jax.process_index() != 0:
      return
    step_dir = self.directory / str(step)
    for entry in self.directory.iterdir():
      match = _INCOMPLETE.match(entry.name)
      if match and int(match.group(1)) == step:
        step_dir = entry
    try:
      paths.write_text(step_dir / CHECKSUMS, json.dumps({"sha256": file_digests(step_dir)}))
    except Exception as e:  # pylint: disable=broad-except  the step stays loadable, unchecked
      logging.warning("Could not record the checksums of step %d: %s", step, e)

  def _check_bytes(self, step):
    """Raises ValueError naming the files of `step` that differ from their checksums."""
    bad = verify(self.directory / str(step))
    if bad:
      raise ValueError(f"checksums differ for {', '.join(bad[:5])}"
                       + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))

  def restore(self, abstract_state, step=None):
    """Restores (state, data_state, step); falls back to older steps if the newest is unreadable.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings (see
        `trainers.common.abstract_state`); the restored arrays get exactly those shardings.
      step: a specific step, or None for the newest readable one.
    """
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    if steps:
      self._check_matches(abstract_state, steps[0])
    load = lambda s: self.manager.restore(s, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    restored, s, skipped = self._newest_readable(
        steps, load, "move the broken step directories away or start a new --workdir")
    if skipped:
      if step is None and not self.read_only:
        self._set_aside(list(skipped))
      print(f"warning: skipped unreadable checkpoints ({'; '.join(skipped.values())}); resumed "
            f"from step {s}; the broken ones were moved to {self.unreadable}/", flush=True)
    return restored["state"], restored["data"], s

  def _newest_readable(self, steps, load, fix):
    """(load(step), step, {skipped step: why}) for the first of `steps` whose bytes match their
    checksums and that loads; a UserError naming every failure and `fix` if none does."""
    skipped = {}
    for s in steps:
      try:
        self._check_bytes(s)
        return load(s), s, skipped
      except Exception as e:  # pylint: disable=broad-except
        # TensorStore appends the repr of a bound C++ method: noise in a one-line warning.
        cause = str(e).splitlines()[0].split(" See full TensorStore details")[0]
        skipped[s] = f"step {s}: {type(e).__name__}: {cause[:200]}"
        logging.warning("Checkpoint at step %d is unreadable (%s); trying an older one.", s, e)
    raise UserError(f"no readable checkpoint in {self.directory} "
                    f"({'; '.join(skipped.values())}); {fix}")

  def _state_metadata(self, step):
    meta = ocp.PyTreeCheckpointer().metadata(self.directory / str(step) / "state")
    return meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree

  def _check_matches(self, abstract_state, step):
    """Raises a UserError if the parameters saved at `step` are not those of `abstract_state`
    (the run's config changed the architecture); a checkpoint whose metadata cannot be read is
    left to `restore`'s fallback."""
    try:
      saved = self._state_metadata(step)["params"]
    except Exception:  # pylint: disable=broad-except  unreadable: restore() deals with it
      return
    flat = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
                         jax.tree_util.tree_flatten_with_path(tree)[0]}
    want, have = flat(abstract_state["params"]), flat(saved)
    for name in sorted(set(want) | set(have)):
      if want.get(name) != have.get(name):
        shapes = (f"{have.get(name, 'absent')} in the checkpoint, "
                  f"{want.get(name, 'absent')} in this config")
        raise UserError(
            f"the checkpoint at step {step} in {self.directory} was trained with another "
            f"architecture: parameter {name} is {shapes}; use the config the run was started "
            "with, or a new --workdir")

  def restore_weights(self, sharding, step=None):
    """(weights, step) for inference: the state's `step`, `params`, `stats` and `ema` (no
    optimizer state), placed with `sharding`. Their shapes are read from the checkpoint, so no
    optimizer is built; falls back to older steps if the newest is unreadable."""
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)

    def load(s):
      tree = self._state_metadata(s)
      wanted = {k: tree[k] for k in ("step", "params", "stats", "ema")}
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), wanted)
      restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), abstract)
      return self.manager.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=abstract, restore_args=restore_args, partial_restore=True)))

    restored, s, skipped = self._newest_readable(steps, load, "pass another --workdir or --step")
    if skipped:
      print(f"warning: skipped unreadable checkpoints ({'; '.join(skipped.values())}); loaded "
            f"step {s}", flush=True)
    return restored["state"], s

  def _set_aside_incomplete(self):
    """Moves the temporary directories of interrupted saves (never loaded by orbax, but left on
    disk by a crash) to `checkpoints_unreadable/`; returns their steps (on process 0)."""
    steps = []
    if jax.process_index() == 0 and self.directory.is_dir():
      for entry in sorted(self.directory.iterdir(), key=lambda e: e.name):
        match = _INCOMPLETE.match(entry.name)
        if not match and not paths.is_local(entry) and entry.name.isdigit():
          # In cloud storage orbax writes a step in place and marks it complete last.
          match = None if (entry / "commit_success.txt").exists() else re.match(r"(\d+)",
                                                                                 entry.name)
        if match:
          self.unreadable.mkdir(parents=True, exist_ok=True)
          paths.move_dir(entry, self.unreadable / f"{entry.name}-{int(time.time())}")
          steps.append(int(match.group(1)))
      if self.unreadable.is_dir():
        self._prune_incomplete()
    # No barrier needed: orbax never lists temporary directories, and the next save (by the
    # primary process) comes after collectives that this process takes part in.
    return sorted(steps)

  def _prune_incomplete(self):
    """Deletes all but the newest of the interrupted saves set aside: each may be as large as a
    checkpoint (a run stopped by a full disk leaves one per attempt), and only the last one can
    tell what went wrong."""
    aside = sorted((e for e in self.unreadable.iterdir() if _INCOMPLETE.match(e.name)),
                   key=lambda e: int(e.name.rsplit("-", 1)[-1]))
    for entry in aside[:-1]:
      entry.rmtree()

  def _set_aside(self, steps):
    """Moves unreadable step directories out of the way (never deletes them), so that training
    can save those steps again."""
    if jax.process_index() == 0:
      self.unreadable.mkdir(parents=True, exist_ok=True)
      for s in steps:
        source = self.directory / str(s)
        if source.is_dir():
          paths.move_dir(source, self.unreadable / f"{s}-{int(time.time())}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("bigbigan_checkpoint_set_aside")
    self.manager.reload()

  def restore_config(self, step=None) -> ml_collections.ConfigDict:
    """The config a checkpoint was trained with."""
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    if not steps:
      raise UserError(f"no checkpoints under {self.directory}; train first or pass another --workdir")
    failures = []
    for s in steps:  # the newest readable one
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return ml_collections.ConfigDict(restored["config"])
      except Exception as e:  # pylint: disable=broad-except
        failures.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    raise UserError(f"no readable checkpoint config in {self.directory} ({'; '.join(failures)}); "
                    "pass another --workdir or --step")

  def wait(self):
    """Blocks until pending asynchronous saves are complete (and their checksums written)."""
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def with_shardings(abstract_tree, sharding):
  """Attaches one sharding to every leaf of an abstract pytree."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract_tree)
