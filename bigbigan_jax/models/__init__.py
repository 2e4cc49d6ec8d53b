"""The networks of BigBiGAN and BiGAN, built from a config.

`build(config)` returns a `Networks` triple of unbound Linen modules; the encoder is None in
GAN mode. Each network is pure: `module.apply(variables, ..., train=...)` with variables
`{'params', 'batch_stats', 'spectral'}` (whichever it has).
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigbigan_jax.models.bigan_mlp import MLPDiscriminator, MLPEncoder, MLPGenerator
from bigbigan_jax.models.discriminator import Discriminator
from bigbigan_jax.models.encoder import Encoder
from bigbigan_jax.models.generator import Generator


@dataclasses.dataclass(frozen=True)
class Networks:
  generator: nn.Module
  encoder: Optional[nn.Module]
  discriminator: nn.Module


def compute_dtype(config) -> Any:
  return jnp.dtype(config.get("dtype", "float32"))


def build(config) -> Networks:
  """Builds G, E (or None) and D for `config.model` (family 'bigbigan' or 'bigan_mlp')."""
  m = config.model
  dtype = compute_dtype(config)
  loss = config.loss
  if m.get("family", "bigbigan") == "bigan_mlp":
    kw = dict(use_bias=m.get("use_bias", True), init_stddev=m.get("init_stddev"), dtype=dtype)
    encoder = MLPEncoder(m.z_dim, m.hidden, **kw) if m.encoder.enabled else None
    joint = encoder is not None and config.get("method", "bigan") == "bigan"  # else a GAN's D(x)
    return Networks(MLPGenerator(m.hidden, m.x_dim, **kw), encoder,
                    MLPDiscriminator(m.hidden, use_z=joint, **kw))
  g, d, e = m.generator, m.discriminator, m.encoder
  generator = Generator(g.resolution, g.ch, g.shared_dim, g.attn_res, m.image_channels,
                        g.bn_eps, g.bn_momentum, g.sn_eps, dtype, remat=g.get("remat", False))
  encoder = None
  if e.enabled:
    encoder = Encoder(m.z_dim, e.trunk, e.width, e.base_width, e.head_width, e.head_blocks,
                      e.output, e.reversible_backward, e.bn_momentum, e.bn_eps, dtype,
                      units=e.get("units"), remat=e.get("remat", False))
  discriminator = Discriminator(
      g.resolution, d.ch, d.attn_res, d.mlp_width, d.mlp_blocks,
      use_x=loss.s_x, use_z=loss.s_z and e.enabled, use_xz=loss.s_xz and e.enabled,
      sn_eps=d.sn_eps, dtype=dtype, remat=d.get("remat", False))
  return Networks(generator, encoder, discriminator)


def input_shapes(config, batch_size: int) -> dict:
  """Shapes of z, of E's input image and of the G/D image for a batch."""
  m = config.model
  if m.get("family", "bigbigan") == "bigan_mlp":
    return {"z": (batch_size, m.z_dim), "x_e": (batch_size, m.x_dim), "x_d": (batch_size, m.x_dim)}
  res_g, res_e = m.generator.resolution, m.encoder.resolution
  c = m.image_channels
  return {"z": (batch_size, m.z_dim), "x_e": (batch_size, res_e, res_e, c),
          "x_d": (batch_size, res_g, res_g, c)}


def init_variables(networks: Networks, config, rng, batch_size: int = 2) -> dict:
  """Initial variables of every network: {'generator': ..., 'encoder': ..., 'discriminator': ...}.

  Wrap in `jax.eval_shape` to get shapes without allocating (how `summary` sizes paper models).
  """
  shapes = input_shapes(config, batch_size)
  z = jnp.zeros(shapes["z"], jnp.float32)
  keys = jax.random.split(rng, 4)
  out = {"generator": networks.generator.init(keys[0], z, train=True),
         "discriminator": networks.discriminator.init(
             keys[1], jnp.zeros(shapes["x_d"], jnp.float32), z, train=True)}
  if networks.encoder is not None:
    out["encoder"] = networks.encoder.init({"params": keys[2], "sample": keys[3]},
                                           jnp.zeros(shapes["x_e"], jnp.float32), train=True)
  return out
