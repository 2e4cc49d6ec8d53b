"""Building blocks shared by G, D and E: spectral norm, conditional BN, self-attention, res-blocks.

Every module is pure Linen: weights live in `params`, batch-norm moments in `batch_stats`, and the
spectral-norm power-iteration state (u, sigma) in its own collection `SPECTRAL`, so an optimizer
never sees it and evaluation can freeze it.
"""

import functools
import math
from typing import Any

import flax.linen as nn
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
  """A Conv layer (SAME padding) with a spectrally normalised kernel."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    k = self.kernel_size
    conv = nn.Conv(self.features, (k, k), padding="SAME", use_bias=self.use_bias,
                   kernel_init=orthogonal(), dtype=self.dtype, name="conv")
    return nn.SpectralNorm(conv, n_steps=1, epsilon=self.sn_eps,
                           collection_name=SPECTRAL)(x, update_stats=train)


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
  """BigGAN ResBlock-up: CBN-ReLU-up-conv3-CBN-ReLU-conv3, skip up-conv1x1."""
  features: int
  bn_eps: float = 1e-4
  bn_momentum: float = 0.9
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cond, train: bool):
    cbn = lambda name: ConditionalBatchNorm(self.bn_eps, self.bn_momentum, self.sn_eps,
                                            self.dtype, name=name)
    conv = lambda k, name: SNConv(self.features, k, sn_eps=self.sn_eps, dtype=self.dtype,
                                  name=name)
    h = nn.relu(cbn("cbn1")(x, cond, train))
    h = conv(3, "conv1")(upsample2(h), train)
    h = nn.relu(cbn("cbn2")(h, cond, train))
    h = conv(3, "conv2")(h, train)
    return h + conv(1, "conv_sc")(upsample2(x), train)


class DBlock(nn.Module):
  """BigGAN ResBlock-down: (ReLU)-conv3-ReLU-conv3-avgpool, skip conv1x1 and avgpool.

  The first block (`preactivation=False`) sees raw pixels: no ReLU, and its skip pools before the
  1x1 conv (cheaper, as in BigGAN). The skip conv exists only when channels or size change.
  """
  features: int
  downsample: bool = True
  preactivation: bool = True
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda k, name: SNConv(self.features, k, sn_eps=self.sn_eps, dtype=self.dtype,
                                  name=name)
    h = nn.relu(x) if self.preactivation else x
    h = conv(3, "conv1")(h, train)
    h = conv(3, "conv2")(nn.relu(h), train)
    if self.downsample:
      h = avg_pool2(h)
    skip = x
    learnable_skip = self.downsample or x.shape[-1] != self.features
    if self.preactivation:
      skip = conv(1, "conv_sc")(skip, train) if learnable_skip else skip
      skip = avg_pool2(skip) if self.downsample else skip
    else:
      skip = avg_pool2(skip) if self.downsample else skip
      skip = conv(1, "conv_sc")(skip, train) if learnable_skip else skip
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
