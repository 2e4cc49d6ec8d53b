"""What every trainer shares: the training state, applying networks in training mode, gradient
accumulation over micro-batches, the divergence guard, and compiling a step.

State is a plain dict pytree:
  step:   number of completed E/G updates (int32)
  nonfinite_skipped: updates dropped by `skip_nonfinite`
  params: {net: params}, stats: {net: {'batch_stats': ..., 'spectral': ...}}
  opt:    {net: optax state}, ema: {'generator': params, 'encoder': params}
Randomness is derived from (seed, step), so the state needs no key and a resumed run draws
exactly the numbers a straight run would.

With `optim.grad_accum = k > 1` every update averages gradients over k micro-batches of
`batch_size / k` (a `lax.scan`), for fewer or smaller chips than the paper's. Batch norm then
normalises with micro-batch statistics: training matches a run at `batch_size / k` per BN call,
not the global batch.
"""

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from bigbigan_jax import images as images_lib
from bigbigan_jax import models
from bigbigan_jax import sharding


class StepParts(NamedTuple):
  """A trainer's step and its parts (the parts are for the benchmark and the tests).

  step: `(state, images) -> (state, metrics)`, to be jitted; `images` is `[d_steps, batch, ...]`.
  d_update, eg_update: `(state, x, key) -> (state, metrics)`, one D or E/G update on model-space
    inputs `x`.
  d_grads, eg_grads: `(params, stats, x, key) -> (grads, stats, metrics)` on one batch.
  discriminate: `(d_params, d_stats, x, z_hat, x_fake, z) -> (enc scores, gen scores, stats)`.
  """
  step: Callable
  d_update: Optional[Callable] = None
  eg_update: Optional[Callable] = None
  d_grads: Optional[Callable] = None
  eg_grads: Optional[Callable] = None
  discriminate: Optional[Callable] = None


def init_state(networks, optimizers, config) -> dict:
  """Fresh training state (call under `jax.jit` with replicated out_shardings)."""
  variables = models.init_variables(networks, config, jax.random.key(config.seed))
  params = {k: v["params"] for k, v in variables.items()}
  stats = {k: {c: x for c, x in v.items() if c != "params"} for k, v in variables.items()}
  return {
      "step": jnp.zeros((), jnp.int32),
      "nonfinite_skipped": jnp.zeros((), jnp.int32),
      "params": params,
      "stats": stats,
      "opt": {k: optimizers[k].init(p) for k, p in params.items()},
      "ema": {k: params[k] for k in ("generator", "encoder") if k in params},
  }


def abstract_state(networks, optimizers, config):
  """Shapes and dtypes of the state, for restoring a checkpoint without initialising."""
  return jax.eval_shape(functools.partial(init_state, networks, optimizers, config))


def fresh_state(networks, optimizers, config, mesh):
  """A freshly initialised state, replicated over `mesh`."""
  return jax.jit(functools.partial(init_state, networks, optimizers, config),
                 out_shardings=sharding.replicated(mesh))()


def fresh_dicts(state):
  """A shallow copy whose per-network dicts can be assigned without touching `state`."""
  return {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}


def apply_train(net, params, stats, *args, rngs=None):
  """`net` in training mode; returns its output and its updated mutable collections."""
  out, new_stats = net.apply({"params": params, **stats}, *args, train=True, rngs=rngs,
                             mutable=list(stats))
  return out, dict(new_stats)


def micro_batches(x, k: int):
  """`[B, ...] -> [k, B // k, ...]`; micro-batch i is rows `i::k`.

  Each device holds a contiguous block of B / n rows, and every micro-batch takes B / (n k) rows
  of every block: the micro-batches stay spread over all devices, with no communication.
  """
  return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)


def accumulate_gradients(grad_fn, k: int, wrt, mesh=None):
  """`grad_fn` averaged over k micro-batches, one after another in a `lax.scan`.

  Args:
    grad_fn: `(params, stats, x, key) -> (grads, stats, metrics)` on one batch; `grads` is
      `{net: grads}` for the nets named in `wrt`.
    k: number of micro-batches (1 returns `grad_fn` itself).
    wrt: the names of the networks `grad_fn` differentiates.
    mesh: keeps each micro-batch sharded over its 'data' axis if given.

  Returns:
    A function of the same signature. Micro-batch i is `x[i::k]` with key `fold_in(key, i)`;
    gradients and metrics are the means over micro-batches; `stats` (BN moments, spectral-norm
    vectors) are updated by each micro-batch in turn.
  """
  if k == 1:
    return grad_fn

  def constrain(x, spec):
    return x if mesh is None else jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  def averaged(params, stats, x, key):
    def body(carry, inputs):
      stats, grad_sum = carry
      i, x_i = inputs
      grads, stats, metrics = grad_fn(params, stats, constrain(x_i, P("data")),
                                      jax.random.fold_in(key, i))
      return (stats, jax.tree.map(jnp.add, grad_sum, grads)), metrics

    xs = constrain(micro_batches(x, k), P(None, "data"))
    zeros = {name: jax.tree.map(jnp.zeros_like, params[name]) for name in wrt}
    (stats, grad_sum), metrics = jax.lax.scan(body, (stats, zeros), (jnp.arange(k), xs))
    mean = lambda tree: jax.tree.map(lambda v: jnp.mean(v, axis=0), tree)
    return jax.tree.map(lambda g: g / k, grad_sum), stats, mean(metrics)

  return averaged


def finish_step(config, old_state, state, metrics):
  """The divergence guard and the step count, shared by every training step.

  One `finite/` flag per metric and per network's parameters; with `skip_nonfinite` a non-finite
  update is dropped (the old state kept, the drop counted) instead of stopping the run.
  """
  finite = {f"finite/{k}": jnp.all(jnp.isfinite(v)) for k, v in metrics.items()}
  for name, params in state["params"].items():
    finite[f"finite/params_{name}"] = jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
  all_finite = jnp.all(jnp.array(list(finite.values())))
  if config.skip_nonfinite:
    state = jax.tree.map(lambda new, old: jnp.where(all_finite, new, old), state, old_state)
    state["nonfinite_skipped"] = old_state["nonfinite_skipped"] + (~all_finite).astype(jnp.int32)
  state["step"] = old_state["step"] + 1
  return state, {**metrics, **finite, "all_finite": all_finite,
                 "nonfinite_skipped": state["nonfinite_skipped"]}


def compile_step(step, mesh):
  """The jitted step: state replicated and donated, images sharded along the batch. Images may
  come as uint8 (what the training loop sends): they are converted to [-1, 1] on the device."""

  def step_on_device_images(state, images):
    if images.dtype == jnp.uint8:
      images = images_lib.to_float(images)
    return step(state, images)

  return jax.jit(step_on_device_images,
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
                 out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
                 donate_argnums=0)
