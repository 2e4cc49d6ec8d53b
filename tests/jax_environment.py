"""The JAX environment of every test process (no jax import here: it must come first).

One persistent XLA compilation cache serves the whole test run, its xdist workers and all
their subprocesses: most runs compile the same tiny programs, so only the first pays for
compilation (cache keys hold the program and the JAX version, so sharing is safe). The process
that creates the cache directory removes it when the run ends (`remove_run_cache`); set
JAX_COMPILATION_CACHE_DIR to keep one across test runs. And XLA's backend optimisations (LLVM -O2)
cost the tests' tiny, few-step programs more compile time than they save; every run a test
compares with another shares the flag.
"""

import os
import shutil
import tempfile

XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
_CACHE_DIR = "JAX_COMPILATION_CACHE_DIR"
_CACHE_OWNER = "BIGBIGAN_JAX_TEST_CACHE_OWNER"  # the pid of the process that made the directory


def apply_to(environ) -> None:
  """Sets the test defaults in `environ` (what the user set stays): CPU, the flags, the cache.

  xdist workers and subprocesses inherit the test run's cache directory through `environ`.
  """
  environ.setdefault("JAX_PLATFORMS", "cpu")
  environ.setdefault("EPATH_USE_TF", "false")  # as bigbigan_jax sets it, before epath is used
  environ.setdefault("XLA_FLAGS", XLA_TEST_FLAGS)
  if _CACHE_DIR not in environ:
    environ[_CACHE_DIR] = tempfile.mkdtemp(prefix="bigbigan_jax_test_cache_")
    environ[_CACHE_OWNER] = str(os.getpid())
  for key, value in cache_env(environ).items():
    environ.setdefault(key, value)


def cache_env(environ=os.environ) -> dict:
  """The variables that point a subprocess at the test run's compilation cache."""
  return {_CACHE_DIR: environ[_CACHE_DIR],
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def remove_run_cache() -> None:
  """Deletes the cache directory if this process created it (the test run's first process)."""
  if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ[_CACHE_DIR], ignore_errors=True)
