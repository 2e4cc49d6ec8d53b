"""The BigBiGAN trainer: D updates on L_D, then one joint E/G update on L_EG.

See docs/design.md#losses and #training (BigBiGAN §2, Eq. 1-4). The same step trains
BiGAN (2017)'s joint model (trainers/bigan.py builds its baselines on it): the family's
differences come from `models.build` (`Networks.to_model_space`, `Networks.d_view`).
"""

import jax
import jax.numpy as jnp

from bigbigan_jax import losses
from bigbigan_jax import models
from bigbigan_jax import optimizers as optimizers_lib
from bigbigan_jax import sharding
from bigbigan_jax.errors import check
from bigbigan_jax.errors import check_choice
from bigbigan_jax.models.encoder import OUTPUTS, TRUNKS
from bigbigan_jax.models.generator import G_CHANNELS
from bigbigan_jax.trainers import common

LOSSES = ("d_loss", "eg_loss")  # on the progress line

def make_step(networks, optimizers, config, mesh) -> common.StepParts:
  """The step `train_step(state, images) -> (state, metrics)` and its parts.

  `images` is `[d_steps, global_batch, ...]` pipeline images: one fresh real batch per D update;
  the E/G update reuses the last one with fresh z and fresh encoder noise. Each update's gradient
  is averaged over `optim.grad_accum` micro-batches (see `common.accumulate_gradients`).
  """
  G, E, D = networks.generator, networks.encoder, networks.discriminator
  d_steps, grad_accum = config.optim.d_steps, config.optim.grad_accum
  z_dim, z_dist = config.model.z_dim, config.model.z_dist
  data_spec = sharding.rows(mesh)
  separate_d_batches = config.model.separate_d_batches
  run = common.apply_train

  def generate_and_encode(params, stats, x_real, key):
    """x_fake = G(z) and z_hat = E(x) in training mode; returns them and the new G/E stats."""
    kz, ke = jax.random.split(key)
    batch = x_real.shape[0]
    z = jax.lax.with_sharding_constraint(models.sample_z(kz, (batch, z_dim), z_dist), data_spec)
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
    x_d = networks.d_view(x_real)
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

  eg_nets = ("generator", "encoder") if E is not None else ("generator",)

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

  d_grads_accumulated = common.accumulate_gradients(d_grads, grad_accum, ("discriminator",), mesh)
  eg_grads_accumulated = common.accumulate_gradients(eg_grads, grad_accum, eg_nets, mesh)

  def apply_all(state, grads, stats):
    state = {**state, "params": dict(state["params"]), "opt": dict(state["opt"]), "stats": stats}
    for name, net_grads in grads.items():
      optimizers_lib.apply_updates(optimizers, state, name, net_grads)
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
      state, metrics = d_update(state, networks.to_model_space(images[i]),
                                jax.random.fold_in(key, i))
    state, eg_metrics = eg_update(state, networks.to_model_space(images[-1]),
                                  jax.random.fold_in(key, d_steps))
    state = optimizers_lib.update_ema(config, state)
    return common.finish_step(config, old_state, state, {**metrics, **eg_metrics})

  return common.StepParts(train_step, d_update, eg_update, d_grads, eg_grads, discriminate)


def check_family(config):
  """This trainer trains BigBiGAN's networks."""
  check(config.model.family == "bigbigan",
        f"config.trainer='bigbigan' trains model.family='bigbigan', not "
        f"{config.model.family!r}: start from configs/base.py (or set --config.trainer)")


def validate(config):
  """The checks specific to BigBiGAN's networks (see `validation.validate` for the rest)."""
  m, loss = config.model, config.loss
  e, g = m.encoder, m.generator
  if e.enabled:
    check(loss.s_x or loss.s_z or loss.s_xz,
           "all loss terms are off (config.loss.s_x, s_z, s_xz); switch at least one on")
    check_choice(e.trunk, TRUNKS, "model.encoder.trunk")
    check_choice(e.output, OUTPUTS, "model.encoder.output")
    check(not (m.z_dist == "uniform" and e.output == "stochastic"),
           "a uniform P_z needs a bounded encoder: set --config.model.encoder.output=uniform "
           "(or --config.model.z_dist=normal)")
  else:
    check(loss.s_x and not (loss.s_z or loss.s_xz),
           "with no encoder (GAN mode) only s_x exists: set --config.loss.s_x=True "
           "--config.loss.s_z=False --config.loss.s_xz=False")
  check_choice(g.resolution, tuple(G_CHANNELS), "model.generator.resolution")
  chunks = len(G_CHANNELS[g.resolution])
  check(m.z_dim % chunks == 0,
         f"config.model.z_dim={m.z_dim} does not split into the {chunks} chunks of a "
         f"{g.resolution}px generator; set --config.model.z_dim to a multiple of {chunks}")
  if e.enabled:
    ratio = e.resolution / g.resolution
    check(ratio >= 1 and ratio == int(ratio) and (int(ratio) & (int(ratio) - 1)) == 0,
           f"config.model.encoder.resolution={e.resolution} must be the generator's "
           f"{g.resolution} times a power of two (D sees E's input average-pooled 2x2)")
    check(e.resolution >= 32, f"config.model.encoder.resolution={e.resolution} is below 32")
