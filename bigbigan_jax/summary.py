"""Prints every network's parameter count and the input/output shapes, without allocating weights.

  python -m bigbigan_jax.summary --config=configs/base.py[:variant=NAME] [--config.x=y ...]

The last line printed is one JSON object. Everything is computed with `jax.eval_shape`, so the
paper-size models are sized in seconds on a CPU.
"""

import json

from absl import flags

import jax
import jax.numpy as jnp

from bigbigan_jax import cli
from bigbigan_jax import models
from bigbigan_jax import validation
from bigbigan_jax.models.layers import count_params


def summarize(config) -> dict:
  """Parameter counts per module and I/O shapes of `config`'s networks."""
  networks = models.build(config)
  variables = jax.eval_shape(lambda: models.init_variables(networks, config, jax.random.key(0)))
  batch = 2
  shapes = models.input_shapes(config, batch)
  counts = {"generator": count_params(variables["generator"]["params"])}
  d = variables["discriminator"]["params"]
  for name in d:
    counts[f"discriminator/{name}"] = count_params(d[name])
  counts["discriminator"] = count_params(d)
  # BigGAN's D trunk plus its unconditional output layer (docs/design.md#generator).
  if "F" in d:  # BigBiGAN's D (the BiGAN MLP's has no F)
    counts["discriminator/F+theta_x"] = count_params(d["F"]) + count_params(d.get("theta_x", {}))
  io = {"z": shapes["z"], "generator_out": None, "encoder_in": shapes["x_e"],
        "discriminator_x_in": shapes["x_d"]}
  variables_g = variables["generator"]
  io["generator_out"] = jax.eval_shape(
      lambda v: networks.generator.apply(v, jnp.zeros(shapes["z"]), train=False),
      variables_g).shape
  if "encoder" in variables:
    e = variables["encoder"]["params"]
    counts["encoder/trunk"] = count_params(e.get("trunk", {}))
    counts["encoder/head"] = count_params(e) - counts["encoder/trunk"]
    counts["encoder"] = count_params(e)
    out = jax.eval_shape(
        lambda v: networks.encoder.apply(v, jnp.zeros(shapes["x_e"]), train=False,
                                         rngs={"sample": jax.random.key(0)}),
        variables["encoder"])
    io["encoder_out"] = {k: v.shape for k, v in out.items()}
  counts["total"] = sum(v for k, v in counts.items() if k in ("generator", "encoder", "discriminator"))
  return {"variant": config.variant, "params": counts,
          "shapes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in io.items()}}


def main(argv):
  del argv
  config = cli.config()
  validation.validate(config)
  result = summarize(config)
  for name, n in result["params"].items():
    print(f"{name:32s} {n:>14,d}")
  print(json.dumps(result, default=list))


if __name__ == "__main__":
  cli.define_config_flag()
  flags.adopt_module_key_flags(cli)  # --config in --help
  cli.run(main)
