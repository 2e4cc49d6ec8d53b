"""The training loop: input, resume, the jitted step, logging, image grids and checkpoints."""

import json
import os
import signal
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import numpy as np

from jax.experimental import multihost_utils

from bigbigan_jax import checkpoint
from bigbigan_jax import errors
from bigbigan_jax import evaluators
from bigbigan_jax import images
from bigbigan_jax import inference
from bigbigan_jax import input_pipeline
from bigbigan_jax import models
from bigbigan_jax import sharding
from bigbigan_jax import trainers
from bigbigan_jax import validation
from bigbigan_jax.trainers import common

_fetch = sharding.fetch


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


class Previews:
  """Sample grids G(z) for a fixed z and reconstruction grids x over G(E(x)) for fixed real x,
  from the EMA weights in evaluation mode."""

  def __init__(self, config, networks, mesh, num_samples: int = 64, num_real: int = 32):
    self.config, self.networks, self.mesh = config, networks, mesh
    z = models.sample_z(jax.random.key(config.seed + 1), (num_samples, config.model.z_dim),
                        config.model.z_dist)
    self.z = sharding.replicate(mesh, z)
    self.real = None
    if networks.encoder is not None:
      batch = next(input_pipeline.eval_batches(
          config.data, config.data.eval_split, image_size=networks.image_size,
          batch_size=num_real))
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
    self.sample = jax.jit(sample, out_shardings=out)
    self.reconstruct = jax.jit(reconstruct, out_shardings=out) if e is not None else None

  def write(self, step: int, state, writer, workdir: str):
    grids = {"samples": images.grid(_fetch(self.sample(state, self.z)), 8)}
    if self.reconstruct is not None:
      recon = _fetch(self.reconstruct(state, self.real))
      grids["reconstructions"] = images.reconstruction_grid(_fetch(self.real), recon)
    if jax.process_index() == 0:
      small = grids["samples"].shape[0] < 400
      for name, grid in grids.items():
        images.save_png(grid, os.path.join(workdir, "images", f"{name}_{step:07d}.png"),
                        scale=2 if small else 1)
      writer.write_images(step, {k: v[None] for k, v in grids.items()})


class PreemptionWatch:
  """Notices SIGTERM (a TPU VM / SLURM preemption notice) so the loop can checkpoint and exit.

  With several processes, JAX's preemption sync manager (started by jax.distributed) agrees on
  one step at which every process stops, so all of them save the same step.
  """

  def __init__(self):
    self.requested = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

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
    self.directory = os.path.join(workdir, "best")
    self.record_path = os.path.join(self.directory, "best.json")
    self.record = None
    if self.metric and os.path.exists(self.record_path):
      with open(self.record_path) as f:
        record = json.load(f)
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
      with open(self.record_path + ".tmp", "w") as f:
        json.dump(self.record, f)
      os.replace(self.record_path + ".tmp", self.record_path)
    print(f"New best {self.metric} = {value:.4f} at step {step}: saved to {self.directory}",
          flush=True)

  def close(self):
    if self._checkpointer is not None:
      self._checkpointer.wait()
      self._checkpointer.close()


def _check_finite(step: int, metrics, last_saved):
  """Raises TrainingDiverged naming the step and every non-finite term."""
  if bool(_fetch(metrics["all_finite"])):
    return
  bad = [k.removeprefix("finite/") for k, v in metrics.items()
         if k.startswith("finite/") and not bool(_fetch(v))]
  values = {k: float(_fetch(metrics[k])) for k in bad if k in metrics}
  where = f"the last good checkpoint is step {last_saved}" if last_saved else "no checkpoint yet"
  raise errors.TrainingDiverged(
      f"training diverged at step {step}: non-finite {', '.join(bad)} {values or ''}; nothing was "
      f"saved from it and {where}; lower the learning rates or set config.skip_nonfinite=True")


