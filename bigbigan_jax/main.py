"""Trains BigBiGAN.

  python -m bigbigan_jax.main --config=configs/mnist.py --workdir=runs/mnist
  python -m bigbigan_jax.main --config=configs/base.py:variant=revnet --workdir=gs://B/run
      --distributed   (the same command on every worker of a TPU VM pod slice, or under SLURM)

Rerunning the same command resumes from the newest checkpoint in --workdir. Compiled programs
are cached in --compilation_cache_dir, so a restart skips compilation.
"""

import os
import sys

from absl import flags
from absl import logging

from bigbigan_jax import cli

FLAGS = flags.FLAGS
DEFAULT_CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
    os.path.expanduser("~"), ".cache", "bigbigan_jax", "jax_compilation_cache")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
cli.define_distributed_flags()
flags.DEFINE_string("compilation_cache_dir", DEFAULT_CACHE,
                    "JAX's persistent compilation cache: a restart (after preemption, say) loads "
                    "the compiled step instead of compiling it again. A local folder or a "
                    "bucket path all workers share; '' turns it off.")
cli.define_config_flag()
flags.adopt_module_key_flags(cli)  # --config in --help

# Words in the error of a collective (gloo, NCCL) or of the coordination service when another
# process of the run died (its connections close) or stopped answering (missed heartbeats).
_LOST_PROCESS_SIGNS = ("gloo", "nccl", "connection reset", "connection closed",
                       "connection refused", "broken pipe", "socket closed", "heartbeat",
                       "unavailable", "deadline_exceeded", "barrier", "coordination")


def _exit_lost_process(error, workdir):
  """Ends a multi-process run whose peer died: one line naming the problem and the fix, then
  `os._exit(1)` at once. (A normal exit would first wait at JAX's shutdown barrier for the dead
  process until --heartbeat_timeout_s, then abort with a stack dump.) Complete checkpoints are
  safe: saves are atomic, and an interrupted one is set aside when the run is resumed."""
  import jax  # pylint: disable=g-import-not-at-top
  from bigbigan_jax import checkpoint  # pylint: disable=g-import-not-at-top
  directory = checkpoint.checkpoint_dir(workdir)
  steps = ([int(p.name) for p in directory.iterdir() if p.name.isdigit()]
           if directory.is_dir() else [])
  resume = f"step {max(steps)}" if steps else "step 0 (no checkpoint yet)"
  cause = " ".join(str(error).split())[:300]
  print(f"error: process {jax.process_index()} of {jax.process_count()} lost contact with another "
        f"process of this run, which died or stopped responding ({type(error).__name__}: {cause}); "
        f"rerun the same command on all hosts to resume from the last complete checkpoint, "
        f"{resume}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


def main(argv):
  del argv
  cli.quiet_logging()  # keep the console to the progress lines unless asked
  from bigbigan_jax import errors  # pylint: disable=g-import-not-at-top
  config = cli.config()
  if not FLAGS.workdir:
    raise errors.UserError("--workdir is required: the directory for checkpoints and logs")
  cli.initialize_distributed()
  from bigbigan_jax import loop  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache_dir)
  logging.info("Process %d/%d, %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  try:
    loop.train_and_evaluate(config, FLAGS.workdir)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() > 1 and any(w in str(e).lower() for w in _LOST_PROCESS_SIGNS):
      _exit_lost_process(e, FLAGS.workdir)
    raise


if __name__ == "__main__":
  cli.run(main)
