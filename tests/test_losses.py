"""Loss values against hand computation, and the gradient paths of BigBiGAN §2 (docs/design.md#losses)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigbigan_jax import losses
from bigbigan_jax import models
from bigbigan_jax.config_lib import load_sibling_config
from bigbigan_jax.models import layers

ENC = {"s_x": jnp.array([2.0, 0.5]), "s_z": jnp.array([-1.0, 0.0]), "s_xz": jnp.array([0.3, 3.0])}
GEN = {"s_x": jnp.array([-2.0, 0.5]), "s_z": jnp.array([1.0, -0.2]), "s_xz": jnp.array([0.0, -4.0])}


def _loss_config(**kw):
  return ml_collections.ConfigDict({"s_x": True, "s_z": True, "s_xz": True, "reduction": "sum",
                                    "form": "hinge", **kw})


def test_hinge_discriminator_loss_by_hand():
  # h(t) = max(0, 1 - t) on enc scores, h(-t) on gen scores, each term clamped separately.
  s_x = np.mean([0.0, 0.5]) + np.mean([0.0, 1.5])
  s_z = np.mean([2.0, 1.0]) + np.mean([2.0, 0.8])
  s_xz = np.mean([0.7, 0.0]) + np.mean([1.0, 0.0])
  loss, terms = losses.discriminator_loss(ENC, GEN, _loss_config())
  np.testing.assert_allclose(loss, s_x + s_z + s_xz, rtol=1e-6)
  np.testing.assert_allclose(terms["d_loss_s_z"], s_z, rtol=1e-6)
  mean_loss, _ = losses.discriminator_loss(ENC, GEN, _loss_config(reduction="mean"))
  np.testing.assert_allclose(mean_loss, (s_x + s_z + s_xz) / 3, rtol=1e-6)
  # Switching terms off (Table 1's ablations) drops them.
  only_xz, terms = losses.discriminator_loss(ENC, GEN, _loss_config(s_x=False, s_z=False))
  np.testing.assert_allclose(only_xz, s_xz, rtol=1e-6)
  assert set(terms) == {"d_loss_s_xz"}


def test_hinge_encoder_generator_loss_by_hand():
  expected = sum(np.mean(ENC[t]) - np.mean(GEN[t]) for t in ENC)
  loss, _ = losses.encoder_generator_loss(ENC, GEN, _loss_config())
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  gan = {"s_x": ENC["s_x"], "s_z": None, "s_xz": None}
  loss, terms = losses.encoder_generator_loss(gan, GEN, _loss_config())
  np.testing.assert_allclose(loss, np.mean(ENC["s_x"]) - np.mean(GEN["s_x"]), rtol=1e-6)
  assert set(terms) == {"eg_loss_s_x"}


def test_bce_losses_by_hand():
  softplus = lambda t: np.log1p(np.exp(t))
  config = _loss_config(form="bce", s_x=False, s_z=False)
  d, _ = losses.discriminator_loss(ENC, GEN, config)
  np.testing.assert_allclose(d, np.mean(softplus(-ENC["s_xz"])) + np.mean(softplus(GEN["s_xz"])),
                             rtol=1e-6)
  eg, _ = losses.encoder_generator_loss(ENC, GEN, config)
  np.testing.assert_allclose(eg, np.mean(softplus(ENC["s_xz"])) + np.mean(softplus(-GEN["s_xz"])),
                             rtol=1e-6)


@pytest.fixture(scope="module")
def tiny():
  mnist = load_sibling_config(__file__.replace("tests/test_losses.py", "configs/mnist.py"), "mnist")
  config = mnist.get_config("runlocal")
  config.model.encoder.trunk = "resnet_v2_50"
  networks = models.build(config)
  variables = models.init_variables(networks, config, jax.random.key(0), batch_size=4)
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 1), minval=-1, maxval=1)
  z = jax.random.normal(jax.random.key(2), (4, config.model.z_dim))
  return config, networks, variables, x, z


def _score_grads(tiny, pair):
  """|d score / d params| of E and of G, per score term, for one pair type ('enc' or 'gen')."""
  _, nets, v, x, z = tiny

  def scores(eg_params):
    g_vars = {**v["generator"], "params": eg_params["generator"]}
    e_vars = {**v["encoder"], "params": eg_params["encoder"]}
    if pair == "enc":
      z_hat = nets.encoder.apply(e_vars, x, train=False, rngs={"sample": jax.random.key(3)})
      xs, zs = x, z_hat["z_sample"]
    else:
      xs, zs = nets.generator.apply(g_vars, z, train=False), z
    out = nets.discriminator.apply(v["discriminator"], xs, zs, train=False)
    return jnp.stack([jnp.mean(out[t]) for t in losses.TERMS])

  jac = jax.jit(jax.jacrev(scores))({"generator": v["generator"]["params"],
                                     "encoder": v["encoder"]["params"]})
  norms = lambda tree: sum(np.abs(np.asarray(g)).reshape(3, -1).sum(1) for g in jax.tree.leaves(tree))
  return {t: (e, g) for t, e, g in zip(losses.TERMS, norms(jac["encoder"]), norms(jac["generator"]))}


@pytest.mark.slow
def test_gradient_paths(tiny):
  # Through z_hat only E is trained, through x_hat only G; s_x on real x has no E dependence,
  # s_z on generator pairs no G dependence.
  enc, gen = _score_grads(tiny, "enc"), _score_grads(tiny, "gen")
  assert enc["s_x"] == (0, 0)
  assert enc["s_z"][0] > 0 and enc["s_z"][1] == 0
  assert enc["s_xz"][0] > 0 and enc["s_xz"][1] == 0
  assert gen["s_x"][0] == 0 and gen["s_x"][1] > 0
  assert gen["s_z"] == (0, 0)
  assert gen["s_xz"][0] == 0 and gen["s_xz"][1] > 0


def test_d_view_pools_for_high_res_encoder():
  x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  pooled = layers.d_view(x, 2)
  np.testing.assert_allclose(pooled[0, 0, 0, 0], np.mean([0, 1, 4, 5]))
