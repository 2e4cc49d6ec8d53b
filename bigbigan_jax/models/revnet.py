"""RevNet-50 trunk with an optional memory-saving reversible backward pass (docs/design.md#encoder).

A reversible unit maps `[x1, x2]` to `[x2, x1 + F(x2)]`, so its input can be recomputed from its
output: `x1 = y1 - F(x2)`. With `reversible_backward=True` each stage is a `jax.custom_vjp` whose
forward keeps only the stage's input and output, and whose backward is a loop (`lax.scan`) over
the units in reverse, rebuilding each unit's input and its VJP on the fly. Only stage boundaries
are stored, and only one unit's activations are alive at a time in the backward.

The root (7x7/2 conv, 3x3/2 max-pool) is one memory-lean custom VJP, `stem`, with either backward:
it keeps the pooled output and a uint8 argmax instead of the full-resolution conv output.

Each unit's weights are stored as one pytree variable (its own `params` / `batch_stats` dicts), so a
stage can run the unit as a pure function inside the custom VJP.
"""

import functools
import operator
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


# ---- The root: 7x7/2 conv and 3x3/2 max-pool, fused into one memory-lean custom VJP. ----------


def _window_taps(in_shape, out_shape, x=None, window=3, stride=2):
  """For each window offset (row-major): the strided view of `x` that it reads for every output
  (-inf where it falls in SAME padding; None without `x`) and the `lax.pad` config that scatters
  an output-shaped array back onto the input grid."""
  (h, w), (ho, wo) = in_shape[1:3], out_shape[1:3]
  pads = jax.lax.padtype_to_pads((h, w), (window, window), (stride, stride), "SAME")
  span = ((ho - 1) * stride + 1, (wo - 1) * stride + 1)
  for di in range(window):
    for dj in range(window):
      lo = (di - pads[0][0], dj - pads[1][0])  # output (i, j) reads x at lo + stride * (i, j)
      config = ((0, 0, 0), (lo[0], h - lo[0] - span[0], stride - 1),
                (lo[1], w - lo[1] - span[1], stride - 1), (0, 0, 0))
      tap = None
      if x is not None:  # a negative lax.pad crops: x shifted onto the outputs' grid
        shifted = jax.lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(-a, -b, 0) for a, b, _ in config])
        tap = jax.lax.slice(shifted, (0, 0, 0, 0), shifted.shape, (1, stride, stride, 1))
      yield tap, config


def _pooled_shape(shape, stride=2):
  return (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), shape[3])


def _pool_with_argmax(x):
  """3x3/2 SAME max-pool, and per output the first offset (row-major) that holds the maximum:
  the element whose gradient select-and-scatter (autodiff of `nn.max_pool`) would route to."""
  taps = [tap for tap, _ in _window_taps(x.shape, _pooled_shape(x.shape), x)]
  y = functools.reduce(jnp.maximum, taps)
  argmax = functools.reduce(jnp.minimum, [jnp.where(tap == y, jnp.uint8(k), jnp.uint8(255))
                                          for k, tap in enumerate(taps)])
  return y, argmax


def _unpool(argmax, g, in_shape):
  """The max-pool's VJP: each output's cotangent goes to the input its argmax names."""
  acc = jnp.promote_types(g.dtype, jnp.float32)  # bf16 cotangents are summed in fp32
  gx = jnp.zeros(in_shape[:3] + g.shape[3:], acc)
  zero = jnp.zeros((), acc)
  for k, (_, config) in enumerate(_window_taps(in_shape, g.shape)):
    gx = gx + jax.lax.pad(jnp.where(argmax == k, g.astype(acc), zero), zero, config)
  return gx.astype(g.dtype)


