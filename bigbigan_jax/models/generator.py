"""BigGAN generator, unconditional ("single-label"), hierarchical z (BigGAN; docs/design.md#generator)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigbigan_jax.models import layers

# Channel multipliers of the input layer and of every ResBlock-up's output, per resolution.
G_CHANNELS = {
    32: (4, 4, 4, 4),
    64: (16, 16, 8, 4, 2),
    128: (16, 16, 8, 4, 2, 1),
    256: (16, 16, 8, 8, 4, 2, 1),
}


def num_z_chunks(resolution: int) -> int:
  """One z chunk for the input layer plus one per ResBlock-up."""
  return len(G_CHANNELS[resolution])


class Generator(nn.Module):
  """x = G(z): SN-linear to 4x4, ResBlock-ups with conditional BN on [z_k, e], attention, tanh.

  Attributes:
    resolution: output size, a key of `G_CHANNELS`.
    ch: channel width multiplier (96 in the paper).
    shared_dim: size of the learned single-label embedding e (0: condition on z chunks only).
    attn_res: resolution after which the self-attention block sits (0: none).
    out_channels: image channels (3 for RGB).
    remat: recompute each ResBlock-up's and the attention block's activations on the backward
      pass instead of storing them (`nn.remat`; same parameters, less memory).
  """
  resolution: int = 128
  ch: int = 96
  shared_dim: int = 128
  attn_res: int = 64
  out_channels: int = 3
  bn_eps: float = 1e-4
  bn_momentum: float = 0.9
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, z, train: bool = True):
    mults = G_CHANNELS[self.resolution]
    chunks = jnp.split(z, len(mults), axis=-1)
    cond = chunks[1:]
    if self.shared_dim:
      # One learned vector: the class embedding of BigGAN with a single class.
      shared = self.param("shared", layers.orthogonal(), (1, self.shared_dim))
      shared = jnp.broadcast_to(shared, (z.shape[0], self.shared_dim)).astype(z.dtype)
      cond = [jnp.concatenate([shared, c], axis=-1) for c in cond]
    cond = [c.astype(self.dtype) for c in cond]

    kw = dict(sn_eps=self.sn_eps, dtype=self.dtype)
    block = layers.maybe_remat(layers.GBlock, self.remat, train_argnum=3)
    attention = layers.maybe_remat(layers.SelfAttention, self.remat, train_argnum=2)
    h = layers.SNDense(4 * 4 * mults[0] * self.ch, name="linear", **kw)(
        chunks[0].astype(self.dtype), train)
    h = h.reshape(z.shape[0], 4, 4, mults[0] * self.ch)
    for i, mult in enumerate(mults[1:]):
      h = block(mult * self.ch, self.bn_eps, self.bn_momentum, name=f"block{i}", **kw)(
          h, cond[i], train)
      if h.shape[1] == self.attn_res:
        h = attention(name="attention", **kw)(h, train)
    h = layers.batch_norm(train, self.bn_eps, self.bn_momentum, self.dtype, name="out_bn")(h)
    h = layers.SNConv(self.out_channels, 3, name="out_conv", **kw)(nn.relu(h), train)
    return jnp.tanh(h.astype(jnp.float32))
