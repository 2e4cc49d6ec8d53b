"""Shapes, parameter counts and the defining properties of every network (docs/design.md#overview)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbigan_jax import models
from bigbigan_jax.config_lib import load_sibling_config
from bigbigan_jax.models import layers, revnet
from bigbigan_jax.models.bigan_mlp import MLPDiscriminator, MLPEncoder, MLPGenerator
from bigbigan_jax.models.discriminator import Discriminator
from bigbigan_jax.models.encoder import Encoder
from bigbigan_jax.models.generator import Generator
from bigbigan_jax.models.layers import count_params

base = load_sibling_config(__file__.replace("tests/test_models.py", "configs/base.py"), "base")


def _init_shapes(module, *args, rngs=("params",), **kwargs):
  keys = {k: jax.random.key(i) for i, k in enumerate(rngs)}
  return jax.eval_shape(lambda: module.init(keys, *args, **kwargs))


@pytest.mark.slow
def test_paper_parameter_counts():
  """The parameter anchors (docs/design.md#generator): single-label BigGAN-128 G and the D trunk F plus theta_x."""
  config = base.get_config()
  nets = models.build(config)
  v = jax.eval_shape(lambda: models.init_variables(nets, config, jax.random.key(0)))
  assert count_params(v["generator"]["params"]) == 70_306_116
  d = v["discriminator"]["params"]
  assert count_params(d["F"]) + count_params(d["theta_x"]) == 86_446_370
  # BigGAN's conditional G has a 1000 x 128 class embedding where ours has one 128-d vector.
  assert count_params(v["generator"]["params"]) + 999 * 128 == 70_433_988
  assert count_params(v["encoder"]["params"]["trunk"]) == pytest.approx(23.5e6, rel=5e-3)


def test_revnet_x4_trunk_count():
  v = _init_shapes(Encoder(trunk="revnet_50", width=4), jnp.zeros((1, 256, 256, 3)),
                   rngs=("params", "sample"))
  assert count_params(v["params"]["trunk"]) == pytest.approx(85.8e6, rel=5e-3)


@pytest.mark.slow
@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_generator_and_discriminator_shapes(resolution):
  z_dim = {32: 120, 64: 120, 128: 120, 256: 140}[resolution]
  z = jnp.zeros((2, z_dim))
  g = Generator(resolution=resolution, ch=8, shared_dim=8, attn_res=resolution // 2)
  v = _init_shapes(g, z)
  out = jax.eval_shape(lambda v: g.apply(v, z, train=False), v)
  assert out.shape == (2, resolution, resolution, 3)
  d = Discriminator(resolution=resolution, ch=8, attn_res=resolution // 2, mlp_width=16)
  x = jnp.zeros((2, resolution, resolution, 3))
  vd = _init_shapes(d, x, z)
  scores = jax.eval_shape(lambda v: d.apply(v, x, z, train=False), vd)
  assert {k: s.shape for k, s in scores.items()} == {"s_x": (2,), "s_z": (2,), "s_xz": (2,)}
  assert "attention" in v["params"] and "attention" in vd["params"]["F"]


@pytest.mark.slow
def test_gan_mode_discriminator_has_only_f_and_theta_x():
  d = Discriminator(resolution=32, ch=4, attn_res=16, use_z=False, use_xz=False)
  x = jnp.zeros((2, 32, 32, 3))
  v = d.init(jax.random.key(0), x, None)
  assert set(v["params"]) == {"F", "theta_x"}
  scores = d.apply(v, x, None, train=False)
  assert scores["s_x"].shape == (2,) and scores["s_z"] is None and scores["s_xz"] is None


@pytest.mark.parametrize("trunk,width,feat", [
    ("resnet_v2_50", 1, 2048), ("resnet_v2_50", 2, 4096), ("resnet_v2_50", 4, 8192),
    ("resnet_v2_101", 1, 2048), ("revnet_50", 1, 2048), ("revnet_50", 2, 4096),
    ("revnet_50", 4, 8192)])
@pytest.mark.slow
def test_encoder_trunk_shapes(trunk, width, feat):
  e = Encoder(z_dim=120, trunk=trunk, width=width, head_width=32)
  x = jnp.zeros((2, 256, 256, 3))
  v = _init_shapes(e, x, rngs=("params", "sample"))
  out = jax.eval_shape(lambda v: e.apply(v, x, train=False), v)
  assert out["avepool_feat"].shape == (2, feat)
  assert out["bn_crelu_feat"].shape == (2, 2 * feat)
  assert out["z_mean"].shape == out["z_stdev"].shape == out["z_sample"].shape == (2, 120)


@pytest.mark.slow
@pytest.mark.parametrize("output", ["stochastic", "deterministic", "uniform"])
def test_encoder_outputs(output):
  e = Encoder(z_dim=6, base_width=2, head_width=8, output=output)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  v = e.init({"params": jax.random.key(1), "sample": jax.random.key(2)}, x)
  out, _ = e.apply(v, x, rngs={"sample": jax.random.key(3)}, mutable=["batch_stats"])
  if output == "stochastic":
    assert np.all(out["z_stdev"] > 0)
    assert not np.allclose(out["z_sample"], out["z_mean"])
  else:
    np.testing.assert_array_equal(out["z_sample"], out["z_mean"])
    np.testing.assert_array_equal(out["z_stdev"], 0)
  if output == "uniform":
    assert np.all(np.abs(out["z_sample"]) <= 1)


@pytest.mark.slow
def test_stochastic_encoder_samples_have_predicted_moments():
  e = Encoder(z_dim=4, base_width=2, head_width=8)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  v = e.init({"params": jax.random.key(1), "sample": jax.random.key(2)}, x)
  # Pin the output layer so that mu = (0, 1, 2, 3) and sigma = softplus(-1, 0, 0.5, 1).
  sigma_hat = jnp.array([-1.0, 0.0, 0.5, 1.0])
  v["params"]["to_z"] = {"kernel": jnp.zeros_like(v["params"]["to_z"]["kernel"]),
                         "bias": jnp.concatenate([jnp.arange(4.0), sigma_hat])}
  encode = jax.jit(jax.vmap(lambda key: e.apply(v, x, train=False, rngs={"sample": key})))
  out = encode(jax.random.split(jax.random.key(4), 4000))
  np.testing.assert_allclose(out["z_mean"][0], np.tile(np.arange(4.0), (2, 1)))
  np.testing.assert_allclose(out["z_stdev"][0], np.tile(np.log1p(np.exp(sigma_hat)), (2, 1)),
                             rtol=1e-6)
  samples = out["z_sample"]
  np.testing.assert_allclose(samples.mean(0), out["z_mean"][0], atol=0.06)
  np.testing.assert_allclose(samples.std(0), out["z_stdev"][0], rtol=0.05)


def test_spectral_norm_converges_to_unit_top_singular_value_and_is_frozen_in_eval():
  dense = layers.SNDense(5, sn_eps=1e-12)
  x = jnp.ones((1, 7))
  v = dense.init(jax.random.key(0), x, train=True)
  kernel = np.asarray(v["params"]["dense"]["kernel"]) * 3.0
  v = {"params": {"dense": {**v["params"]["dense"], "kernel": jnp.asarray(kernel)}},
       layers.SPECTRAL: v[layers.SPECTRAL]}
  step = jax.jit(lambda v: dense.apply(v, x, train=True, mutable=[layers.SPECTRAL])[1])
  for _ in range(50):
    v = {**v, **step(v)}
  sigma = np.asarray(jax.tree.leaves(v[layers.SPECTRAL])[0])  # leaves: sigma, u (sorted names)
  top = np.linalg.svd(kernel, compute_uv=False)[0]
  np.testing.assert_allclose(float(sigma), top, rtol=1e-4)
  # The layer computes x @ (W / sigma): its effective kernel has top singular value 1.
  basis = np.eye(7, dtype=np.float32)
  effective = dense.apply(v, jnp.asarray(basis), train=False) - dense.apply(
      v, jnp.zeros((7, 7)), train=False)
  np.testing.assert_allclose(np.linalg.svd(np.asarray(effective), compute_uv=False)[0], 1.0,
                             rtol=1e-4)
  _, updated = dense.apply(v, x, train=False, mutable=[layers.SPECTRAL])
  for a, b in zip(jax.tree.leaves(updated), jax.tree.leaves(v[layers.SPECTRAL])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("resample,kernel_size,height", [
    ("up", 3, 4), ("up", 3, 5), ("up", 1, 4), ("down", 3, 8), ("down", 1, 8)])
def test_resampled_convs_equal_resampling_then_convolving(resample, kernel_size, height):
  """G's up-convolutions and D's pooled convolutions, fused: same variables, values, gradients."""
  x = jax.random.normal(jax.random.key(0), (2, height, height + 2, 3))
  fused = layers.SNConv(5, kernel_size, resample=resample)
  plain = layers.SNConv(5, kernel_size)
  v = fused.init(jax.random.key(1), x, train=True)
  assert jax.tree.structure(v) == jax.tree.structure(plain.init(jax.random.key(1), x, train=True))
  v = {**v, "params": jax.tree.map(lambda p: p + 0.1, v["params"])}  # a non-zero bias

  def reference(v, x):
    y = plain.apply(v, layers.upsample2(x) if resample == "up" else x, train=False)
    return layers.avg_pool2(y) if resample == "down" else y

  def loss(fn, v, x):
    return jnp.sum(jnp.sin(fn(v, x)))

  got = fused.apply(v, x, train=False)
  want = reference(v, x)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5)
  fused_fn = lambda v, x: fused.apply(v, x, train=False)
  for g, w in zip(jax.tree.leaves(jax.grad(loss, (1, 2))(fused_fn, v, x)),
                  jax.tree.leaves(jax.grad(loss, (1, 2))(reference, v, x))):
    np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_spectral_state_lives_outside_params():
  g = Generator(resolution=32, ch=2, shared_dim=4, attn_res=16)
  v = g.init(jax.random.key(0), jnp.zeros((2, 120)))
  assert set(v) == {"params", "batch_stats", layers.SPECTRAL}
  assert not any("/u" in k or "sigma" in k for k in jax.tree_util.keystr(v["params"]).split())


def test_conditional_bn_formula_and_plain_bn_for_zero_condition():
  cbn = layers.ConditionalBatchNorm()
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 3)) * 2 + 1
  cond = jax.random.normal(jax.random.key(1), (8, 5))
  v = cbn.init(jax.random.key(2), x, cond, train=True)
  out, _ = cbn.apply(v, x, cond, train=True, mutable=["batch_stats", layers.SPECTRAL])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  normed = (x - mean) / np.sqrt(var + 1e-4)
  # The SN-linear gains as the layer applies them (orthogonal kernels, divided by sigma).
  gain_layer = layers.SNDense(3, use_bias=False)
  gain = gain_layer.apply({"params": v["params"]["gain"], layers.SPECTRAL: v[layers.SPECTRAL]["gain"]},
                          cond, train=True, mutable=[layers.SPECTRAL])[0]
  bias = gain_layer.apply({"params": v["params"]["bias"], layers.SPECTRAL: v[layers.SPECTRAL]["bias"]},
                          cond, train=True, mutable=[layers.SPECTRAL])[0]
  expected = normed * (1 + gain[:, None, None]) + bias[:, None, None]
  np.testing.assert_allclose(out, expected, atol=1e-4)
  plain, _ = cbn.apply(v, x, jnp.zeros_like(cond), train=True,
                       mutable=["batch_stats", layers.SPECTRAL])
  np.testing.assert_allclose(plain, normed, atol=1e-4)


def test_attention_block_is_identity_at_init():
  attn = layers.SelfAttention()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  v = attn.init(jax.random.key(1), x, train=False)
  assert float(v["params"]["gain"]) == 0.0
  np.testing.assert_array_equal(attn.apply(v, x, train=False), x)
  v["params"]["gain"] = jnp.float32(0.5)
  assert not np.allclose(attn.apply(v, x, train=False), x)


def test_revnet_unit_inverse_reconstructs_input():
  unit = revnet.RevBottleneck(8)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  v = unit.init(jax.random.key(1), x[..., 8:], True)
  f = lambda h: unit.apply(v, h, False)
  y = revnet.rev_unit_forward(f, x)
  assert not np.allclose(y, x)
  np.testing.assert_allclose(revnet.rev_unit_inverse(f, y), x, atol=1e-5)


@pytest.mark.slow
def test_reversible_backward_matches_autodiff():
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  grads = {}
  for reversible in (True, False):
    e = Encoder(z_dim=8, trunk="revnet_50", base_width=4, head_width=16,
                reversible_backward=reversible)
    v = e.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, x)

    def loss(params, x):
      out, _ = e.apply({**v, "params": params}, x, rngs={"sample": jax.random.key(2)},
                       mutable=["batch_stats"])
      return jnp.sum(out["z_sample"] ** 2)

    grads[reversible] = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], x)
  for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
    scale = float(jnp.max(jnp.abs(b))) + 1e-6
    assert float(jnp.max(jnp.abs(a - b))) / scale < 1e-4