def _truncate_metrics(path: str, last_step: int):
  """On resume, drops metric lines logged after the checkpoint we resume from."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l)["step"] <= last_step]
  with open(path, "w") as f:
    f.writelines(lines)


def train_and_evaluate(config, workdir: str):
  """Trains `config` in `workdir`, resuming from its newest checkpoint if there is one."""
  preemption = PreemptionWatch()  # first: a SIGTERM during start-up also stops cleanly
  validation.validate(config, num_devices=jax.device_count())
  mesh, networks, optimizers, step_fn = trainers.setup(config)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  train_iter = input_pipeline.create_train_iterator(
      config.data, image_size=networks.image_size, global_batch_size=config.batch_size,
      seed=config.seed)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if ckpt.latest_step() is not None:
    abstract = checkpoint.with_shardings(common.abstract_state(networks, optimizers, config),
                                         sharding.replicated(mesh))
    state, data_state, start = ckpt.restore(abstract)
    train_iter.set_state(data_state)
    logging.info("Resumed from step %d.", start)
    print(f"Resumed from the checkpoint at step {start} in {ckpt.directory}", flush=True)
    if is_main:
      _truncate_metrics(metrics_path, start)
  else:
    state, start = common.fresh_state(networks, optimizers, config, mesh), 0
  total = config.total_steps
  if start >= total:
    print(f"Already trained to step {start} (total_steps={total}); nothing to do.", flush=True)
    ckpt.close()
    return state

  previews = Previews(config, networks, mesh)
  suite = evaluation_model = None
  if evaluators.enabled(config) and (config.eval_every or any(
      config.evals[n].every for n in evaluators.enabled(config))):
    suite = evaluators.from_config(config)
    evaluation_model = inference.BigBiGAN(config, networks, mesh,
                                          batch_size=config.eval.batch_size)
  eval_path = os.path.join(workdir, "eval.jsonl")
  best = BestCheckpoint(config, workdir)
  d_steps = config.optim.d_steps
  timer = Timer(total, config.batch_size * d_steps, start)
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                           every_steps=config.log_every)
  metrics_file = open(metrics_path, "a") if is_main else None
  last_saved = start
  skip_nonfinite = config.skip_nonfinite
  losses = trainers.get_trainer(config.trainer).LOSSES
  for step in range(start + 1, total + 1):
    local = [next(train_iter)["image"] for _ in range(d_steps)]
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      state, metrics = step_fn(state, sharding.global_images(local, mesh))
    if not skip_nonfinite:
      try:
        _check_finite(step, metrics, last_saved)
      except errors.TrainingDiverged:
        ckpt.wait()  # let pending (good) saves finish; the bad state is never saved
        ckpt.close()
        raise
    report(step)
    if step % config.log_every == 0 or step == total:
      values = {k: float(_fetch(v)) for k, v in metrics.items() if not k.startswith("finite/")}
      values.update(timer.report(step))
      writer.write_scalars(step, values)
      if metrics_file:
        metrics_file.write(json.dumps({"step": step, **values}) + "\n")
        metrics_file.flush()
        shown = " | ".join(f"{k} {values[k]:.4f}" for k in losses if k in values)
        print(f"step {step}/{total} | {values['steps_per_s']:.2f} steps/s | "
              f"{values['img_per_s']:.0f} img/s | ETA {values['eta_s'] / 60:.1f} min | {shown}",
              flush=True)
    if step % config.image_every == 0 or step == total:
      previews.write(step, state, writer, workdir)
    due = suite.due(step, total) if suite else ()
    if due:
      results = suite(evaluation_model.with_state(state, use_ema=True), due)
      results = {k: v for k, v in results.items() if isinstance(v, (int, float))}
      writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items() if k != "step"})
      if is_main:
        with open(eval_path, "a") as f:
          weights = evaluators.weights_label(True, results.get("encoder_stats_batches", 0))
          f.write(json.dumps({**results, "step": step, "weights": weights}) + "\n")
      best.update(step, results, state, train_iter.get_state(), config)
    preempted = preemption.reached(step)
    if step % config.checkpoint_every == 0 or step == total or preempted:
      ckpt.save(step, state, train_iter.get_state(), config)
      last_saved = step
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
  writer.flush()
  if metrics_file:
    metrics_file.close()
  if is_main:  # lets sweeps tell finished runs from interrupted ones
    with open(os.path.join(workdir, "DONE"), "w") as f:
      json.dump({"step": total}, f)
  return state
