"""The training loop: input, resume, the jitted step, logging, image grids and checkpoints."""

import gc
import json
import os
import queue
import signal
import shutil
import tempfile
import threading
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
import jax
import numpy as np

from jax.experimental import multihost_utils

from bigbigan_jax import checkpoint
from bigbigan_jax import errors
from bigbigan_jax import evaluators
from bigbigan_jax import images
from bigbigan_jax import inference
from bigbigan_jax import lease
from bigbigan_jax import input_pipeline
from bigbigan_jax import models
from bigbigan_jax import paths
from bigbigan_jax import sharding
from bigbigan_jax import trainers
from bigbigan_jax import validation
from bigbigan_jax.trainers import common

class Timer:
  """Steps/s, img/s and ETA between successive `report` calls."""

  def __init__(self, total_steps: int, images_per_step: int, start_step: int):
    self.total, self.images_per_step = total_steps, images_per_step
    self.last_step, self.last_time = start_step, time.perf_counter()

  def report(self, step: int) -> dict:
    now = time.perf_counter()
    steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    eta = (self.total - step) / max(steps_per_s, 1e-9)
    return {"steps_per_s": steps_per_s, "img_per_s": steps_per_s * self.images_per_step,
            "eta_s": eta}


class DevicePrefetch:
  """The images of the next steps, already on the devices: a background thread reads `d_steps`
  local batches per step, assembles the global uint8 array and queues it, `depth` steps ahead,
  with the input pipeline's state after those batches. `state` is the state after the images
  handed out so far: what a checkpoint must record. An input error is raised by `next`."""

  def __init__(self, train_iter, d_steps: int, mesh, depth: int = 2):
    self.state = train_iter.get_state()
    self._queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(train_iter, d_steps, mesh),
                                    daemon=True)
    self._thread.start()

  def _put(self, item):
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        pass

  def _fill(self, train_iter, d_steps, mesh):
    try:
      while not self._stop.is_set():
        local = [next(train_iter)["image"] for _ in range(d_steps)]
        self._put((sharding.global_images(local, mesh), train_iter.get_state()))
    except Exception as e:  # pylint: disable=broad-except
      self._put((None, e))

  def __next__(self):
    images, state = self._queue.get()
    if images is None:
      raise state
    self.state = state
    return images

  def close(self):
    self._stop.set()
    self._thread.join(timeout=10)


class Previews:
  """Sample grids G(z) for a fixed z and reconstruction grids x over G(E(x)) for fixed real x,
  from the EMA weights in evaluation mode. Their programs are compiled here, for `state`'s
  shapes, so that the first grid does not stall training."""

  def __init__(self, config, networks, mesh, state, num_samples: int = 64, num_real: int = 32):
    self.config, self.networks, self.mesh = config, networks, mesh
    z = models.sample_z(jax.random.key(config.seed + 1), (num_samples, config.model.z_dim),
                        config.model.z_dist)
    self.z = sharding.replicate(mesh, z)
    self.real = None
    if networks.encoder is not None:
      batch = next(input_pipeline.eval_batches(
          config.data, config.data.eval_split, image_size=networks.image_size,
          batch_size=num_real, channels=networks.image_channels))
      self.real = sharding.replicate(mesh, batch["image"])
    g, e = networks.generator, networks.encoder

    def sample(state, z):
      x = g.apply({"params": state["ema"]["generator"], **state["stats"]["generator"]}, z,
                  train=False)
      return networks.to_images(x)

    def reconstruct(state, x):
      enc = e.apply({"params": state["ema"]["encoder"], **state["stats"]["encoder"]},
                    networks.to_model_space(x), train=False)
      return sample(state, enc["z_mean"])

    out = sharding.replicated(mesh)
    self.sample = jax.jit(sample, out_shardings=out).lower(state, self.z).compile()
    self.reconstruct = None
    if e is not None:
      self.reconstruct = (jax.jit(reconstruct, out_shardings=out).lower(state, self.real)
                          .compile())

  def write(self, step: int, state, writer, workdir):
    grids = {"samples": images.grid(sharding.fetch(self.sample(state, self.z)), 8)}
    if self.reconstruct is not None:
      recon = sharding.fetch(self.reconstruct(state, self.real))
      grids["reconstructions"] = images.reconstruction_grid(sharding.fetch(self.real), recon)
    if jax.process_index() == 0:
      small = grids["samples"].shape[0] < 400
      for name, grid in grids.items():
        images.save_png(grid, workdir / "images" / f"{name}_{step:07d}.png",
                        scale=2 if small else 1)
      writer.write_images(step, {k: v[None] for k, v in grids.items()})


