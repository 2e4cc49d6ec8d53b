"""Building blocks shared by G, D and E: spectral norm, conditional BN, self-attention, res-blocks.

Every module is pure Linen: weights live in `params`, batch-norm moments in `batch_stats`, and the
spectral-norm power-iteration state (u, sigma) in its own collection `SPECTRAL`, so an optimizer
never sees it and evaluation can freeze it.
"""

import functools
import math
from typing import Any

import flax.linen as nn
from flax.linen import dtypes as flax_dtypes
import jax
import jax.numpy as jnp

from bigbigan_jax.errors import UserError

SPECTRAL = "spectral"  # collection holding the spectral-norm u vectors and sigma estimates

orthogonal = nn.initializers.orthogonal
# He init for the encoder (a standard ResNet, no spectral norm).
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")


def d_view(images, resolution):
  """Average-pools [..., H, W, C] images 2x2 until H == W == resolution (NumPy or JAX arrays).

  G and D work at this resolution when E's input resolution is higher.
  """
  size = images.shape[-3]
  factor = size // resolution if resolution > 0 else 0
  if (images.shape[-2] != size or factor < 1 or factor * resolution != size
      or factor & (factor - 1)):
    raise UserError(f"cannot average-pool {images.shape[-3]}x{images.shape[-2]} images to "
                    f"{resolution}x{resolution}: make the encoder resolution a power-of-two "
                    "multiple of the generator resolution")
  while images.shape[-3] > resolution:
    *lead, h, w, c = images.shape
    images = images.reshape(*lead, h // 2, 2, w // 2, 2, c).mean(axis=(-4, -2))
  return images


@functools.cache
def _rematerialised(module_cls, train_argnum: int):
  return nn.remat(module_cls, static_argnums=(train_argnum,))


def maybe_remat(module_cls, remat: bool, train_argnum: int):
  """`module_cls`, or with `remat` its `nn.remat` version, which stores only the block's input
  and recomputes its activations on the backward pass (less memory, about one more forward).

  Variable names and shapes are the same either way, so checkpoints are interchangeable.
  `train_argnum` is the position of the `train` flag in `__call__` (`self` is 0): a Python bool
  that picks BN/SN behaviour, so it must stay static.
  """
  return _rematerialised(module_cls, train_argnum) if remat else module_cls


def he_conv(features: int, kernel: int, strides: int = 1, *, dtype, name: str) -> nn.Conv:
  """The encoder's convolution: SAME padding, no bias (BN follows), He init, no spectral norm."""
  return nn.Conv(features, (kernel, kernel), (strides, strides), padding="SAME", use_bias=False,
                 kernel_init=he_normal, dtype=dtype, name=name)


class SNDense(nn.Module):
  """A Dense layer whose kernel is divided by its top singular value (one power step per call)."""
  features: int
  use_bias: bool = True
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dense = nn.Dense(self.features, use_bias=self.use_bias, kernel_init=orthogonal(),
                     dtype=self.dtype, name="dense")
    return nn.SpectralNorm(dense, n_steps=1, epsilon=self.sn_eps,
                           collection_name=SPECTRAL)(x, update_stats=train)


class SNConv(nn.Module):
  """A Conv layer (SAME padding) with a spectrally normalised kernel.

  `resample='up'` is `conv(upsample2(x))` and `resample='down'` is `avg_pool2(conv(x))`, each
  computed without its redundant products (see `ResampledConv`); the weights are the same.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  sn_eps: float = 1e-4
  resample: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    k = self.kernel_size
    if self.resample is None:
      conv = nn.Conv(self.features, (k, k), padding="SAME", use_bias=self.use_bias,
                     kernel_init=orthogonal(), dtype=self.dtype, name="conv")
    else:
      conv = ResampledConv(self.features, k, self.resample, use_bias=self.use_bias,
                           dtype=self.dtype, name="conv")
    return nn.SpectralNorm(conv, n_steps=1, epsilon=self.sn_eps,
                           collection_name=SPECTRAL)(x, update_stats=train)


def _up_taps(kernel, axis: int):
  """Along `axis` (3 taps: before, centre, after), the 2-tap kernels of the two output phases of
  nearest 2x upsampling then convolving: phase 0 reads low-res offsets -1, 0 and phase 1 0, +1.
  Returns `[2 (phase), ...]` with `axis` of size 2."""
  w = [jnp.take(kernel, i, axis) for i in range(3)]
  return jnp.stack([jnp.stack([w[0], w[1] + w[2]], axis), jnp.stack([w[0] + w[1], w[2]], axis)])


def _down_taps(kernel, axis: int):
  """Along `axis`, the 4-tap kernel of convolving then averaging 2 neighbours (stride 2)."""
  w = [jnp.take(kernel, i, axis) for i in range(3)]
  return jnp.stack([w[0], w[0] + w[1], w[1] + w[2], w[2]], axis) * 0.5


class ResampledConv(nn.Module):
  """A SAME convolution fused with nearest 2x upsampling before it or 2x2 average pooling after.

  Same parameters (names, shapes, init) as `nn.Conv`, same function up to float rounding:
  - 'up', k = 3: each of the four output phases of `conv3x3(upsample2(x))` is a 2x2 convolution of
    `x`; one 2x2 VALID convolution of padded `x` with 4x the output channels computes all four
    (0.44-0.7x the products, depending on the size);
  - 'down', k = 3: `avg_pool2(conv3x3(x))` is one 4x4 convolution of stride 2 (0.44x);
  - k = 1: the pointwise convolution commutes with both resamplings (0.25x).
  """
  features: int
  kernel_size: int
  resample: str
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", orthogonal(), (k, k, c, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) \
        if self.use_bias else None
    if self.resample not in ("up", "down") or k not in (1, 3):
      raise ValueError(f"ResampledConv: resample={self.resample!r}, kernel_size={k}")
    if k == 3 and self.resample == "up":  # [r, s, c, (a, b, o)]: tap (r, s) of phase (a, b)
      kernel = _up_taps(_up_taps(kernel, 0), 2).transpose(2, 3, 4, 1, 0, 5)
      kernel = kernel.reshape(2, 2, c, 4 * self.features)
    elif k == 3:
      kernel = _down_taps(_down_taps(kernel, 0), 1)
    # The fused kernels are sums of float32 weights, formed before any cast to `dtype`.
    x, kernel, bias = flax_dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    conv = functools.partial(jax.lax.conv_general_dilated, padding="VALID",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if k == 1:
      if self.resample == "up":
        y = upsample2(conv(x, kernel, (1, 1)))
      else:
        y = conv(avg_pool2(x), kernel, (1, 1))
    elif self.resample == "up":
      n, h, w, _ = x.shape
      y = conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel, (1, 1))
      y = y.reshape(n, h + 1, w + 1, 2, 2, self.features)
      phases = [[y[:, a:a + h, b:b + w, a, b] for b in (0, 1)] for a in (0, 1)]
      y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
      y = y.reshape(n, 2 * h, 2 * w, self.features)
    else:
      y = conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel, (2, 2))
    return y if bias is None else y + bias


def batch_norm(train: bool, eps: float, momentum: float, dtype, **kwargs):
  """BatchNorm with statistics over the whole (global, cross-replica) batch.

  Under `jax.jit` with the batch sharded over the 'data' mesh axis, the batch mean is a global
  reduction: XLA inserts the all-reduce, so no `axis_name` is needed.
  """
  return nn.BatchNorm(use_running_average=not train, epsilon=eps, momentum=momentum,
                      dtype=dtype, **kwargs)


class ConditionalBatchNorm(nn.Module):
  """`(1 + W_gamma c) * BN(x) + W_beta c` with parameter-free BN and SN-linear W without bias."""
  bn_eps: float = 1e-4
  bn_momentum: float = 0.9
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cond, train: bool):
    channels = x.shape[-1]
    x = batch_norm(train, self.bn_eps, self.bn_momentum, self.dtype,
                   use_scale=False, use_bias=False, name="bn")(x)
    gain = SNDense(channels, use_bias=False, sn_eps=self.sn_eps, dtype=self.dtype,
                   name="gain")(cond, train)
    bias = SNDense(channels, use_bias=False, sn_eps=self.sn_eps, dtype=self.dtype,
                   name="bias")(cond, train)
    return x * (1 + gain[:, None, None, :]) + bias[:, None, None, :]


def _max_pool2(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def avg_pool2(x):
  """2x2 average pooling with stride 2 (the BigGAN downsampling)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def upsample2(x):
  """Nearest-neighbour 2x upsampling."""
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="nearest")


