"""bigbigan_jax: BigBiGAN (BigGAN G, ResNet/RevNet E, joint F/H/J D) in JAX/Flax.

Data-parallel over every device of every host with one jitted SPMD step; configured with
ml_collections; checkpointed with orbax. See README.md.
"""

import os

# Every path (local or gs://) goes through etils.epath. For cloud storage it uses gcsfs, the
# client that orbax's own bucket checks use and that honours STORAGE_EMULATOR_HOST, rather than
# TensorFlow's. Set before epath first resolves a path; a user's own setting wins.
os.environ.setdefault("EPATH_USE_TF", "false")


def __getattr__(name):
  # `bigbigan_jax.load` is imported lazily: the command-line tools should not pay for orbax and
  # TFDS imports they do not need.
  if name == "load":
    from bigbigan_jax.inference import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f"module 'bigbigan_jax' has no attribute {name!r}")