class PreemptionWatch:
  """Notices SIGTERM (a TPU VM / SLURM preemption notice) so the loop can checkpoint and exit.

  With several processes, JAX's preemption sync manager (started by jax.distributed) agrees on
  one step at which every process stops, so all of them save the same step.
  """

  def __init__(self):
    self.requested = False
    self.first_step_done = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._handle)
      # Python runs a signal handler only between bytecodes, so not during a long compilation;
      # the wakeup fd is written at once, and a thread reading it ends a run that has nothing to
      # save yet (no step done) without waiting for the compiler.
      read_fd, write_fd = os.pipe()
      os.set_blocking(write_fd, False)
      signal.set_wakeup_fd(write_fd)
      threading.Thread(target=self._watch, args=(read_fd,), daemon=True).start()

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def _watch(self, read_fd):
    while True:
      received = os.read(read_fd, 1)
      if received and received[0] == signal.SIGTERM and not self.first_step_done:
        print("Preempted (SIGTERM) before the first step: nothing to save yet; rerun the same "
              "command to start.", flush=True)
        os._exit(0)  # pylint: disable=protected-access

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


class BestCheckpoint:
  """`WORKDIR/best/`: the checkpoint whose in-training evaluation scored best on
  `eval.best_metric` (the paper selects by train_val linear-probe accuracy), `eval.best_mode`
  'max' or 'min'. It is an ordinary workdir holding one checkpoint, so
  `bigbigan_jax.load('WORKDIR/best')` and `evaluate --workdir=WORKDIR/best` read it; `best.json`
  beside it records {step, metric, value} and survives restarts."""

  def __init__(self, config, workdir: str):
    self.metric = config.eval.best_metric or ""
    self.maximize = config.eval.best_mode == "max"
    self.directory = workdir / "best"
    self.record_path = self.directory / "best.json"
    self.record = None
    if self.metric and self.record_path.exists():
      record = json.loads(self.record_path.read_text())
      if record.get("metric") == self.metric:
        self.record = record
    if self.metric and jax.process_count() > 1:
      # Every process must take the same save decisions (orbax saves are collective): they all
      # follow process 0's record.
      known, step, value = multihost_utils.broadcast_one_to_all(np.array(
          [self.record is not None, (self.record or {}).get("step", 0),
           (self.record or {}).get("value", 0.0)], np.float64))
      self.record = ({"step": int(step), "metric": self.metric, "value": float(value)}
                     if known else None)
    self._checkpointer = None

  def update(self, step: int, results: dict, state, data_state, config):
    """Saves `state` as the new best if `results[metric]` beats the best so far."""
    value = results.get(self.metric) if self.metric else None
    if value is None:
      return
    if self.record is not None:
      best = self.record["value"]
      if (value <= best) if self.maximize else (value >= best):
        return
    if self._checkpointer is None:
      self._checkpointer = checkpoint.Checkpointer(self.directory, keep=1)
    self._checkpointer.save(step, state, data_state, config)
    self._checkpointer.wait()  # best.json never names a step that is not on disk
    self.record = {"step": step, "metric": self.metric, "value": value}
    if jax.process_index() == 0:
      paths.write_text(self.record_path, json.dumps(self.record))
    print(f"New best {self.metric} = {value:.4f} at step {step}: saved to {self.directory}",
          flush=True)

  def close(self):
    if self._checkpointer is not None:
      self._checkpointer.wait()
      self._checkpointer.close()