def _root_conv(x, kernel, dtype):
  """What `layers.he_conv(features, 7, 2, dtype=dtype)` computes, given its kernel."""
  return jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (2, 2), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _channel_loop(body, init, channels, max_chunks=8):
  """`body(start, size, carry) -> carry` over consecutive channel slices, in a loop.

  XLA's CPU compiler fuses the max-pool's strided views poorly: it materialises each of them (and
  an fp32 copy of bf16 activations), and it fused the forward's views into the backward, keeping
  them alive in between. Inside a loop those temporaries are one slice's size, and nothing is
  fused across the loop boundary.
  """
  chunks = max(d for d in range(1, max_chunks + 1) if channels % d == 0)
  size = channels // chunks
  return jax.lax.fori_loop(0, chunks, lambda i, carry: body(i * size, size, carry), init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def stem(x, kernel, dtype):
  """`nn.max_pool(root_conv(x), (3, 3), (2, 2), "SAME")`, memory-lean; `kernel` is HWIO.

  Autodiff would keep the conv output (at RevNet x4, 128x128x1024 per image) from the forward to
  the backward and differentiate `reduce_window(max)` into select-and-scatter, which XLA's CPU
  compiler expands into four int32 index arrays, a variadic reduce-window and a scatter, each the
  size of the padded conv output: with either backward that would be the encoder's peak memory
  (23 of 34 GB at batch 64, bf16). Here the forward runs conv and pool on channel slices and keeps only
  the pooled output and, per output, which window offset held the maximum (uint8: 1/8 of the
  conv output's bf16 bytes); the backward rebuilds the conv output's cotangent from those, one
  channel slice at a time, and differentiates the conv per slice. Same values and gradients as
  autodiff (ties go to the first maximum in row-major order, as in select-and-scatter).
  """
  return _stem_fwd(x, kernel, dtype)[0]


def _stem_fwd(x, kernel, dtype):
  out_shape = _pooled_shape(_pooled_shape(x.shape[:3] + kernel.shape[3:]))

  def body(start, size, carry):
    y, argmax = carry
    y_part, argmax_part = _pool_with_argmax(
        _root_conv(x, jax.lax.dynamic_slice_in_dim(kernel, start, size, axis=3), dtype))
    return (jax.lax.dynamic_update_slice_in_dim(y, y_part, start, axis=3),
            jax.lax.dynamic_update_slice_in_dim(argmax, argmax_part, start, axis=3))

  y, argmax = _channel_loop(body, (jnp.zeros(out_shape, dtype), jnp.zeros(out_shape, jnp.uint8)),
                            kernel.shape[3])
  return y, (x, kernel, argmax)


def _stem_bwd(dtype, residuals, g):
  x, kernel, argmax = residuals
  conv_shape = _pooled_shape(x.shape[:3] + kernel.shape[3:])

  def body(start, size, carry):
    g_x, g_kernel = carry
    part = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis=3)
    _, conv_vjp = jax.vjp(lambda x_, k_: _root_conv(x_, k_, dtype), x, part(kernel))
    g_x_part, g_kernel_part = conv_vjp(
        _unpool(part(argmax), part(g), conv_shape[:3] + (size,)).astype(dtype))
    return (g_x + g_x_part.astype(g_x.dtype),
            jax.lax.dynamic_update_slice_in_dim(g_kernel, g_kernel_part, start, axis=3))

  acc = jnp.promote_types(x.dtype, jnp.float32)
  g_x, g_kernel = _channel_loop(
      body, (jnp.zeros(x.shape, acc), jnp.zeros_like(kernel)), kernel.shape[3])
  return g_x.astype(x.dtype), g_kernel


stem.defvjp(_stem_fwd, _stem_bwd)


class _RootKernel(nn.Module):
  """The root conv's parameters exactly as `layers.he_conv(features, 7, 2)` names and
  initialises them (`root_conv/kernel`, HWIO, He init), for `stem` to apply."""
  features: int

  @nn.compact
  def __call__(self, in_channels: int):
    return self.param("kernel", layers.he_normal, (7, 7, in_channels, self.features), jnp.float32)


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
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    # The first unit rebuilds nothing: it reads its x2 from the stored stage input, because that
    # half holds zero-padded channels whose rounding error a train-mode BN would amplify by up to
    # 1/sqrt(eps).
    x2_first = jnp.split(x, 2, axis=-1)[1]

    def unit_backward(carry, unit_inputs):
      """One unit, last to first: rebuild its input from its output, then its VJP."""
      y, g_y = carry
      i, p, s = unit_inputs
      x2, y1 = jnp.split(y, 2, axis=-1)
      x2 = jnp.where(i == 0, x2_first, x2)
      fx, f_vjp = jax.vjp(lambda p_, x2_: _unit_apply(unit, train, p_, s, x2_)[0], p, x2)
      g_x2_direct, g_y1 = jnp.split(g_y, 2, axis=-1)
      g_p, g_x2_through_f = f_vjp(g_y1)
      x = jnp.concatenate([y1 - fx, x2], axis=-1)
      g_x = jnp.concatenate([g_y1, g_x2_direct + g_x2_through_f], axis=-1)
      return (x, g_x), g_p

    # A loop, not a Python loop: unrolled, nothing orders a unit's recomputation after the
    # gradients of the units above it, and XLA's CPU scheduler ran all the recomputations early,
    # keeping every unit's activations alive at once: the same temp memory as plain autodiff
    # (an optimization barrier did not help; the CPU compiler removes them). A loop body holds
    # one unit's activations at a time.
    (_, g_x), g_stacked = jax.lax.scan(
        unit_backward, (y, g_y), (jnp.arange(len(params)), stack(params), stack(stats)),
        reverse=True)
    g_params = [jax.tree.map(operator.itemgetter(i), g_stacked) for i in range(len(params))]
    return g_params, jax.tree.map(jnp.zeros_like, stats), g_x

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
    kernel = _RootKernel(4 * self.base_width * self.width, name="root_conv")(x.shape[-1])
    h = stem(x, kernel, self.dtype)
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
