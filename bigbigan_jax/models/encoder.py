"""The encoder E: a ResNet-v2 or RevNet trunk and a residual-MLP head to z (docs/design.md#encoder).

Standard batch norm (global batch statistics), He init, no spectral norm.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigbigan_jax.models import layers
from bigbigan_jax.models import revnet

RESNET_UNITS = {"resnet_v2_50": (3, 4, 6, 3), "resnet_v2_101": (3, 4, 23, 3)}
TRUNKS = tuple(RESNET_UNITS) + ("revnet_50",)
OUTPUTS = ("stochastic", "deterministic", "uniform")


class BottleneckV2(nn.Module):
  """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (x4)."""
  features: int  # the bottleneck width; the unit outputs 4 * features
  strides: int = 1
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: layers.batch_norm(train, self.bn_eps, self.bn_momentum, self.dtype, name=name)
    conv = lambda f, k, s, name: layers.he_conv(f, k, s, dtype=self.dtype, name=name)
    preact = nn.relu(bn("bn1")(x))
    skip = x
    if self.strides != 1 or x.shape[-1] != 4 * self.features:
      skip = conv(4 * self.features, 1, self.strides, "conv_sc")(preact)
    h = conv(self.features, 1, 1, "conv1")(preact)
    h = conv(self.features, 3, self.strides, "conv2")(nn.relu(bn("bn2")(h)))
    h = conv(4 * self.features, 1, 1, "conv3")(nn.relu(bn("bn3")(h)))
    return h + skip


class ResNetV2(nn.Module):
  """ResNet-v2 trunk: 7x7/2 conv, 3x3/2 max-pool, bottleneck stages, BN-ReLU, average pool.

  `remat` recomputes each bottleneck unit's activations on the backward pass.
  """
  units: tuple = (3, 4, 6, 3)
  width: int = 1
  base_width: int = 64  # channels of the root conv at width 1 (64 in ResNet-50)
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    h = layers.he_conv(self.base_width * self.width, 7, 2, dtype=self.dtype, name="root_conv")(x)
    h = nn.max_pool(h, (3, 3), strides=(2, 2), padding="SAME")
    unit = layers.maybe_remat(BottleneckV2, self.remat, train_argnum=2)
    for stage, num_units in enumerate(self.units):
      for u in range(num_units):
        strides = 2 if stage > 0 and u == 0 else 1
        h = unit(self.base_width * self.width * 2**stage, strides, self.bn_momentum,
                 self.bn_eps, self.dtype, name=f"stage{stage}_unit{u}")(h, train)
    h = nn.relu(layers.batch_norm(train, self.bn_eps, self.bn_momentum, self.dtype,
                                  name="final_bn")(h))
    return jnp.mean(h.astype(jnp.float32), axis=(1, 2))


class Encoder(nn.Module):
  """E(x) -> {'avepool_feat', 'bn_crelu_feat', 'z_mean', 'z_stdev', 'z_sample'}.

  Attributes:
    trunk: 'resnet_v2_50', 'resnet_v2_101' or 'revnet_50'.
    width: trunk width multiplier (1, 2, 4).
    base_width: root channels at width 1 (64 for the paper's nets; small for CPU tests).
    output: 'stochastic' (z = mu + softplus(s) * eps, eps from the rng named 'sample'),
      'deterministic' (z = mu) or 'uniform' (z = tanh(linear), for a uniform P_z).
    reversible_backward: RevNet only; recompute activations on the backward pass.
    units: units per stage; None = the trunk's standard depth (e.g. (3, 4, 6, 3) for -50).
      Only the tiny `runlocal` configs change it, to compile fast.
    remat: ResNet-v2 only; recompute each bottleneck unit's activations on the backward pass
      (`nn.remat`, same parameters). A RevNet saves memory with `reversible_backward` instead.
  """
  z_dim: int = 120
  trunk: str = "resnet_v2_50"
  width: int = 1
  base_width: int = 64
  head_width: int = 4096
  head_blocks: int = 2
  output: str = "stochastic"
  reversible_backward: bool = True
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  dtype: Any = jnp.float32
  units: Optional[tuple] = None
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = x.astype(self.dtype)
    if self.trunk == "revnet_50":
      feat = revnet.RevNet(width=self.width, base_width=self.base_width,
                           units=tuple(self.units or revnet.REVNET_UNITS),
                           reversible_backward=self.reversible_backward,
                           bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype,
                           name="trunk")(x, train)
    else:
      feat = ResNetV2(tuple(self.units or RESNET_UNITS[self.trunk]), self.width, self.base_width,
                      self.bn_momentum, self.bn_eps, self.dtype, self.remat, name="trunk")(
                          x, train)
    # The hub module's "BN+CReLU" features: BN without learned scale or offset, then CReLU.
    normed = layers.batch_norm(train, self.bn_eps, self.bn_momentum, jnp.float32,
                               use_scale=False, use_bias=False, name="feat_bn")(feat)
    out = {"avepool_feat": feat,
           "bn_crelu_feat": jnp.concatenate([nn.relu(normed), nn.relu(-normed)], axis=-1)}

    h = layers.ResidualMLP(self.head_width, self.head_blocks, spectral_norm=False,
                           dtype=self.dtype, name="head")(feat.astype(self.dtype), train)
    if self.output == "stochastic":
      mu, sigma_hat = jnp.split(
          nn.Dense(2 * self.z_dim, dtype=self.dtype, name="to_z")(h).astype(jnp.float32), 2, -1)
      sigma = nn.softplus(sigma_hat)
      z = mu
      if self.has_rng("sample"):  # without one (e.g. plain inference), z_sample is the mean
        z = mu + sigma * jax.random.normal(self.make_rng("sample"), mu.shape, jnp.float32)
      out.update(z_mean=mu, z_stdev=sigma, z_sample=z)
    elif self.output == "deterministic":
      mu = nn.Dense(self.z_dim, dtype=self.dtype, name="to_z")(h).astype(jnp.float32)
      out.update(z_mean=mu, z_stdev=jnp.zeros_like(mu), z_sample=mu)
    elif self.output == "uniform":
      z = jnp.tanh(nn.Dense(self.z_dim, dtype=self.dtype, name="to_z")(h).astype(jnp.float32))
      out.update(z_mean=z, z_stdev=jnp.zeros_like(z), z_sample=z)
    else:
      raise ValueError(f"unknown encoder output {self.output!r}; use one of {OUTPUTS}")
    return out
