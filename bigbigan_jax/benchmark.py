"""Measures training speed and memory: img/s, step times, FLOPs, MFU and compiled memory.

  python -m bigbigan_jax.benchmark --config=configs/base.py:runlocal [--steps=10]
  python -m bigbigan_jax.benchmark --config=configs/base.py:variant=revnet_x4 --compile_only \
      --component=encoder [--config.model.encoder.reversible_backward=False]
  python -m bigbigan_jax.benchmark --config=configs/mnist.py --input_only

The last line printed is one JSON object. Times are medians over `--steps` after warm-up.
`--compile_only` lowers and compiles from abstract shapes (nothing allocated), so paper-size
models can be sized on a CPU. An iteration is `d_steps` D updates plus one E/G update;
`img_per_s` counts the real images of the global batch consumed per iteration.

`flops_per_iter` is XLA's cost analysis, which counts the body of a while loop once whatever its
trip count (the RevNet stem and the reversible backward are loops); `dot_conv_flops_per_iter`
counts the matmuls and convolutions of the traced program with each loop body times its trip
count (recomputation included). TFLOP/s and MFU use the larger of the two.

`peak_bytes` is the device allocator's peak (`memory_stats()["peak_bytes_in_use"]`) over the whole
measurement, weights included (null with `--compile_only`), and `bytes_limit` what the allocator
may hold; both null where the platform keeps no statistics (CPU).
"""

import gc
import json
import math
import statistics
import time

from absl import flags
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

from bigbigan_jax import checkpoint
from bigbigan_jax import cli
from bigbigan_jax import errors
from bigbigan_jax import images as images_lib
from bigbigan_jax import input_pipeline
from bigbigan_jax import models
from bigbigan_jax import sharding
from bigbigan_jax import trainers
from bigbigan_jax import validation
from bigbigan_jax.trainers import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 10, "Timed iterations (after 2 warm-up iterations).")
flags.DEFINE_bool("compile_only", False, "Only lower and compile; report FLOPs and memory.")
flags.DEFINE_float("peak_tflops", None, "Peak dense TFLOP/s of one device (for MFU).")
flags.DEFINE_enum("component", "all", ["all", "encoder"],
                  "'encoder': E's forward + backward alone (e.g. for the RevNet memory saving).")
flags.DEFINE_bool("input_only", False, "Measure the input pipeline alone (img/s on this host).")
flags.DEFINE_bool("halves", True, "Also time the D and E/G halves (each compiled on its own).")
cli.define_config_flag()
flags.adopt_module_key_flags(cli)  # --config in --help

# Peak dense bf16 TFLOP/s per device, by substrings of `device_kind`.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "TPU v4": 275.0,
               "TPU v5 lite": 197.0,
               "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0}


def peak_tflops(device) -> float | None:
  for name, peak in PEAK_TFLOPS.items():
    if name.lower() in device.device_kind.lower():
      return peak
  return None


def _compiled_stats(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  # The compiled SPMD program is one device's share: scale FLOPs to the whole mesh.
  return {"flops_per_iter": float(cost.get("flops", 0.0)) * jax.device_count() if cost else None,
          "temp_bytes": int(memory.temp_size_in_bytes) if memory else None,
          "argument_bytes": int(memory.argument_size_in_bytes) if memory else None}


def _jaxpr_dot_conv_flops(jaxpr) -> float:
  """2 x multiply-adds of every dot_general and conv in `jaxpr`, scan bodies times `length`."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
    elif name == "conv_general_dilated":
      rhs, rhs_spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
      per_output = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
      # An input dilation (the input gradient of a strided conv) multiplies by inserted zeros.
      per_output /= math.prod(eqn.params["lhs_dilation"])
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
    inner = [_jaxpr_dot_conv_flops(getattr(j, "jaxpr", j))
             for j in jax_core.jaxprs_in_params(eqn.params)]
    if name == "cond":
      total += max(inner, default=0.0)  # one branch runs
    elif name == "scan":  # a fori_loop with static bounds is a scan too
      total += eqn.params["length"] * sum(inner)
    else:  # calls, and while loops (their trip count is unknown: counted once)
      total += sum(inner)
  return total


def dot_conv_flops(fn, *args) -> float:
  """FLOPs of the matmuls and convolutions `fn(*args)` runs (see the module docstring)."""
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  try:  # drop what XLA drops too, e.g. a custom VJP's cotangent for the (constant) input images
    from jax._src.interpreters import partial_eval  # pylint: disable=g-import-not-at-top
    jaxpr, _ = partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
  except (ImportError, AttributeError):  # a private API: without it, dead code is counted too
    pass
  return _jaxpr_dot_conv_flops(jaxpr)


def _median_time(fn, steps: int) -> float:
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def encoder_fwd_bwd(config):
  """E's forward + backward on a global batch: (unjitted fn, abstract (variables, images), mesh,
  networks, input shapes). `jax.jit(fn).lower(*args).compile()` sizes it without allocating."""
  mesh = sharding.make_mesh()
  networks = models.build(config)
  if networks.encoder is None:
    raise errors.UserError("this config has no encoder (GAN mode); drop --component=encoder")
  shapes = models.input_shapes(config, config.batch_size)
  variables = jax.eval_shape(lambda: models.init_variables(networks, config, jax.random.key(0)))
  e_vars = checkpoint.with_shardings(variables["encoder"], sharding.replicated(mesh))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  x = jax.ShapeDtypeStruct(shapes["x_e"], jnp.float32, sharding=rows)

  def loss_and_grad(v, x):
    def loss(params):
      out, _ = networks.encoder.apply({**v, "params": params}, x, train=True,
                                      rngs={"sample": jax.random.key(0)}, mutable=["batch_stats"])
      return jnp.sum(out["z_sample"].astype(jnp.float32) ** 2)
    return jax.grad(loss)(v["params"])

  return loss_and_grad, (e_vars, x), mesh, networks, shapes


def benchmark_encoder(config) -> dict:
  """Compiles (and unless compile_only, times) E's forward + backward on a global batch."""
  loss_and_grad, args, mesh, networks, shapes = encoder_fwd_bwd(config)
  fn = jax.jit(loss_and_grad)
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  result = {"component": "encoder", "compile_s": time.perf_counter() - start,
            **_compiled_stats(compiled),
            "dot_conv_flops_per_iter": dot_conv_flops(loss_and_grad, *args)}
  if not FLAGS.compile_only:
    real_vars = jax.jit(lambda: models.init_variables(networks, config, jax.random.key(0)),
                        out_shardings=sharding.replicated(mesh))()["encoder"]
    images = jnp.zeros(shapes["x_e"], jnp.float32)
    jax.block_until_ready(compiled(real_vars, images))
    result["fwd_bwd_s"] = _median_time(lambda: compiled(real_vars, images), FLAGS.steps)
  return result


