"""Training: state, the data-parallel step, and the loop.

Parallelism is SPMD: one `jax.jit`-compiled step over a 1-D `('data',)` mesh of every device of
every process. Parameters and optimizer state are replicated; the global batch is sharded along
the mesh. Batch-norm statistics are therefore computed over the global batch (XLA inserts the
cross-device reductions), which is what BigGAN's cross-replica BN does, with no extra code.

With `optim.grad_accum = k > 1` every update averages gradients over k micro-batches of
`batch_size / k` (a `lax.scan`), for fewer or smaller chips than the paper's. Batch norm then
normalises with micro-batch statistics: training matches a run at `batch_size / k` per BN
call, not the global batch.
"""

import functools
import time

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax

from bigbigan_jax import bigan
from bigbigan_jax import input_pipeline
from bigbigan_jax import losses
from bigbigan_jax import models
from bigbigan_jax import validation

NETS = ("generator", "encoder", "discriminator")


# ---------------------------------------------------------------------------------------------
# Mesh and shardings.

def make_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes, in process order."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharding(mesh):
  """Sharding of a `[d_steps, global_batch, ...]` image stack: the batch axis over 'data'."""
  return NamedSharding(mesh, P(None, "data"))


# ---------------------------------------------------------------------------------------------
# State: a plain dict pytree.
#   step:   number of completed E/G updates (int32)
#   params: {net: params}, stats: {net: {'batch_stats': ..., 'spectral': ...}}
#   opt:    {net: optax state}, ema: {'generator': params, 'encoder': params}
# Randomness is derived from (seed, step), so the state needs no key and a resumed run draws
# exactly the numbers a straight run would.

def learning_rate(config, base_lr):
  """`base_lr`, or with `optim.schedule='constant_then_exp_decay'` (BiGAN 2017) a schedule that is
  constant for the first `optim.decay_start` of `total_steps`, then decays exponentially to
  `optim.final_lr_mult * base_lr` at the last step."""
  o = config.optim
  if o.get("schedule", "constant") == "constant":
    return base_lr
  begin = int(o.decay_start * config.total_steps)
  return optax.exponential_decay(base_lr, transition_steps=max(config.total_steps - begin, 1),
                                 decay_rate=o.final_lr_mult, transition_begin=begin)


def create_optimizers(config) -> dict:
  """Separate Adam for D, G and E (E's learning rate is eta times G's). `optim.weight_decay`
  (optional) adds an L2 penalty's gradient to every parameter's, as the BiGAN paper did."""
  o = config.optim

  def adam(lr):
    opt = optax.adam(learning_rate(config, lr), b1=o.b1, b2=o.b2, eps=o.eps)
    if o.get("weight_decay", 0.0):
      opt = optax.chain(optax.add_decayed_weights(o.weight_decay), opt)
    return opt

  return {"generator": adam(o.g_lr), "discriminator": adam(o.d_lr),
          "encoder": adam(o.g_lr * o.e_lr_mult)}


def init_state(networks, optimizers, config) -> dict:
  """Fresh training state (call under `jax.jit` with replicated out_shardings)."""
  variables = models.init_variables(networks, config, jax.random.key(config.seed))
  params = {k: v["params"] for k, v in variables.items()}
  stats = {k: {c: x for c, x in v.items() if c != "params"} for k, v in variables.items()}
  return {
      "step": jnp.zeros((), jnp.int32),
      "nonfinite_skipped": jnp.zeros((), jnp.int32),  # updates dropped by `skip_nonfinite`
      "params": params,
      "stats": stats,
      "opt": {k: optimizers[k].init(p) for k, p in params.items()},
      "ema": {k: params[k] for k in ("generator", "encoder") if k in params},
  }


def abstract_state(networks, optimizers, config):
  """Shapes and dtypes of the state, for restoring a checkpoint without initialising."""
  return jax.eval_shape(functools.partial(init_state, networks, optimizers, config))


# ---------------------------------------------------------------------------------------------
# The step.

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


def sample_z(key, shape, z_dist: str):
  if z_dist == "uniform":
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
  return jax.random.normal(key, shape, jnp.float32)


def real_to_model_space(config, images):
  """Pipeline images in [-1, 1] -> what E and D consume (flat [0, 1] vectors for BiGAN MLPs)."""
  if config.model.get("family", "bigbigan") == "bigan_mlp":
    return (images.reshape(images.shape[0], -1) + 1.0) / 2.0
  return images


