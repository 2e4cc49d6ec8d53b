"""The networks of BigBiGAN and BiGAN (2017), built from a config.

`build(config)` returns a `Networks`: the three unbound Linen modules (the encoder is None in
GAN mode) and everything in which the two model families differ, so that no other module needs
to ask which family it has: how pipeline images become E's and D's input, how G's output becomes
images, which network gives features. Each network is pure: `module.apply(variables, ...,
train=...)` with variables `{'params', 'batch_stats', 'spectral'}` (whichever it has).
"""

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigbigan_jax.models.bigan_mlp import MLPDiscriminator, MLPEncoder, MLPGenerator
from bigbigan_jax.models.discriminator import Discriminator
from bigbigan_jax.models.encoder import Encoder
from bigbigan_jax.models.generator import Generator
from bigbigan_jax.models.layers import d_view as pool_to

# The encoder outputs `extract` and the evaluators use as features.
FEATURE_OUTPUTS = ("avepool_feat", "bn_crelu_feat", "z_mean")


@dataclasses.dataclass(frozen=True)
class Networks:
  """G, E (or None) and D, and the family's views of the data.

  Attributes:
    image_size: resolution of the pipeline's images (E's input; G's without an encoder).
    generator_resolution: resolution of G's images and of D's image input.
    image_channels: channels of the images.
    to_model_space: pipeline images [N, S, S, C] in [-1, 1] -> what E and D consume.
    to_images: G's output -> [N, H, W, C] images in [-1, 1].
    d_view: E's input (model space) -> D's image input (average-pooled to G's resolution).
    features_from: the network whose outputs are the representation ('encoder',
      'discriminator' for the BiGAN "D features" baseline, or None).
    feature_keys: the outputs `encode` provides as features.
  """
  generator: nn.Module
  encoder: Optional[nn.Module]
  discriminator: nn.Module
  image_size: int
  generator_resolution: int
  image_channels: int
  to_model_space: Callable[[Any], Any]
  to_images: Callable[[Any], Any]
  d_view: Callable[[Any], Any]
  features_from: Optional[str]
  feature_keys: tuple


def sample_z(key, shape, z_dist: str):
  """Latents from the prior P_z: N(0, I), or U(-1, 1) with `z_dist='uniform'`."""
  if z_dist == "uniform":
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
  return jax.random.normal(key, shape, jnp.float32)


def compute_dtype(config) -> Any:
  return jnp.dtype(config.dtype)


def build(config) -> Networks:
  """Builds G, E (or None) and D for `config.model.family` ('bigbigan' or 'bigan_mlp')."""
  if config.model.family == "bigan_mlp":
    return _build_bigan_mlp(config)
  m, loss = config.model, config.loss
  dtype = compute_dtype(config)
  g, d, e = m.generator, m.discriminator, m.encoder
  generator = Generator(g.resolution, g.ch, g.shared_dim, g.attn_res, m.image_channels,
                        g.bn_eps, g.bn_momentum, g.sn_eps, dtype, remat=g.remat)
  encoder = None
  if e.enabled:
    encoder = Encoder(m.z_dim, e.trunk, e.width, e.base_width, e.head_width, e.head_blocks,
                      e.output, e.reversible_backward, e.bn_momentum, e.bn_eps, dtype,
                      units=e.units, remat=e.remat)
  discriminator = Discriminator(
      g.resolution, d.ch, d.attn_res, d.mlp_width, d.mlp_blocks,
      use_x=loss.s_x, use_z=loss.s_z and e.enabled, use_xz=loss.s_xz and e.enabled,
      sn_eps=d.sn_eps, dtype=dtype, remat=d.remat)

  def d_view(x):
    if x.shape[-3] != g.resolution:
      return pool_to(x, g.resolution)
    return x

  identity = lambda x: x
  return Networks(generator, encoder, discriminator,
                  image_size=e.resolution if e.enabled else g.resolution,
                  generator_resolution=g.resolution, image_channels=m.image_channels,
                  to_model_space=identity, to_images=identity, d_view=d_view,
                  features_from="encoder" if e.enabled else None,
                  feature_keys=FEATURE_OUTPUTS if e.enabled else ())


def _build_bigan_mlp(config) -> Networks:
  """BiGAN (2017)'s MLPs on flat [0, 1] pixel vectors (BiGAN §4.2)."""
  m = config.model
  s, c = m.image_size, m.image_channels
  kw = dict(use_bias=m.use_bias, init_stddev=m.init_stddev, dtype=compute_dtype(config))
  encoder = MLPEncoder(m.z_dim, m.hidden, **kw) if m.encoder.enabled else None
  joint = encoder is not None and config.method == "bigan"  # else a GAN's D(x)
  if encoder is not None:  # E's linear output too, where BiGAN measured 1-NN
    features_from, feature_keys = "encoder", FEATURE_OUTPUTS + ("z_logits",)
  elif config.method == "d_features":  # D's last hidden layer
    features_from, feature_keys = "discriminator", FEATURE_OUTPUTS[:2]
  else:
    features_from, feature_keys = None, ()
  return Networks(MLPGenerator(m.hidden, m.x_dim, **kw), encoder,
                  MLPDiscriminator(m.hidden, use_z=joint, **kw),
                  image_size=s, generator_resolution=s, image_channels=c,
                  to_model_space=lambda x: (x.reshape(x.shape[0], -1) + 1.0) / 2.0,
                  to_images=lambda x: x.reshape(x.shape[0], s, s, c) * 2.0 - 1.0,
                  d_view=lambda x: x, features_from=features_from, feature_keys=feature_keys)


def input_shapes(config, batch_size: int) -> dict:
  """Shapes of z, of E's input and of D's image input for a batch (in model space)."""
  m = config.model
  if m.family == "bigan_mlp":
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
