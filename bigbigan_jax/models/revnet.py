"""RevNet-50 trunk with an optional memory-saving reversible backward pass (SPEC §4).

A reversible unit maps `[x1, x2]` to `[x2, x1 + F(x2)]`, so its input can be recomputed from its
output: `x1 = y1 - F(x2)`. With `reversible_backward=True` each stage is a `jax.custom_vjp` whose
forward keeps only the stage's input and output, and whose backward walks the units in reverse,
rebuilding each unit's input and its VJP on the fly. Only stage boundaries are stored, not the
activations inside the stage.

Each unit's weights are stored as one pytree variable (its own `params` / `batch_stats` dicts), so a
stage can run the unit as a pure function inside the custom VJP.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigbigan_jax.models import layers

REVNET_UNITS = (3, 4, 6, 3)


class RevBottleneck(nn.Module):
  """F of a reversible unit: a pre-activation bottleneck on half the channels (width / 4)."""
  features: int
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: layers.batch_norm(train, self.bn_eps, self.bn_momentum, self.dtype, name=name)
    conv = lambda f, k, name: layers.he_conv(f, k, dtype=self.dtype, name=name)
    h = conv(self.features // 4, 1, "conv1")(nn.relu(bn("bn1")(x)))
    h = conv(self.features // 4, 3, "conv2")(nn.relu(bn("bn2")(h)))
    return conv(self.features, 1, "conv3")(nn.relu(bn("bn3")(h)))


def rev_unit_forward(f, x):
  """`[x1, x2] -> [x2, x1 + f(x2)]` along the channel axis."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x2, x1 + f(x2)], axis=-1)


def rev_unit_inverse(f, y):
  """The exact inverse of `rev_unit_forward`: `[y1, y2] -> [y2 - f(y1), y1]`."""
  x2, y1 = jnp.split(y, 2, axis=-1)
  return jnp.concatenate([y1 - f(x2), x2], axis=-1)


def _unit_apply(unit, train, params, stats, x2):
  """Runs F as a pure function; returns its output and the updated batch statistics."""
  out, updates = unit.apply({"params": params, "batch_stats": stats}, x2, train,
                            mutable=["batch_stats"])
  return out, updates["batch_stats"]


def _plain_stage(unit, train, params, stats, x):
  """The stage's forward pass, unit after unit; plain autodiff stores every activation."""
  new_stats = []
  for p, s in zip(params, stats):
    x1, x2 = jnp.split(x, 2, axis=-1)
    fx, unit_stats = _unit_apply(unit, train, p, s, x2)
    x = jnp.concatenate([x2, x1 + fx], axis=-1)
    new_stats.append(unit_stats)
  return x, new_stats


def reversible_stage(unit, train):
  """A stage of reversible units as a custom-VJP function (params, stats, x) -> (y, new_stats)."""

  @jax.custom_vjp
  def stage(params, stats, x):
    return _plain_stage(unit, train, params, stats, x)

  def forward(params, stats, x):
    y, new_stats = _plain_stage(unit, train, params, stats, x)
    return (y, new_stats), (params, stats, x, y)

  def backward(residuals, cotangents):
    params, stats, x, y = residuals
    g_y, _ = cotangents  # statistics are not differentiated
    g_params = []
    for i in reversed(range(len(params))):
      p, s = params[i], stats[i]
      # Rebuild this unit's input from its output. The first unit uses the stored stage input
      # instead: its x2 half holds zero-padded channels, whose rounding error a train-mode BN
      # would amplify by up to 1/sqrt(eps).
      x2 = jnp.split(x, 2, axis=-1)[1] if i == 0 else jnp.split(y, 2, axis=-1)[0]
      y1 = jnp.split(y, 2, axis=-1)[1]
      fx, f_vjp = jax.vjp(lambda p_, x2_: _unit_apply(unit, train, p_, s, x2_)[0], p, x2)
      g_x2_direct, g_y1 = jnp.split(g_y, 2, axis=-1)
      g_p, g_x2_through_f = f_vjp(g_y1)
      g_params.append(g_p)
      y = jnp.concatenate([y1 - fx, x2], axis=-1)
      g_y = jnp.concatenate([g_y1, g_x2_direct + g_x2_through_f], axis=-1)
    return g_params[::-1], jax.tree.map(jnp.zeros_like, stats), g_y

  stage.defvjp(forward, backward)
  return stage


class RevNet(nn.Module):
  """RevNet-50: 7x7/2 conv to 256*width, max-pool, 4 stages of reversible units separated by
  2x2 average pooling and zero-padding of channels x2, final BN (no ReLU), average pool."""
  width: int = 1
  base_width: int = 64  # the root conv has 4 * base_width * width channels (256 at width 1)
  units: tuple = REVNET_UNITS
  reversible_backward: bool = True
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    h = layers.he_conv(4 * self.base_width * self.width, 7, 2, dtype=self.dtype,
                       name="root_conv")(x)
    h = nn.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")
    for stage_index, num_units in enumerate(self.units):
      if stage_index:
        # Pad each half with zeros, so both halves of the first unit carry signal.
        h1, h2 = jnp.split(layers.avg_pool2(h), 2, axis=-1)
        h = jnp.concatenate([h1, jnp.zeros_like(h1), h2, jnp.zeros_like(h2)], axis=-1)
      # Unbound (parent=None): the stage applies it as a pure function of its variables.
      unit = RevBottleneck(h.shape[-1] // 2, self.bn_momentum, self.bn_eps, self.dtype,
                           parent=None)
      params, stats = [], []
      half = h[..., h.shape[-1] // 2:]
      init = lambda rng: unit.init(rng, half, True)  # pylint: disable=cell-var-from-loop
      for u in range(num_units):
        name = f"stage{stage_index}_unit{u}"
        params.append(self.param(name, lambda rng: init(rng)["params"]))
        # BN statistics start at (0, 1) whatever the key.
        stats.append(self.variable("batch_stats", name,
                                   lambda: init(jax.random.key(0))["batch_stats"]))
      stat_values = [s.value for s in stats]
      if train and self.reversible_backward and not self.is_initializing():
        h, new_stats = reversible_stage(unit, train)(params, stat_values, h)
      else:
        h, new_stats = _plain_stage(unit, train, params, stat_values, h)
      if train and not self.is_initializing():
        for var, value in zip(stats, new_stats):
          var.value = value
    h = layers.batch_norm(train, self.bn_eps, self.bn_momentum, self.dtype, name="final_bn")(h)
    return jnp.mean(h.astype(jnp.float32), axis=(1, 2))
