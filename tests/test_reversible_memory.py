"""The RevNet encoder's reversible backward saves memory (compiled, not run), and its memory-lean
stem (root conv + max-pool) computes what `nn.Conv` + `nn.max_pool` and their autodiff compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbigan_jax import benchmark
from bigbigan_jax.config_lib import load_sibling_config
from bigbigan_jax.models import layers
from bigbigan_jax.models import revnet
from cli_helpers import REPO

base = load_sibling_config(f"{REPO}/configs/base.py", "base")


def _encoder_temp_bytes(reversible: bool) -> int:
  """XLA's temp memory for `benchmark --component=encoder` on a small but full-depth RevNet x4."""
  config = base.get_config("variant=revnet_x4")
  config.dtype = "float32"
  config.batch_size = 16
  config.model.encoder.update(resolution=128, base_width=4, head_width=32,
                              reversible_backward=reversible)  # units (3, 4, 6, 3)
  fn, args, *_ = benchmark.encoder_fwd_bwd(config)
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_reversible_backward_needs_under_half_the_temp_memory():
  # About 27 MB vs 70 MB (0.39). The stages' backward is a loop: unrolled in Python, XLA would
  # schedule every unit's recomputation ahead of the gradients and the ratio would be ~1.0.
  reversible, plain = _encoder_temp_bytes(True), _encoder_temp_bytes(False)
  assert reversible < 0.5 * plain, (reversible, plain)


@pytest.mark.slow
def test_stem_matches_conv_and_max_pool_with_ties():
  x = jax.random.normal(jax.random.key(0), (2, 17, 14, 3))
  kernel = layers.he_normal(jax.random.key(1), (7, 7, 3, 16), jnp.float32)
  conv = layers.he_conv(16, 7, 2, dtype=jnp.float32, name="root_conv")
  reference = lambda x, k: nn.max_pool(conv.apply({"params": {"kernel": k}}, x), (3, 3),
                                        strides=(2, 2), padding="SAME")
  stem = lambda x, k: revnet.stem(x, k, jnp.float32)
  # Integer-valued inputs and kernel make the conv exact and its windows full of ties.
  for x_, k_ in ((x, kernel), (jnp.round(x), jnp.round(2 * kernel))):
    y, vjp = jax.vjp(jax.jit(stem), x_, k_)
    y_ref, vjp_ref = jax.vjp(reference, x_, k_)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), y.shape)
    for a, b in zip(vjp(g), vjp_ref(g)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


class _ConvRoot(nn.Module):
  """A plain root: `layers.he_conv` named `root_conv`, the reference the stem must equal."""

  @nn.compact
  def __call__(self, x):
    return layers.he_conv(64, 7, 2, dtype=jnp.float32, name="root_conv")(x)


@pytest.mark.slow
def test_revnet_root_keeps_its_parameter_name_and_init():
  x = jnp.zeros((1, 32, 32, 3))
  # base_width 16: the root has 4 * 16 = 64 channels, as in _ConvRoot.
  init = jax.jit(lambda x: revnet.RevNet(base_width=16, units=(1, 1, 1, 1)).init(
      jax.random.key(0), x, True))
  params = init(x)
  expected = _ConvRoot().init(jax.random.key(0), x)["params"]["root_conv"]["kernel"]
  np.testing.assert_array_equal(params["params"]["root_conv"]["kernel"], expected)
