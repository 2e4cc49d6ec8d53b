"""Trains BigBiGAN.

  python -m bigbigan_jax.main --config=configs/mnist.py --workdir=runs/mnist
  python -m bigbigan_jax.main --config=configs/base.py:variant=revnet --workdir=gs://B/run
      --distributed   (the same command on every worker of a TPU VM pod slice, or under SLURM)

Rerunning the same command resumes from the newest checkpoint in --workdir. Compiled programs
are cached in --compilation_cache_dir, so a restart skips compilation.
"""

import os

from absl import flags
from absl import logging

from bigbigan_jax import cli
from bigbigan_jax import peers

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


def main(argv):
  del argv
  cli.quiet_logging()  # keep the console to the progress lines unless asked
  from bigbigan_jax import errors  # pylint: disable=g-import-not-at-top
  config = cli.config()
  if not FLAGS.workdir:
    raise errors.UserError("--workdir is required: the directory for checkpoints and logs")
  watchdog = cli.initialize_distributed(FLAGS.workdir)
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
      peers.exit_lost_contact(e, FLAGS.workdir)
    raise
  if watchdog is not None:
    watchdog.stop()


if __name__ == "__main__":
  cli.run(main)