def make_train_step(networks, optimizers, config, mesh):
  """Returns `train_step(state, images) -> (state, metrics)`, to be jitted.

  `images` is `[d_steps, global_batch, ...]`: one fresh real batch per D update; the E/G update
  reuses the last one with fresh z and fresh encoder noise. Each update's gradient is averaged
  over `optim.grad_accum` micro-batches (see `accumulate_gradients`).
  """
  G, E, D = networks.generator, networks.encoder, networks.discriminator
  d_steps = config.optim.d_steps
  grad_accum = config.optim.get("grad_accum", 1)
  z_dim, z_dist = config.model.z_dim, config.model.z_dist
  bigan = config.model.get("family", "bigbigan") == "bigan_mlp"
  g_res = None if bigan else config.model.generator.resolution
  data_spec = NamedSharding(mesh, P("data"))
  separate_d_batches = config.model.get("separate_d_batches", False)

  def run(net, params, stats, *args, rngs=None):
    out, new_stats = net.apply({"params": params, **stats}, *args, train=True, rngs=rngs,
                               mutable=list(stats))
    return out, dict(new_stats)

  def generate_and_encode(params, stats, x_real, key):
    """x_fake = G(z) and z_hat = E(x) in training mode; returns them and the new G/E stats."""
    kz, ke = jax.random.split(key)
    batch = x_real.shape[0]
    z = jax.lax.with_sharding_constraint(sample_z(kz, (batch, z_dim), z_dist), data_spec)
    new_stats = dict(stats)
    x_fake, new_stats["generator"] = run(G, params["generator"], stats["generator"], z)
    z_hat = None
    if E is not None:
      enc, new_stats["encoder"] = run(E, params["encoder"], stats["encoder"], x_real,
                                      rngs={"sample": ke})
      z_hat = enc["z_sample"]
    return z, x_fake, z_hat, new_stats

  def discriminate(d_params, d_stats, x_real, z_hat, x_fake, z):
    """Scores of encoder pairs (x, E(x)) and generator pairs (G(z), z): one D call on both, or
    with `model.separate_d_batches` one call per pair type, so that batch norm inside D (the
    BiGAN MLP's) normalises each type with its own statistics, as the BiGAN code did."""
    x_d = x_real if bigan else input_pipeline.d_view(x_real, g_res)
    x_fake = x_fake.astype(x_d.dtype)
    if separate_d_batches:
      enc, d_stats = run(D, d_params, d_stats, x_d, z_hat)
      gen, d_stats = run(D, d_params, d_stats, x_fake, z)
      return enc, gen, d_stats
    x = jnp.concatenate([x_d, x_fake])
    zz = None if z_hat is None else jnp.concatenate([z_hat, z])
    scores, new_stats = run(D, d_params, d_stats, x, zz)
    n = x_real.shape[0]
    enc = {k: None if v is None else v[:n] for k, v in scores.items()}
    gen = {k: None if v is None else v[n:] for k, v in scores.items()}
    return enc, gen, new_stats

  def apply_updates(state, name, grads):
    updates, state["opt"][name] = optimizers[name].update(
        grads, state["opt"][name], state["params"][name])
    state["params"][name] = optax.apply_updates(state["params"][name], updates)

  def d_grads(params, stats, x_real, key):
    """L_D's gradient for D on one batch: `({'discriminator': grads}, new stats, metrics)`."""
    z, x_fake, z_hat, stats = generate_and_encode(params, stats, x_real, key)
    x_fake = jax.lax.stop_gradient(x_fake)
    z_hat = None if z_hat is None else jax.lax.stop_gradient(z_hat)

    def loss_fn(d_params):
      enc, gen, d_stats = discriminate(d_params, stats["discriminator"], x_real, z_hat, x_fake, z)
      loss, metrics = losses.discriminator_loss(enc, gen, config.loss)
      return loss, (d_stats, {**metrics, **losses.score_means(enc, gen)})

    (loss, (d_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params["discriminator"])
    return ({"discriminator": grads}, {**stats, "discriminator": d_stats},
            {"d_loss": loss, **metrics})

  def eg_grads(params, stats, x_real, key):
    """L_EG's gradients for G and E on one batch: `({net: grads}, new stats, metrics)`."""

    def loss_fn(eg_params):
      all_params = {**params, **eg_params}
      z, x_fake, z_hat, new_stats = generate_and_encode(all_params, stats, x_real, key)
      enc, gen, new_stats["discriminator"] = discriminate(
          all_params["discriminator"], new_stats["discriminator"], x_real, z_hat, x_fake, z)
      loss, metrics = losses.encoder_generator_loss(enc, gen, config.loss)
      return loss, (new_stats, metrics)

    (loss, (new_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        {k: params[k] for k in eg_nets})
    return grads, new_stats, {"eg_loss": loss, **metrics}

  eg_nets = ("generator", "encoder") if E is not None else ("generator",)
  d_grads_accumulated = accumulate_gradients(d_grads, grad_accum, ("discriminator",), mesh)
  eg_grads_accumulated = accumulate_gradients(eg_grads, grad_accum, eg_nets, mesh)

  def apply_all(state, grads, stats):
    state = {**state, "params": dict(state["params"]), "opt": dict(state["opt"]), "stats": stats}
    for name, net_grads in grads.items():
      apply_updates(state, name, net_grads)
    return state

  def d_update(state, x_real, key):
    grads, stats, metrics = d_grads_accumulated(state["params"], state["stats"], x_real, key)
    return apply_all(state, grads, stats), metrics

  def eg_update(state, x_real, key):
    grads, stats, metrics = eg_grads_accumulated(state["params"], state["stats"], x_real, key)
    return apply_all(state, grads, stats), metrics

  def train_step(old_state, images):
    key = jax.random.fold_in(jax.random.key(config.seed), old_state["step"])
    state, metrics = old_state, {}
    for i in range(d_steps):
      state, metrics = d_update(state, real_to_model_space(config, images[i]),
                                jax.random.fold_in(key, i))
    state, eg_metrics = eg_update(state, real_to_model_space(config, images[-1]),
                                  jax.random.fold_in(key, d_steps))
    state = update_ema(config, state)
    return finish_step(config, old_state, state, {**metrics, **eg_metrics})

  # The two halves on their own, for the benchmark: (state, images, key) -> (state, metrics);
  # and their one-batch gradients, for the tests: (params, stats, x, key) -> (grads, stats, m).
  train_step.d_update, train_step.eg_update = d_update, eg_update
  train_step.d_grads, train_step.eg_grads = d_grads, eg_grads
  train_step.discriminate = discriminate  # (d_params, d_stats, x, z_hat, x_fake, z) -> scores
  return train_step


def update_ema(config, state, nets=None):
  """Advances the EMA of `nets` (default: every network in `state['ema']`). Before
  `ema.start_step` the EMA just tracks the weights; SN and BN state are not averaged."""
  nets = list(state["ema"]) if nets is None else nets
  decay = jnp.where(state["step"] >= config.ema.start_step, config.ema.decay, 0.0)
  ema = {k: jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                         state["ema"][k], state["params"][k]) for k in nets}
  return {**state, "ema": {**state["ema"], **ema}}


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
  if config.get("skip_nonfinite", False):
    state = jax.tree.map(lambda new, old: jnp.where(all_finite, new, old), state, old_state)
    state["nonfinite_skipped"] = old_state["nonfinite_skipped"] + (~all_finite).astype(jnp.int32)
  state["step"] = old_state["step"] + 1
  return state, {**metrics, **finite, "all_finite": all_finite,
                 "nonfinite_skipped": state["nonfinite_skipped"]}


def compile_train_step(networks, optimizers, config, mesh):
  """The jitted step: state replicated and donated, images sharded along the batch."""
  if bigan.has_baseline_step(config):  # BiGAN (2017)'s latent-regressor and autoencoder rows
    step = bigan.make_baseline_step(networks, optimizers, config, mesh, make_train_step)
  else:
    step = make_train_step(networks, optimizers, config, mesh)
  return jax.jit(step,
                 in_shardings=(replicated(mesh), batch_sharding(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=0)


def image_size(config) -> int:
  """Resolution the input pipeline delivers: E's (D gets a pooled view on device)."""
  m = config.model
  if m.get("family", "bigbigan") == "bigan_mlp":
    return m.image_size
  return m.encoder.resolution if m.encoder.enabled else m.generator.resolution


def global_images(local_batches, mesh):
  """Stacks `d_steps` process-local batches and assembles the global, sharded array."""
  local = np.stack(local_batches)
  global_shape = (local.shape[0], local.shape[1] * jax.process_count()) + local.shape[2:]
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local, global_shape)


def setup(config):
  """Everything the loop, the benchmark and the tests share: validated config, mesh, networks,
  optimizers and the compiled step."""
  validation.validate(config, num_devices=jax.device_count())
  mesh = make_mesh()
  networks = models.build(config)
  optimizers = create_optimizers(config)
  step_fn = compile_train_step(networks, optimizers, config, mesh)
  return mesh, networks, optimizers, step_fn


def fresh_state(networks, optimizers, config, mesh):
  return jax.jit(functools.partial(init_state, networks, optimizers, config),
                 out_shardings=replicated(mesh))()


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
