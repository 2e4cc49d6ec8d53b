"""The JAX environment of every test process (no jax import here: it must come first).

One persistent XLA compilation cache serves the whole test session, its xdist workers and all
their subprocesses: most runs compile the same tiny programs, so only the first pays for
compilation (cache keys hold the program and the JAX version, so sharing is safe). And XLA's
backend optimisations (LLVM -O2) cost the tests' tiny, few-step programs more compile time than
they save; every run a test compares with another shares the flag.
"""

import os
import tempfile

COMPILATION_CACHE = os.path.join(
    tempfile.gettempdir(),
    "bigbigan_jax_test_cache_" + os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getppid())))
XLA_TEST_FLAGS = "--xla_backend_optimization_level=0"
CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": COMPILATION_CACHE,
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def apply_to(environ) -> None:
  """Sets the test defaults in `environ` (what the user set stays): CPU, the flags, the cache."""
  environ.setdefault("JAX_PLATFORMS", "cpu")
  environ.setdefault("EPATH_USE_TF", "false")  # as bigbigan_jax sets it, before epath is used
  environ.setdefault("XLA_FLAGS", XLA_TEST_FLAGS)
  for key, value in CACHE_ENV.items():
    environ.setdefault(key, value)
