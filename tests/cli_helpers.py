"""Helpers for tests that run the real command-line tools in subprocesses."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

import jax_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "mnist.py") + ":runlocal"


def env_for(devices: int) -> dict:
  """The environment of a CPU subprocess with `devices` fake devices (and the shared cache)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=REPO,
             TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS=jax_environment.XLA_TEST_FLAGS,
             **jax_environment.cache_env())
  return env


def main_command(workdir, data_dir, *flags):
  """`python -m bigbigan_jax.main` on the tiny demo config."""
  return [sys.executable, "-m", "bigbigan_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", *flags]


def run_main(workdir, data_dir, *flags, devices=1):
  """Runs a training command to completion and asserts it succeeded."""
  result = subprocess.run(main_command(workdir, data_dir, *flags), env=env_for(devices), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def metrics(workdir):
  """The lines of a run's metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def state_arrays(workdir, step):
  """The saved training state as a flat {path: numpy array} dict, on any device count."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(path)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(path, restore_args=args)
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
