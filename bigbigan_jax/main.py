"""Trains BigBiGAN.

  python -m bigbigan_jax.main --config=configs/mnist.py --workdir=runs/mnist
  python -m bigbigan_jax.main --config=configs/base.py:variant=revnet --workdir=gs://... \
      --distributed          # on every worker of a TPU VM pod slice, or under SLURM

Rerunning the same command resumes from the newest checkpoint in --workdir.
"""

import os
import sys

from absl import flags
from absl import logging

from bigbigan_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() with auto-detection (TPU VMs, SLURM, ...).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit clusters).")
flags.DEFINE_integer("num_processes", None, "Number of processes (explicit clusters).")
flags.DEFINE_integer("process_id", None, "This process's index (explicit clusters).")
flags.DEFINE_integer("heartbeat_timeout_s", 100,
                     "A process that misses heartbeats this long is declared dead and JAX's "
                     "coordination service stops the others.")
cli.define_config_flag()

# Words in the error of a collective (gloo, NCCL) or of the coordination service when another
# process of the run died (its connections close) or stopped answering (missed heartbeats).
_LOST_PROCESS_SIGNS = ("gloo", "nccl", "connection reset", "connection closed",
                       "connection refused", "broken pipe", "socket closed", "heartbeat",
                       "unavailable", "deadline_exceeded", "barrier", "coordination")


def initialize_distributed():
  """Connects the processes of a multi-host run; a no-op for a single process."""
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or FLAGS.num_processes:
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s)
  elif FLAGS.distributed:
    jax.distributed.initialize(heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s)


def _exit_lost_process(error, workdir):
  """Ends a multi-process run whose peer died: one line naming the problem and the fix, then
  `os._exit(1)` at once. (A normal exit would first wait at JAX's shutdown barrier for the dead
  process until --heartbeat_timeout_s, then abort with a stack dump.) Complete checkpoints are
  safe: saves are atomic, and an interrupted one is set aside when the run is resumed."""
  import jax  # pylint: disable=g-import-not-at-top
  from bigbigan_jax import checkpoint  # pylint: disable=g-import-not-at-top
  directory = checkpoint.checkpoint_dir(workdir)
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
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
  if not FLAGS["verbosity"].present:  # keep the console to our progress lines unless asked
    logging.set_verbosity(logging.WARNING)
  from bigbigan_jax import errors  # pylint: disable=g-import-not-at-top
  if not FLAGS.workdir:
    raise errors.UserError("--workdir is required: the directory for checkpoints and logs")
  initialize_distributed()
  from bigbigan_jax import loop  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  logging.info("Process %d/%d, %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  try:
    loop.train_and_evaluate(cli.config(), FLAGS.workdir)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() > 1 and any(w in str(e).lower() for w in _LOST_PROCESS_SIGNS):
      _exit_lost_process(e, FLAGS.workdir)
    raise


if __name__ == "__main__":
  cli.run(main)
