"""The BiGAN (2017) permutation-invariant MNIST networks (BiGAN §4.2; docs/design.md#bigan-2017-mnist): 784-d x, 50-d z, MLPs."""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from bigbigan_jax.models import layers


def _bn(train, dtype):
  # BN without gain or bias, as in the BiGAN paper's MNIST models.
  return layers.batch_norm(train, 1e-5, 0.9, dtype, use_scale=False, use_bias=False)


def _dense(module, features):
  """The MLPs' fully connected layer. The BiGAN code's layers had no bias and N(0, 0.02²)
  weights (`use_bias=False, init_stddev=0.02`); flax's default is a bias and LeCun init."""
  init = (nn.initializers.lecun_normal() if module.init_stddev is None
          else nn.initializers.normal(module.init_stddev))
  return nn.Dense(features, use_bias=module.use_bias, kernel_init=init, dtype=module.dtype)


class MLPGenerator(nn.Module):
  """ReLU(BN(FC 1024 z)) -> ReLU(BN(FC 1024 h + FC_z 1024 z)) -> sigmoid(FC 784)."""
  hidden: int = 1024
  out_dim: int = 784
  use_bias: bool = True
  init_stddev: Optional[float] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = True):
    z = z.astype(self.dtype)
    h = nn.relu(_bn(train, self.dtype)(_dense(self, self.hidden)(z)))
    h = _dense(self, self.hidden)(h) + _dense(self, self.hidden)(z)
    h = nn.relu(_bn(train, self.dtype)(h))
    return nn.sigmoid(_dense(self, self.out_dim)(h).astype(jnp.float32))


class MLPEncoder(nn.Module):
  """LReLU(FC 1024 x) -> LReLU(BN(FC 1024)) -> 2 sigmoid(FC 50) - 1, in the encoder's output dict.

  `avepool_feat` is the penultimate layer here (the paper's "E's penultimate layer" features).
  """
  z_dim: int = 50
  hidden: int = 1024
  use_bias: bool = True
  init_stddev: Optional[float] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    h = nn.leaky_relu(_dense(self, self.hidden)(x), 0.2)
    h = nn.leaky_relu(_bn(train, self.dtype)(_dense(self, self.hidden)(h)), 0.2)
    logits = _dense(self, self.z_dim)(h).astype(jnp.float32)
    z = 2 * nn.sigmoid(logits) - 1
    feat = h.astype(jnp.float32)
    return {"avepool_feat": feat, "bn_crelu_feat": jnp.concatenate([nn.relu(feat), nn.relu(-feat)], -1),
            "z_mean": z, "z_stdev": jnp.zeros_like(z), "z_sample": z,
            "z_logits": logits}  # for the latent regressors' sigmoid cross-entropy


class MLPDiscriminator(nn.Module):
  """D(x, z): LReLU(FC 1024 x) -> LReLU(BN(FC 1024 h + FC_z 1024 z)) -> FC 1 (joint score only).

  With `use_z=False` it is the plain GAN discriminator of the "D features" baseline. Besides the
  scores it returns 'features', its last hidden layer (that baseline's representation).
  """
  hidden: int = 1024
  use_z: bool = True
  use_bias: bool = True
  init_stddev: Optional[float] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, z=None, train: bool = True):
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    h = nn.leaky_relu(_dense(self, self.hidden)(x), 0.2)
    h = _dense(self, self.hidden)(h)
    if self.use_z:
      h = h + _dense(self, self.hidden)(z.astype(self.dtype))
    h = nn.leaky_relu(_bn(train, self.dtype)(h), 0.2)
    score = _dense(self, 1)(h)[:, 0].astype(jnp.float32)
    out = {"s_x": None, "s_z": None, "s_xz": None, "features": h.astype(jnp.float32)}
    out["s_xz" if self.use_z else "s_x"] = score
    return out
