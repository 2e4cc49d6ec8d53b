"""Trainers, chosen by `config.trainer`: each builds the training step of one model family.

  bigbigan  BigBiGAN (trainers/bigbigan.py)
  bigan     BiGAN (2017) and its baselines on permutation-invariant MNIST (trainers/bigan.py)

A trainer module provides `make_step(networks, optimizers, config, mesh) -> common.StepParts`,
`check_family(config)` and `validate(config)` (its own config checks) and `LOSSES` (the metrics on
the progress line). Everything else (state, checkpoints, the loop, the
evaluators) is shared.
"""

from bigbigan_jax import models
from bigbigan_jax import optimizers as optimizers_lib
from bigbigan_jax import sharding
from bigbigan_jax.errors import UserError
from bigbigan_jax.trainers import bigan
from bigbigan_jax.trainers import bigbigan
from bigbigan_jax.trainers import common

TRAINERS = {"bigbigan": bigbigan, "bigan": bigan}


def get_trainer(name: str):
  """The trainer module registered as `name`."""
  if name not in TRAINERS:
    raise UserError(f"config.trainer={name!r} is not one of {', '.join(TRAINERS)}; set "
                    "--config.trainer=<one of them>")
  return TRAINERS[name]


def setup(config):
  """What the loop, the benchmark and the tests share: mesh, networks, optimizers and the
  compiled step (the config must be validated first, see `validation.validate`)."""
  mesh = sharding.make_mesh()
  networks = models.build(config)
  optimizers = optimizers_lib.create_optimizers(config)
  parts = get_trainer(config.trainer).make_step(networks, optimizers, config, mesh)
  return mesh, networks, optimizers, common.compile_step(parts.step, mesh)
