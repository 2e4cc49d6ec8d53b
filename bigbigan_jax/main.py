"""Trains BigBiGAN.

  python -m bigbigan_jax.main --config=configs/mnist.py --workdir=runs/mnist
  python -m bigbigan_jax.main --config=configs/base.py:variant=revnet --workdir=gs://... \
      --distributed          # on every worker of a TPU VM pod slice, or under SLURM

Rerunning the same command resumes from the newest checkpoint in --workdir.
"""

import os

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
                     "A process that misses heartbeats this long is declared dead.")
cli.define_config_flag()


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
  loop.train_and_evaluate(cli.config(), FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
