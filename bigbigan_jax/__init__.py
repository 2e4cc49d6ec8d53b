"""bigbigan_jax: BigBiGAN (BigGAN G, ResNet/RevNet E, joint F/H/J D) in JAX/Flax.

Data-parallel over every device of every host with one jitted SPMD step; configured with
ml_collections; checkpointed with orbax. See README.md.
"""


def __getattr__(name):
  # `bigbigan_jax.load` is imported lazily: the command-line tools should not pay for orbax and
  # TFDS imports they do not need.
  if name == "load":
    from bigbigan_jax.inference import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f"module 'bigbigan_jax' has no attribute {name!r}")