def _check_finite(step: int, metrics, last_saved):
  """Raises TrainingDiverged naming the step and every non-finite term."""
  if bool(sharding.fetch(metrics["all_finite"])):
    return
  bad = [k.removeprefix("finite/") for k, v in metrics.items()
         if k.startswith("finite/") and not bool(sharding.fetch(v))]
  values = {k: float(sharding.fetch(metrics[k])) for k in bad if k in metrics}
  where = f"the last good checkpoint is step {last_saved}" if last_saved else "no checkpoint yet"
  raise errors.TrainingDiverged(
      f"training diverged at step {step}: non-finite {', '.join(bad)} {values or ''}; nothing was "
      f"saved from it and {where}; lower the learning rates or set config.skip_nonfinite=True")


def _truncate_metrics(path, last_step: int) -> float:
  """On resume, drops metric lines logged after the checkpoint we resume from; returns the last
  kept line's `elapsed_s` (0 if none), from which this run's clock continues."""
  if not path.exists():
    return 0.0
  kept = [r for r in paths.read_jsonl(path) if r["step"] <= last_step]
  paths.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
  return float(kept[-1].get("elapsed_s", 0.0)) if kept else 0.0


class TensorBoard:
  """The metric writer (console log, and TensorBoard on process 0). On a local disk the event
  files go into the workdir; for cloud storage they are written to a local folder and `sync()`
  copies them to the workdir, so that every cloud write goes through one path layer (epath)."""

  def __init__(self, workdir, is_main: bool):
    self.workdir, self.staging = workdir, None
    logdir = workdir
    if is_main and not paths.is_local(workdir):
      self.staging = epath.Path(tempfile.mkdtemp(prefix="bigbigan_tensorboard_"))
      logdir = self.staging
    self.writer = metric_writers.create_default_writer(str(logdir), just_logging=not is_main)

  def sync(self):
    self.writer.flush()
    if self.staging is not None:
      for events in self.staging.iterdir():
        paths.write_bytes(self.workdir / events.name, events.read_bytes())

  def close(self):
    """Closes the writer and removes the local staging folder (after `sync`)."""
    self.writer.close()
    if self.staging is not None:
      shutil.rmtree(self.staging, ignore_errors=True)


class JsonLines:
  """A JSON-lines log (metrics.jsonl): appended at once on a local disk; in cloud storage, where
  every write rewrites the object, at most every `cloud_every_s` seconds and at `flush()`, which
  also syncs TensorBoard."""

  def __init__(self, path, tensorboard, cloud_every_s: float = 30.0):
    self.path, self.pending, self.last = path, [], time.monotonic()
    self.tensorboard = tensorboard
    self.every = 0.0 if paths.is_local(path) else cloud_every_s

  def write(self, record: dict):
    self.pending.append(record)
    if time.monotonic() - self.last >= self.every:
      self.flush()

  def flush(self):
    if self.pending:
      paths.append_jsonl(self.path, self.pending)
      self.pending, self.last = [], time.monotonic()
    if self.every:
      self.tensorboard.sync()