class SelfAttention(nn.Module):
  """SAGAN non-local block; the output is added with a learned gain that starts at 0 (identity)."""
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    n, h, w, c = x.shape
    conv = lambda f, name: SNConv(f, 1, use_bias=False, sn_eps=self.sn_eps,
                                  dtype=self.dtype, name=name)
    theta = conv(c // 8, "theta")(x, train).reshape(n, h * w, c // 8)
    phi = _max_pool2(conv(c // 8, "phi")(x, train)).reshape(n, h * w // 4, c // 8)
    g = _max_pool2(conv(c // 2, "g")(x, train)).reshape(n, h * w // 4, c // 2)
    attention = nn.softmax(jnp.einsum("nqc,nkc->nqk", theta, phi), axis=-1)
    o = jnp.einsum("nqk,nkc->nqc", attention, g).reshape(n, h, w, c // 2)
    o = conv(c, "out")(o, train)
    gain = self.param("gain", nn.initializers.zeros, ())
    return x + gain.astype(o.dtype) * o


class GBlock(nn.Module):
  """BigGAN ResBlock-up: CBN-ReLU-up-conv3-CBN-ReLU-conv3, skip up-conv1x1 (upsampling fused into
  the convolutions, `ResampledConv`)."""
  features: int
  bn_eps: float = 1e-4
  bn_momentum: float = 0.9
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cond, train: bool):
    cbn = lambda name: ConditionalBatchNorm(self.bn_eps, self.bn_momentum, self.sn_eps,
                                            self.dtype, name=name)
    conv = lambda k, name, resample=None: SNConv(self.features, k, sn_eps=self.sn_eps,
                                                 resample=resample, dtype=self.dtype, name=name)
    h = nn.relu(cbn("cbn1")(x, cond, train))
    h = conv(3, "conv1", "up")(h, train)
    h = nn.relu(cbn("cbn2")(h, cond, train))
    h = conv(3, "conv2")(h, train)
    return h + conv(1, "conv_sc", "up")(x, train)


class DBlock(nn.Module):
  """BigGAN ResBlock-down: (ReLU)-conv3-ReLU-conv3-avgpool, skip conv1x1 and avgpool.

  The first block (`preactivation=False`) sees raw pixels: no ReLU. The skip conv exists only when
  channels or size change. Pooling is fused into conv2 and the skip (`ResampledConv`).
  """
  features: int
  downsample: bool = True
  preactivation: bool = True
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    down = "down" if self.downsample else None
    conv = lambda k, name, resample=None: SNConv(self.features, k, sn_eps=self.sn_eps,
                                                 resample=resample, dtype=self.dtype, name=name)
    h = nn.relu(x) if self.preactivation else x
    h = conv(3, "conv1")(h, train)
    h = conv(3, "conv2", down)(nn.relu(h), train)
    skip = x
    if self.downsample or x.shape[-1] != self.features:  # a learnable skip
      skip = conv(1, "conv_sc", down)(skip, train)
    return h + skip


class ResidualMLP(nn.Module):
  """`2 * num_blocks` dense layers of `width` as residual blocks, ReLU, with a final ReLU.

  Used for D's H (on z) and J (on [F(x), H(z)]), with spectral norm, and for E's head, without.
  The first block projects its skip when the input width differs.
  """
  width: int
  num_blocks: int
  spectral_norm: bool = True
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  def _dense(self, name):
    if self.spectral_norm:
      return SNDense(self.width, sn_eps=self.sn_eps, dtype=self.dtype, name=name)
    dense = nn.Dense(self.width, kernel_init=he_normal, dtype=self.dtype, name=name)
    return lambda x, train: dense(x)

  @nn.compact
  def __call__(self, x, train: bool):
    for b in range(self.num_blocks):
      h = self._dense(f"block{b}_dense1")(nn.relu(x) if b else x, train)
      h = self._dense(f"block{b}_dense2")(nn.relu(h), train)
      skip = x
      if x.shape[-1] != self.width:
        skip = self._dense(f"block{b}_skip")(x, train)
      x = h + skip
    return nn.relu(x)


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