def benchmark_step(config) -> dict:
  """Compiles and times the full training iteration and its D and E/G halves."""
  mesh, networks, optimizers, step_fn = trainers.setup(config)
  res, c = networks.image_size, networks.image_channels
  d_steps, batch = config.optim.d_steps, config.batch_size
  state_shape = checkpoint.with_shardings(common.abstract_state(networks, optimizers, config),
                                          sharding.replicated(mesh))
  # uint8 images, converted on the device: what the training loop sends.
  images_shape = jax.ShapeDtypeStruct((d_steps, batch, res, res, c), jnp.uint8,
                                      sharding=sharding.batch_sharding(mesh))
  start = time.perf_counter()
  compiled = step_fn.lower(state_shape, images_shape).compile()
  result = {"compile_s": time.perf_counter() - start, **_compiled_stats(compiled),
            "dot_conv_flops_per_iter": dot_conv_flops(step_fn, state_shape, images_shape)}
  if FLAGS.compile_only:
    return result

  state = common.fresh_state(networks, optimizers, config, mesh)
  images = sharding.global_images([np.zeros((batch // jax.process_count(), res, res, c),
                                            np.uint8)] * d_steps, mesh)
  for _ in range(2):  # warm-up
    state, metrics = compiled(state, images)
  jax.block_until_ready(metrics)
  gc.collect()
  gc.freeze()  # as the training loop does after its first step
  holder = {"state": state}

  def iteration():
    holder["state"], m = compiled(holder["state"], images)
    return m

  result["iter_s"] = _median_time(iteration, FLAGS.steps)
  result["img_per_s"] = batch / result["iter_s"]
  result["img_per_s_per_device"] = result["img_per_s"] / jax.device_count()
  if not FLAGS.halves:
    return result
  parts = trainers.get_trainer(config.trainer).make_step(networks, optimizers, config, mesh)
  key = jax.random.key(0)
  rep = sharding.replicated(mesh)
  x = networks.to_model_space(images_lib.to_float(images[0]))  # what the halves consume
  for name in ("d_update", "eg_update"):
    if getattr(parts, name) is None:  # a step without the two halves (BiGAN's baselines)
      continue
    half = jax.jit(getattr(parts, name), out_shardings=(rep, rep), donate_argnums=0)
    holder["state"], m = half(holder["state"], x, key)
    jax.block_until_ready(m)

    def run_half(half=half):
      holder["state"], m = half(holder["state"], x, key)
      return m

    result[f"{name.split('_')[0]}_step_s"] = _median_time(run_half, FLAGS.steps)
  return result


def benchmark_input(config) -> dict:
  """Images per second the input pipeline delivers on this host."""
  networks = models.build(config)
  it = input_pipeline.create_train_iterator(
      config.data, image_size=networks.image_size, global_batch_size=config.batch_size,
      seed=config.seed, channels=networks.image_channels)
  next(it)
  start, count = time.perf_counter(), 0
  for _ in range(max(FLAGS.steps, 5)):
    count += len(next(it)["image"])
  return {"component": "input", "input_img_per_s": count / (time.perf_counter() - start)}


def main(argv):
  del argv
  config = cli.config()
  validation.validate(config, num_devices=jax.device_count())
  device = jax.devices()[0]
  result = {"device": device.device_kind, "platform": device.platform,
            "num_devices": jax.device_count(), "dtype": config.dtype,
            "batch_size": config.batch_size}
  if FLAGS.input_only:
    result.update(benchmark_input(config))  # compare with the step benchmark's img_per_s
  elif FLAGS.component == "encoder":
    result.update(benchmark_encoder(config))
  else:
    result.update(benchmark_step(config))
    peak = FLAGS.peak_tflops or peak_tflops(device)
    flops = max(result.get("flops_per_iter") or 0.0, result["dot_conv_flops_per_iter"])
    if "iter_s" in result and flops:
      result["tflops_achieved"] = flops / result["iter_s"] / 1e12
      result["mfu"] = (result["tflops_achieved"] / (peak * jax.device_count())) if peak else None
    else:
      result.setdefault("tflops_achieved", None)
      result.setdefault("mfu", None)
  memory = jax.local_devices()[0].memory_stats() or {}
  measured = not (FLAGS.compile_only or FLAGS.input_only)
  result["peak_bytes"] = memory.get("peak_bytes_in_use") if measured else None
  result["bytes_limit"] = memory.get("bytes_limit")
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