@pytest.mark.slow
def test_bigan_mlp_networks():
  z = jax.random.uniform(jax.random.key(0), (3, 50), minval=-1, maxval=1)
  x = jax.random.uniform(jax.random.key(1), (3, 784))
  g, e, d = MLPGenerator(), MLPEncoder(), MLPDiscriminator()
  gv = g.init(jax.random.key(2), z)
  assert g.apply(gv, z, train=False).shape == (3, 784)
  ev = e.init(jax.random.key(3), x)
  out = e.apply(ev, x, train=False)
  assert out["z_mean"].shape == (3, 50) and np.all(np.abs(out["z_mean"]) <= 1)
  assert out["avepool_feat"].shape == (3, 1024)
  dv = d.init(jax.random.key(4), x, z)
  # z is projected into both hidden layers after the first (BiGAN §4.2): two Dense on z's 50 dims.
  z_kernels = [p["kernel"] for p in dv["params"].values() if p["kernel"].shape[0] == 50]
  assert len(z_kernels) == 1 and "BatchNorm_0" not in dv["params"]
  assert d.apply(dv, x, z, train=False)["s_xz"].shape == (3,)
  # BN without gain or bias everywhere.
  assert all("scale" not in str(k) for k in jax.tree_util.tree_flatten_with_path(gv)[0])
