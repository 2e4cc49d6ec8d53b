"""bigbigan_jax: BigBiGAN (BigGAN G, ResNet/RevNet E, joint F/H/J D) in JAX/Flax.

Data-parallel over every device of every host with one jitted SPMD step; configured with
ml_collections; checkpointed with orbax. See README.md.
"""
