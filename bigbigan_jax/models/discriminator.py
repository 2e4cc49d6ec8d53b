"""The BigBiGAN discriminator: F on images, H on latents, J on both, and three score heads (docs/design.md#discriminator)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bigbigan_jax.models import layers

# Output channel multipliers of F's ResBlocks and whether each one downsamples, per resolution.
D_BLOCKS = {
    32: ((4, True), (4, True), (4, False), (4, False)),
    64: ((1, True), (2, True), (4, True), (8, True), (16, False)),
    128: ((1, True), (2, True), (4, True), (8, True), (16, True), (16, False)),
    256: ((1, True), (2, True), (4, True), (8, True), (8, True), (16, True), (16, False)),
}


class ImageTrunk(nn.Module):
  """F: the BigGAN D trunk, ResBlock-downs then ReLU and a global *sum* pool.

  `remat` recomputes each ResBlock's and the attention block's activations on the backward pass.
  """
  resolution: int = 128
  ch: int = 96
  attn_res: int = 64
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    h = x.astype(self.dtype)
    kw = dict(sn_eps=self.sn_eps, dtype=self.dtype)
    block = layers.maybe_remat(layers.DBlock, self.remat, train_argnum=2)
    attention = layers.maybe_remat(layers.SelfAttention, self.remat, train_argnum=2)
    attended = False
    for i, (mult, down) in enumerate(D_BLOCKS[self.resolution]):
      h = block(mult * self.ch, down, preactivation=i > 0, name=f"block{i}", **kw)(h, train)
      if not attended and h.shape[1] == self.attn_res:
        h = attention(name="attention", **kw)(h, train)
        attended = True
    return jnp.sum(nn.relu(h), axis=(1, 2))


class Discriminator(nn.Module):
  """D(x, z) -> {'s_x', 's_z', 's_xz'}; a score is None when its part is switched off.

  Attributes:
    use_x / use_z / use_xz: build the unary image score, the unary latent score, and the joint
      score. GAN mode is `use_z=use_xz=False` (F and s_x only: an unconditional BigGAN D).
    remat: rematerialise F's ResBlocks and attention (`nn.remat`; same parameters).
  """
  resolution: int = 128
  ch: int = 96
  attn_res: int = 64
  mlp_width: int = 2048
  mlp_blocks: int = 4
  use_x: bool = True
  use_z: bool = True
  use_xz: bool = True
  sn_eps: float = 1e-4
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, z=None, train: bool = True):
    kw = dict(sn_eps=self.sn_eps, dtype=self.dtype)
    head = lambda name: layers.SNDense(1, name=name, **kw)
    scores = {"s_x": None, "s_z": None, "s_xz": None}
    fx = ImageTrunk(self.resolution, self.ch, self.attn_res, remat=self.remat, name="F", **kw)(
        x, train)
    if self.use_x:
      scores["s_x"] = head("theta_x")(fx, train)[:, 0]
    if self.use_z or self.use_xz:
      hz = layers.ResidualMLP(self.mlp_width, self.mlp_blocks, name="H", **kw)(
          z.astype(self.dtype), train)
      if self.use_z:
        scores["s_z"] = head("theta_z")(hz, train)[:, 0]
      if self.use_xz:
        jxz = layers.ResidualMLP(self.mlp_width, self.mlp_blocks, name="J", **kw)(
            jnp.concatenate([fx, hz], axis=-1), train)
        scores["s_xz"] = head("theta_xz")(jxz, train)[:, 0]
    return {k: None if v is None else v.astype(jnp.float32) for k, v in scores.items()}
