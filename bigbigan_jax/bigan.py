"""BiGAN (2017) on permutation-invariant MNIST: the BiGAN objective and the paper's baselines (SPEC §9).

`config.method` picks what is trained (configs/bigan_mnist.py has one variant per method):

  bigan                   E, G and D(x, z); sigmoid cross-entropy, E and G on the label-swapped
                          objective. This is the ordinary BigBiGAN step (train.make_train_step).
  d_features              a plain GAN (D(x) only); the features are D's hidden layer.
  latent_regressor        a plain GAN for `baseline.gan_steps` steps, then E alone (G frozen) fit
                          on E(G(z)) ~ z with sigmoid cross-entropy.
  joint_latent_regressor  the same E loss on every step of GAN training.
  autoencoder_l2 / _l1    E and G trained on ||G(E(x)) - x||^2 or |G(E(x)) - x|, no D.

Every method keeps the training state of `train.init_state` (unused networks are simply not
updated), so checkpoints, resumption, the loop and the evaluation are shared.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

METHODS = ("bigan", "d_features", "latent_regressor", "joint_latent_regressor",
           "autoencoder_l2", "autoencoder_l1")
# Methods that train an encoder (d_features takes its features from D instead).
WITH_ENCODER = ("bigan", "latent_regressor", "joint_latent_regressor", "autoencoder_l2",
                "autoencoder_l1")


def method_of(config) -> str:
  return config.get("method", "bigan")


def has_baseline_step(config) -> bool:
  """Whether `make_baseline_step` trains this config (bigan and d_features use the usual step)."""
  return method_of(config) not in ("bigan", "d_features")


def flat_to_images(config, x):
  """The BiGAN MLPs' flat [0, 1] vectors -> [N, S, S, C] images in [-1, 1]."""
  s, c = config.model.image_size, config.model.get("image_channels", 1)
  return x.reshape(x.shape[0], s, s, c) * 2.0 - 1.0


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


def make_baseline_step(networks, optimizers, config, mesh, adversarial_step):
  """`train_step(state, images) -> (state, metrics)` for the non-BiGAN methods.

  Args:
    adversarial_step: `make(networks, optimizers, config, mesh)` of the ordinary step; with the
      encoder removed it is the plain GAN step (D(x) and G, the config's loss form).
  """
  from bigbigan_jax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  method = method_of(config)
  G, E = networks.generator, networks.encoder
  z_dim, z_dist = config.model.z_dim, config.model.z_dist
  gan_steps = config.baseline.gan_steps
  gan_step = None
  if not method.startswith("autoencoder"):
    gan_step = adversarial_step(dataclasses.replace(networks, encoder=None),
                                _strip(optimizers), config, mesh)

  def run(net, variables, x):
    params, stats = variables
    out, new_stats = net.apply({"params": params, **stats}, x, train=True, mutable=list(stats))
    return out, dict(new_stats)

  def to_model_space(images):
    return (images.reshape(images.shape[0], -1) + 1.0) / 2.0

  def apply_updates(state, names, grads):
    for name in names:
      updates, state["opt"][name] = optimizers[name].update(
          grads[name], state["opt"][name], state["params"][name])
      state["params"][name] = optax.apply_updates(state["params"][name], updates)

  def latent_regression(state, key):
    """E on E(G(z)) ~ z: G's sample is a constant target, only E (and its BN) changes."""
    z = sample_z(key)
    x_fake, _ = run(G, (state["params"]["generator"], state["stats"]["generator"]), z)
    x_fake = jax.lax.stop_gradient(x_fake)

    def loss_fn(e_params):
      enc, e_stats = run(E, (e_params, state["stats"]["encoder"]), x_fake)
      return _latent_bce(enc["z_logits"], z), e_stats

    (loss, e_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"]["encoder"])
    new = _fresh_dicts(state)
    new["stats"]["encoder"] = e_stats
    apply_updates(new, ["encoder"], {"encoder": grads})
    return new, {"e_loss_latent": loss}

  def autoencode(state, x_real):
    """E and G on the reconstruction error of x (flat [0, 1] pixels)."""
    power = 2 if method == "autoencoder_l2" else 1

    def loss_fn(eg_params):
      enc, e_stats = run(E, (eg_params["encoder"], state["stats"]["encoder"]), x_real)
      recon, g_stats = run(G, (eg_params["generator"], state["stats"]["generator"]),
                           enc["z_mean"])
      error = jnp.abs(recon - x_real) ** power
      return jnp.mean(jnp.sum(error, axis=-1)), {"encoder": e_stats, "generator": g_stats}

    names = ["encoder", "generator"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        {k: state["params"][k] for k in names})
    new = _fresh_dicts(state)
    new["stats"].update(stats)
    apply_updates(new, names, grads)
    return new, {"recon_loss": loss}

  def sample_z(key):
    return train.sample_z(key, (config.batch_size, z_dim), z_dist)

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
        state = train.update_ema(config, state, ["encoder"])
    else:
      state, metrics = autoencode(state, to_model_space(images[-1]))
      state = train.update_ema(config, state)
    metrics = {k: v for k, v in metrics.items()
               if not k.startswith("finite/") and k not in ("all_finite", "nonfinite_skipped")}
    return train.finish_step(config, old_state, state, metrics)

  return train_step


def _fresh_dicts(state):
  """A shallow copy whose per-network dicts can be assigned without touching `state`."""
  return {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}


def _merge(state, gan_state):
  """The GAN step's networks back into the full state (the encoder's entries unchanged)."""
  out = _fresh_dicts(state)
  for k, v in gan_state.items():
    if isinstance(v, dict):
      out[k].update(v)
    else:
      out[k] = v
  return out
