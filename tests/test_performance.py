"""Mixed precision (speed itself is measured by `python -m bigbigan_jax.benchmark`)."""

import jax
import jax.numpy as jnp
import numpy as np

from bigbigan_jax import train
from bigbigan_jax.config_lib import load_sibling_config
from cli_helpers import REPO

mnist = load_sibling_config(f"{REPO}/configs/mnist.py", "mnist")


def _one_step(dtype):
  config = mnist.get_config("runlocal")
  config.dtype = dtype
  mesh, networks, optimizers, step_fn = train.setup(config)
  state = train.fresh_state(networks, optimizers, config, mesh)
  images = np.asarray(jax.random.uniform(jax.random.key(0), (8, 32, 32, 1), minval=-1, maxval=1))
  state, metrics = step_fn(state, train.global_images([images], mesh))
  return state, jax.device_get(metrics)


def test_bfloat16_step_stays_close_to_float32_and_keeps_fp32_state():
  state32, m32 = _one_step("float32")
  state16, m16 = _one_step("bfloat16")
  for leaf in jax.tree.leaves({k: state16[k] for k in ("params", "stats", "opt", "ema")}):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  for key in ("d_loss", "eg_loss"):
    np.testing.assert_allclose(m16[key], m32[key], rtol=0.05, atol=0.05)
  # One Adam step moves each weight by about the learning rate; bf16 compute may flip the
  # direction of a few tiny gradients but most weights must land where fp32 puts them.
  p16 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state16["params"])])
  p32 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state32["params"])])
  assert np.mean(np.abs(p16 - p32) < 1e-4) > 0.9
