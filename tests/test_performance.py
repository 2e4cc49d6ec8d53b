"""Mixed precision, rematerialisation and gradient accumulation (speed itself is measured by
`python -m bigbigan_jax.benchmark`)."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigbigan_jax import models
from bigbigan_jax import optimizers as optimizers_lib
from bigbigan_jax import sharding
from bigbigan_jax import trainers
from bigbigan_jax import validation
from bigbigan_jax.config_lib import load_sibling_config
from bigbigan_jax.errors import UserError
from bigbigan_jax.trainers import common
from cli_helpers import REPO, env_for

mnist = load_sibling_config(f"{REPO}/configs/mnist.py", "mnist")
NETS = ("generator", "discriminator", "encoder")


def _config(dtype="float32", remat=False, grad_accum=1, adam_eps=None):
  config = mnist.get_config("runlocal")
  config.dtype = dtype
  if adam_eps is not None:
    # Adam divides by |g| + eps: a larger eps keeps it continuous where a gradient is ~0 (e.g. a
    # conv bias that BN removes), so rounding-level differences stay rounding-level.
    config.optim.eps = adam_eps
  for net in NETS:
    config.model[net].remat = remat
  config.optim.grad_accum = grad_accum
  return config


def _images(batch=8, seed=0):
  return np.asarray(jax.random.uniform(jax.random.key(seed), (batch, 32, 32, 1), minval=-1,
                                       maxval=1))


@functools.cache
def _one_step(dtype="float32", remat=False, adam_eps=None):
  """(initial params, state after one step, metrics) of the tiny config; cached per setting."""
  config = _config(dtype, remat, adam_eps=adam_eps)
  mesh, networks, optimizers, step_fn = trainers.setup(config)
  state = common.fresh_state(networks, optimizers, config, mesh)
  initial = jax.device_get(state["params"])
  state, metrics = step_fn(state, sharding.global_images([_images()], mesh))
  return initial, jax.device_get(state), jax.device_get(metrics)


@pytest.mark.slow
def test_bfloat16_step_stays_close_to_float32_and_keeps_fp32_state():
  _, state32, m32 = _one_step("float32")
  _, state16, m16 = _one_step("bfloat16")
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


# ---------------------------------------------------------------------------------------------
# Rematerialisation.

@pytest.mark.slow
def test_remat_keeps_parameter_names_and_the_training_step():
  init_plain, plain, m_plain = _one_step(remat=False, adam_eps=1e-3)
  init_remat, remat, m_remat = _one_step(remat=True, adam_eps=1e-3)
  # The same variable tree, so checkpoints load either way; the same initial values.
  assert jax.tree.structure(init_remat) == jax.tree.structure(init_plain)
  jax.tree.map(np.testing.assert_array_equal, init_remat, init_plain)
  assert jax.tree.structure(remat) == jax.tree.structure(plain)
  assert "block0" in init_remat["generator"] and "stage0_unit0" in init_remat["encoder"]["trunk"]
  # Recomputing activations changes only the order of floating-point work, not the step.
  for key in m_plain:
    np.testing.assert_allclose(m_remat[key], m_plain[key], rtol=1e-6, atol=1e-6, err_msg=key)
  for part in ("params", "stats", "ema"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 remat[part], plain[part])


def _remat_calls(fn, *args) -> int:
  """How many rematerialised (`jax.checkpoint`) calls the traced program of `fn` makes."""
  remat = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).jaxpr.eqns[0].primitive
  return sum(eqn.primitive is remat for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns)


@pytest.mark.slow
@pytest.mark.parametrize("trunk", ["resnet_v2_50", "revnet_50"])
def test_remat_wraps_the_blocks_of_every_network(trunk):
  """G: 3 ResBlock-ups + attention; F: 4 ResBlock-downs + attention; ResNet: 4 units (runlocal
  depth). The RevNet has its own memory saving (reversible_backward) and ignores the flag."""
  counts = {}
  for remat in (False, True):
    config = _config(remat=remat)
    config.model.encoder.trunk = trunk
    nets = models.build(config)
    v = jax.eval_shape(lambda: models.init_variables(nets, config, jax.random.key(0)))
    x, z = jnp.zeros((2, 32, 32, 1)), jnp.zeros((2, config.model.z_dim))
    run = lambda net, *args: lambda v: net.apply(v, *args, train=True, mutable=True,
                                                 rngs={"sample": jax.random.key(0)})
    counts[remat] = (_remat_calls(run(nets.generator, z), v["generator"]),
                     _remat_calls(run(nets.discriminator, x, z), v["discriminator"]),
                     _remat_calls(run(nets.encoder, x), v["encoder"]))
  assert counts == {False: (0, 0, 0), True: (4, 5, 4 if trunk == "resnet_v2_50" else 0)}


# ---------------------------------------------------------------------------------------------
# Gradient accumulation.

def test_micro_batches_take_strided_rows():
  x = np.arange(12)[:, None] * np.ones((1, 3))
  mb = np.asarray(common.micro_batches(jnp.asarray(x), 3))
  assert mb.shape == (3, 4, 3)
  for i in range(3):
    np.testing.assert_array_equal(mb[i], x[i::3])


@pytest.mark.slow
# "d" takes the same accumulate_gradients path; left out to keep the suite's wall time down.
@pytest.mark.parametrize("half", ["eg"])
def test_accumulated_update_equals_mean_of_micro_batch_gradients(half):
  """An update with grad_accum=2 is one Adam step on the mean of the two micro-batches'
  gradients, with BN/SN statistics updated by micro-batch 0 and then micro-batch 1."""
  config = _config(grad_accum=2, adam_eps=1e-3)
  mesh, networks = sharding.make_mesh(), models.build(config)
  optimizers = optimizers_lib.create_optimizers(config)
  state = common.fresh_state(networks, optimizers, config, mesh)
  step = trainers.get_trainer(config.trainer).make_step(networks, optimizers, config, mesh)
  x, key = jnp.asarray(_images()), jax.random.key(7)
  new_state, metrics = jax.jit(getattr(step, f"{half}_update"))(state, x, key)

  one_batch = jax.jit(getattr(step, f"{half}_grads"))
  stats, grads, micro_metrics = state["stats"], [], []
  for i in range(2):
    g, stats, m = one_batch(state["params"], stats, x[i::2], jax.random.fold_in(key, i))
    grads.append(g)
    micro_metrics.append(jax.device_get(m))

  @jax.jit
  def adam_on_mean(params, opt, g0, g1):
    new = {}
    for name in g0:
      mean = jax.tree.map(lambda a, b: (a + b) / 2, g0[name], g1[name])
      updates, _ = optimizers[name].update(mean, opt[name], params[name])
      new[name] = optax.apply_updates(params[name], updates)
    return new

  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)
  for name, value in jax.device_get(metrics).items():
    close(value, (micro_metrics[0][name] + micro_metrics[1][name]) / 2, err_msg=name)
  jax.tree.map(close, jax.device_get(new_state["stats"]), jax.device_get(stats))
  expected = adam_on_mean(state["params"], state["opt"], *grads)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6),
               jax.device_get({k: new_state["params"][k] for k in expected}),
               jax.device_get(expected))
  untouched = {"d": ("generator", "encoder"), "eg": ("discriminator",)}[half]
  assert not set(untouched) & set(expected)
  for name in untouched:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state["params"][name]),
                 jax.device_get(state["params"][name]))


_EIGHT_DEVICES = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from bigbigan_jax import sharding, trainers
from bigbigan_jax.config_lib import load_sibling_config
from bigbigan_jax.trainers import common

mesh = sharding.make_mesh()
rows = NamedSharding(mesh, P("data"))
# Micro-batch i = rows i::k keeps every device's share local: no collective in the program.
hlo = jax.jit(lambda x: common.micro_batches(x, 2) * 2.0, in_shardings=rows,
              out_shardings=NamedSharding(mesh, P(None, "data"))).lower(
                  jax.ShapeDtypeStruct((16, 4), jnp.float32)).compile().as_text()
collectives = [c for c in ("all-to-all", "all-gather", "collective-permute", "all-reduce")
               if c in hlo]

config = load_sibling_config(sys.argv[1], "mnist").get_config("runlocal")
config.batch_size, config.optim.grad_accum = 16, 2  # micro-batches of 8 rows, 1 per device
mesh, networks, optimizers, step_fn = trainers.setup(config)
state = common.fresh_state(networks, optimizers, config, mesh)
shapes = jax.tree.map(lambda a: (a.shape, str(a.dtype)), state)
images = np.asarray(jax.random.uniform(jax.random.key(0), (16, 32, 32, 1), minval=-1, maxval=1))
new_state, metrics = step_fn(state, sharding.global_images([images], mesh))
print(json.dumps({
    "devices": jax.device_count(), "collectives": collectives,
    "same_shapes": jax.tree.map(lambda a: (a.shape, str(a.dtype)), new_state) == shapes,
    "finite": all(bool(np.all(np.isfinite(np.asarray(a)))) for a in jax.tree.leaves(new_state)),
    "all_finite": bool(metrics["all_finite"]), "d_loss": float(metrics["d_loss"]),
    "step": int(new_state["step"])}))
"""


@pytest.mark.slow
def test_grad_accum_step_on_eight_devices():
  result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, f"{REPO}/configs/mnist.py"],
                          env=env_for(8), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8 and out["collectives"] == []
  assert out["same_shapes"] and out["finite"] and out["all_finite"] and out["step"] == 1
  assert np.isfinite(out["d_loss"])


def test_grad_accum_is_validated():
  config = _config(grad_accum=3)  # batch 8
  with pytest.raises(UserError, match="optim.grad_accum"):
    validation.validate(config)
  config.optim.grad_accum = 2
  validation.validate(config, num_devices=4)  # micro-batches of 4 rows: one per device
  with pytest.raises(UserError, match="optim.grad_accum"):
    validation.validate(config, num_devices=8)  # 4 rows cannot spread over 8 devices
  config.optim.grad_accum = 0
  with pytest.raises(UserError, match="optim.grad_accum"):
    validation.validate(config)