def train_and_evaluate(config, workdir):
  """Trains `config` in `workdir` (a local or gs:// path), resuming from its newest checkpoint
  if there is one."""
  started = time.perf_counter()
  preemption = PreemptionWatch()  # first: a SIGTERM during start-up also stops cleanly
  validation.validate(config, num_devices=jax.device_count())
  mesh, networks, optimizers, step_fn = trainers.setup(config)
  is_main = jax.process_index() == 0
  workdir = paths.path(workdir)
  paths.check_reachable(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise errors.UserError(f"--workdir={workdir} is a file: pass a directory (it is created if "
                           "missing)")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    if is_main:  # fail now, not at the first save, where the run cannot write
      probe = workdir / ".write_check"
      probe.write_text("")
      probe.unlink()
  except OSError as e:
    raise errors.UserError(f"cannot write to --workdir={workdir} ({type(e).__name__}: "
                           f"{e.strerror or e}): pass a directory you can write to") from None
  held = _take_lease(workdir, is_main)
  checkpoint.silence_disk_full_echoes()
  tensorboard = None
  try:
    tensorboard = TensorBoard(workdir, is_main)
    return _train(config, workdir, preemption, mesh, networks, optimizers, step_fn, held,
                  started, tensorboard)
  except Exception as e:  # pylint: disable=broad-except
    if not checkpoint.is_disk_full(e):
      raise
    raise checkpoint.disk_full_error(workdir) from None
  finally:
    if tensorboard is not None:
      tensorboard.close()
    if held is not None:
      held.release()


def _take_lease(workdir, is_main):
  """Process 0 takes the workdir's lease; every process stops with its error if it is held."""
  held, message = None, ""
  if is_main:
    held = lease.Lease(workdir)
    try:
      held.acquire()
    except errors.UserError as e:
      held, message = None, str(e)
  if jax.process_count() > 1:
    refused = multihost_utils.broadcast_one_to_all(np.array(bool(message)))
    if refused and not message:
      message = f"another run holds the lease of {workdir} (process 0 says which)"
  if message:
    raise errors.UserError(message)
  return held


def _check_lease(held, workdir):
  """Raises the UserError of `lease.Lease.check` on every process if another run took over the
  lease that process 0 holds (`held`): all of them stop before the next (collective) save."""
  if held is not None and jax.process_count() == 1:
    held.check()
    return
  if jax.process_count() > 1:
    lost = bool(multihost_utils.broadcast_one_to_all(np.array(
        held is not None and held.lost is not None)))
    if held is not None:
      held.check()
    if lost:
      raise errors.UserError(f"another run took over the lease of {workdir} (process 0 says "
                             "which): stopping; both runs must not write the same --workdir")


def _train(config, workdir, preemption, mesh, networks, optimizers, step_fn, held, started,
           tensorboard):
  """`train_and_evaluate` once the workdir is usable and this run holds its lease (`held`, on
  process 0); `started`: its `time.perf_counter()` at the start."""
  is_main = jax.process_index() == 0
  writer = tensorboard.writer
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  train_iter = input_pipeline.create_train_iterator(
      config.data, image_size=networks.image_size, global_batch_size=config.batch_size,
      seed=config.seed, channels=networks.image_channels, as_uint8=True)

  metrics_path = workdir / "metrics.jsonl"
  # `elapsed_s` in metrics.jsonl and eval.jsonl: wall-clock seconds of training since the run
  # first started (start-up and compilation included), continued across resumes.
  resumed_elapsed = 0.0
  if ckpt.latest_step() is not None:
    abstract = checkpoint.with_shardings(common.abstract_state(networks, optimizers, config),
                                         sharding.replicated(mesh))
    state, data_state, start = ckpt.restore(abstract)
    train_iter.set_state(data_state)
    logging.info("Resumed from step %d.", start)
    print(f"Resumed from the checkpoint at step {start} in {ckpt.directory}", flush=True)
    if is_main:
      resumed_elapsed = _truncate_metrics(metrics_path, start)
  else:
    state, start = common.fresh_state(networks, optimizers, config, mesh), 0
  total = config.total_steps
  if start >= total:
    print(f"Already trained to step {start} (total_steps={total}); nothing to do.", flush=True)
    ckpt.close()
    return state

  compile_start = time.perf_counter()
  previews = Previews(config, networks, mesh, state)
  suite = evaluation_model = None
  if evaluators.enabled(config) and (config.eval_every or any(
      config.evals[n].every for n in evaluators.enabled(config))):
    suite = evaluators.from_config(config)
    evaluation_model = inference.BigBiGAN(config, networks, mesh,
                                          batch_size=config.eval.batch_size)
  eval_path = workdir / "eval.jsonl"
  best = BestCheckpoint(config, workdir)
  d_steps = config.optim.d_steps
  timer = Timer(total, config.batch_size * d_steps, start)
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                           every_steps=config.log_every)
  metrics_file = JsonLines(metrics_path, tensorboard) if is_main else None
  last_saved = start
  skip_nonfinite = config.skip_nonfinite
  losses = trainers.get_trainer(config.trainer).LOSSES
  # The divergence guard reads the finiteness flags of a step one step late, while the device
  # runs the next one (no host sync per step), and at once before anything reads or saves the
  # state (log lines, image grids, evaluations, checkpoints): nothing non-finite is ever saved.
  unchecked = None  # (step, metrics) whose flags are not read yet

  def guard():
    nonlocal unchecked
    if unchecked is None or skip_nonfinite:
      unchecked = None
      return
    checked, unchecked = unchecked, None
    try:
      _check_finite(*checked, last_saved)
    except errors.TrainingDiverged:
      ckpt.wait()  # let pending (good) saves finish; the bad state is never saved
      ckpt.close()
      raise

  inputs = DevicePrefetch(train_iter, d_steps, mesh)
  try:
    for step in range(start + 1, total + 1):
      images_on_device = next(inputs)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = step_fn(state, images_on_device)
      guard()  # the previous step's flags
      unchecked = (step, metrics)
      first = step == start + 1
      if first:  # compilation (or loading it from the cache): reported once, on this step's line
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - compile_start
        preemption.first_step_done = True
        # The objects of start-up (modules, traced programs) leave the collector's view, or
        # every full collection walks them all while the step waits.
        gc.collect()
        gc.freeze()
      preempted = preemption.reached(step)
      due = suite.due(step, total) if suite else ()
      if (step % config.log_every == 0 or step % config.image_every == 0 or due or preempted
          or step % config.checkpoint_every == 0 or step == total):
        guard()
      report(step)
      if step % config.log_every == 0 or step == total:
        values = {k: float(sharding.fetch(v)) for k, v in metrics.items()
                  if not k.startswith("finite/")}
        values.update(timer.report(step))
        values["elapsed_s"] = resumed_elapsed + time.perf_counter() - started
        if first:
          values["compile_s"] = compile_s
        writer.write_scalars(step, values)
        if metrics_file:
          metrics_file.write({"step": step, **values})
          shown = " | ".join(f"{k} {values[k]:.4f}" for k in losses if k in values)
          speed = (f"compiled and ran in {compile_s:.1f} s" if first else
                   f"{values['steps_per_s']:.2f} steps/s | {values['img_per_s']:.0f} img/s | "
                   f"ETA {values['eta_s'] / 60:.1f} min")
          print(f"step {step}/{total} | {speed} | {shown}", flush=True)
      if first:  # steps/s and the ETA leave compilation out
        timer = Timer(total, config.batch_size * d_steps, step)
      if step % config.image_every == 0 or step == total:
        previews.write(step, state, writer, workdir)
      if due:
        elapsed_s = resumed_elapsed + time.perf_counter() - started
        results = suite(evaluation_model.with_state(state, use_ema=True), due)
        results = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items() if k != "step"})
        if is_main:
          weights = evaluators.weights_label(True, results.get("encoder_stats_batches", 0))
          paths.append_jsonl(eval_path, [{**results, "step": step, "weights": weights,
                                          "elapsed_s": elapsed_s}])
        best.update(step, results, state, inputs.state, config)
      if step % config.checkpoint_every == 0 or step == total or preempted:
        _check_lease(held, workdir)  # never save over a run that took the workdir over
        ckpt.save(step, state, inputs.state, config)
        last_saved = step
        if metrics_file:
          metrics_file.flush()
      if preempted:
        ckpt.wait()
        ckpt.close()
        best.close()
        print(f"Preempted (SIGTERM): saved the checkpoint at step {step}; rerun the same command "
              "to resume.", flush=True)
        return state
    ckpt.wait()
    ckpt.close()
    best.close()
    tensorboard.sync()
    if metrics_file:
      metrics_file.flush()
    if is_main:  # lets sweeps tell finished runs from interrupted ones
      paths.write_text(workdir / "DONE", json.dumps({"step": total}))
    return state
  finally:
    inputs.close()
