"""The BiGAN (2017) trainer: the BiGAN objective and the paper's baselines on permutation-invariant
MNIST (BiGAN §4.2 and Table 1; docs/design.md#bigan-2017-mnist).

`config.method` picks what is trained (configs/bigan_mnist.py has one variant per method):

  bigan                   E, G and D(x, z); sigmoid cross-entropy, E and G on the label-swapped
                          objective. This is the BigBiGAN trainer's step (trainers/bigbigan.py).
  d_features              a plain GAN (D(x) only); the features are D's hidden layer.
  latent_regressor        a plain GAN for `baseline.gan_steps` steps, then E alone (G frozen) fit
                          on E(G(z)) ~ z with sigmoid cross-entropy.
  joint_latent_regressor  the same E loss on every step of GAN training.
  autoencoder_l2 / _l1    E and G trained on ||G(E(x)) - x||^2 or |G(E(x)) - x|, no D.

Every method keeps the training state of `common.init_state` (unused networks are simply not
updated), so checkpoints, resumption, the loop and the evaluation are shared.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from bigbigan_jax import models
from bigbigan_jax import optimizers as optimizers_lib
from bigbigan_jax.errors import check, check_choice
from bigbigan_jax.trainers import bigbigan
from bigbigan_jax.trainers import common

METHODS = ("bigan", "d_features", "latent_regressor", "joint_latent_regressor",
           "autoencoder_l2", "autoencoder_l1")
LOSSES = ("d_loss", "eg_loss", "e_loss_latent", "recon_loss")  # on the progress line
# Methods that train an encoder (d_features takes its features from D instead).
WITH_ENCODER = ("bigan", "latent_regressor", "joint_latent_regressor", "autoencoder_l2",
                "autoencoder_l1")


def _strip(tree, name="encoder"):
  return {k: v for k, v in tree.items() if k != name}


def _without_encoder(state):
  """The GAN part of a training state (what the adversarial step of a plain GAN updates)."""
  return {k: _strip(v) if isinstance(v, dict) else v for k, v in state.items()}


def _select(flag, new, old):
  return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def _latent_bce(logits, z):
  """Sigmoid cross-entropy of E's logits against z in [-1, 1] read as Bernoulli means."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, (z + 1.0) / 2.0))


def _merge(state, gan_state):
  """The GAN step's networks back into the full state (the encoder's entries unchanged)."""
  out = common.fresh_dicts(state)
  for k, v in gan_state.items():
    if isinstance(v, dict):
      out[k].update(v)
    else:
      out[k] = v
  return out


def make_step(networks, optimizers, config, mesh) -> common.StepParts:
  """The step of `config.method`: BiGAN's is BigBiGAN's step on the MLPs; the baselines'
  `train_step(state, images) -> (state, metrics)` are built here."""
  method = config.method
  if method in ("bigan", "d_features"):
    return bigbigan.make_step(networks, optimizers, config, mesh)
  G, E = networks.generator, networks.encoder
  z_dim, z_dist = config.model.z_dim, config.model.z_dist
  gan_steps = config.baseline.gan_steps
  gan_step = None
  if not method.startswith("autoencoder"):
    gan_step = bigbigan.make_step(dataclasses.replace(networks, encoder=None),
                                  _strip(optimizers), config, mesh).step

  def apply_updates(state, names, grads):
    for name in names:
      optimizers_lib.apply_updates(optimizers, state, name, grads[name])

  def latent_regression(state, key):
    """E on E(G(z)) ~ z: G's sample is a constant target, only E (and its BN) changes."""
    z = models.sample_z(key, (config.batch_size, z_dim), z_dist)
    x_fake, _ = common.apply_train(G, state["params"]["generator"], state["stats"]["generator"],
                                   z)
    x_fake = jax.lax.stop_gradient(x_fake)

    def loss_fn(e_params):
      enc, e_stats = common.apply_train(E, e_params, state["stats"]["encoder"], x_fake)
      return _latent_bce(enc["z_logits"], z), e_stats

    (loss, e_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"]["encoder"])
    new = common.fresh_dicts(state)
    new["stats"]["encoder"] = e_stats
    apply_updates(new, ["encoder"], {"encoder": grads})
    return new, {"e_loss_latent": loss}

  def autoencode(state, x_real):
    """E and G on the reconstruction error of x (flat [0, 1] pixels)."""
    power = 2 if method == "autoencoder_l2" else 1

    def loss_fn(eg_params):
      enc, e_stats = common.apply_train(E, eg_params["encoder"], state["stats"]["encoder"],
                                        x_real)
      recon, g_stats = common.apply_train(G, eg_params["generator"],
                                          state["stats"]["generator"], enc["z_mean"])
      error = jnp.abs(recon - x_real) ** power
      return jnp.mean(jnp.sum(error, axis=-1)), {"encoder": e_stats, "generator": g_stats}

    names = ["encoder", "generator"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        {k: state["params"][k] for k in names})
    new = common.fresh_dicts(state)
    new["stats"].update(stats)
    apply_updates(new, names, grads)
    return new, {"recon_loss": loss}

  def train_step(old_state, images):
    key = jax.random.fold_in(jax.random.key(config.seed + 7919), old_state["step"])
    metrics = {}
    state = old_state
    if gan_step is not None:
      # The GAN part: a plain GAN step (it also advances EMA of G and counts the step).
      gan_state, metrics = gan_step(_without_encoder(state), images)
      gan_state["step"] = old_state["step"]  # counted once, below
      if method == "latent_regressor":  # G and D are frozen after the GAN phase
        gan_state = _select(old_state["step"] < gan_steps, gan_state, _without_encoder(state))
      state = _merge(state, gan_state)
      if method in ("latent_regressor", "joint_latent_regressor"):
        e_state, e_metrics = latent_regression(state, key)
        if method == "latent_regressor":
          e_state = _select(old_state["step"] >= gan_steps, e_state, state)
        state, metrics = e_state, {**metrics, **e_metrics}
      if "encoder" in state["ema"]:  # the GAN step already averaged G
        state = optimizers_lib.update_ema(config, state, ["encoder"])
    else:
      state, metrics = autoencode(state, networks.to_model_space(images[-1]))
      state = optimizers_lib.update_ema(config, state)
    metrics = {k: v for k, v in metrics.items()
               if not k.startswith("finite/") and k not in ("all_finite", "nonfinite_skipped")}
    return common.finish_step(config, old_state, state, metrics)

  return common.StepParts(train_step)


def check_family(config):
  """This trainer trains BiGAN (2017)'s MLPs, picked by config.method."""
  check(config.model.family == "bigan_mlp" and "method" in config,
        f"config.trainer='bigan' trains model.family='bigan_mlp' with a config.method, not "
        f"{config.model.family!r}: start from configs/bigan_mnist.py (or set --config.trainer)")


def validate(config):
  """The checks specific to the BiGAN (2017) methods (see `validation.validate` for the rest)."""
  method, m, loss = config.method, config.model, config.loss
  check_choice(method, METHODS, "method")
  wants_encoder = method in WITH_ENCODER
  check(bool(m.encoder.enabled) == wants_encoder,
        f"method={method} {'needs' if wants_encoder else 'has no'} encoder; set "
        f"--config.model.encoder.enabled={wants_encoder}")
  check(loss.s_xz if method == "bigan" else loss.s_x,
        f"method={method} trains D's {'joint' if method == 'bigan' else 'image'} score; set "
        f"--config.loss.{'s_xz' if method == 'bigan' else 's_x'}=True")
