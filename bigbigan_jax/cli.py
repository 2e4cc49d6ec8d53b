"""What every command-line entry point shares: config flags, one-line user errors, and a quiet
console (TensorFlow's native logging, which TFDS pulls in, is off unless --verbosity is given).
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from bigbigan_jax import peers
from bigbigan_jax import errors
from bigbigan_jax.errors import UserError

# Before TensorFlow is first imported (by TFDS, through the input pipeline): its C++ INFO and
# WARNING lines (oneDNN notices, absl::InitializeLog) would drown the progress lines. TensorFlow
# only decodes images here, which oneDNN does not touch.
if not any(a.startswith(("--verbosity", "-v=", "--v=")) for a in sys.argv[1:]):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def define_config_flag():
  """`--config=FILE[:ARG]` plus `--config.x=y` overrides (ml_collections), listed in --help."""
  config_flags.DEFINE_config_file(
      "config", None, "Config file and its argument, e.g. configs/base.py:variant=revnet; "
      "--config.FIELD=VALUE overrides a field.", lock_config=True)


def define_distributed_flags():
  """The flags that connect the processes of a multi-host run (`initialize_distributed`)."""
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize() with auto-detection (TPU VMs, SLURM, ...).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit clusters).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (explicit clusters).")
  flags.DEFINE_integer("process_id", None, "This process's index (explicit clusters).")
  flags.DEFINE_integer("heartbeat_timeout_s", peers.HEARTBEAT_TIMEOUT_S,
                       "A process of a multi-host run that sends no heartbeat this long (killed, "
                       "frozen, its host gone) is declared lost, and the others stop with one "
                       "`error: process i of n lost contact ...` line.")


def initialize_distributed(workdir=None):
  """Connects the processes of a multi-host run and starts their `peers.Watchdog` (returned;
  `stop()` it before a normal exit); None for a single process."""
  import jax  # pylint: disable=g-import-not-at-top  (after the flags are parsed)
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if not (f.coordinator_address or f.num_processes or f.distributed):
    return None
  if f.coordinator_address or f.num_processes:
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id,
                             heartbeat_timeout_seconds=peers.backstop_s(f.heartbeat_timeout_s))
  state = distributed.global_state
  peers.guard_stderr(state.process_id, state.num_processes, workdir)
  return peers.Watchdog(state.client, state.process_id, state.num_processes,
                        f.heartbeat_timeout_s, workdir)


def run(main):
  """`absl.app.run(main)`, turning a UserError (even one raised while the config file is
  loaded) into `error: <message>` on stderr and exit status 2, with no traceback. So are the
  errors of flag parsing itself: a config file that does not load, or an override of a field the
  config does not have (`--config.eval.nosuch=1`)."""
  started = []

  def wrapped(argv):
    if "config" in flags.FLAGS and flags.FLAGS.config is not None:
      try:  # the config flag reports a file that failed to load only when first read
        flags.FLAGS.config.keys()
      except OSError as e:
        print(f"error: {_parse_error(e)}", file=sys.stderr)
        sys.exit(2)
    started.append(True)
    try:
      main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      if isinstance(e, errors.DiskFull):  # no shutdown: see DiskFull
        sys.stdout.flush()
        os._exit(2)  # pylint: disable=protected-access
      sys.exit(2)
  try:
    app.run(wrapped)
  except UserError as e:  # raised by get_config() during flag parsing
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError, OSError) as e:
    if started:  # a bug in main, not a bad command line: keep the traceback
      raise
    print(f"error: {_parse_error(e)}", file=sys.stderr)
    sys.exit(2)


def _parse_error(e):
  """One line for an exception raised while `--config` and its overrides were parsed."""
  if isinstance(e, OSError):  # ml_collections: "Failed loading config file ...\n  Attempted ..."
    path = next((a for a in sys.argv[1:] if a.startswith("--config=")), "--config=?")
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    return (f"{path.split('=', 1)[1]}: the config file does not load ({lines[-1]}); "
            "pass an existing file, e.g. --config=configs/base.py")
  # KeyError/AttributeError from ConfigDict: "'name'" plus perhaps "; did you mean ..."
  what = str(e).strip("\"'").replace("\\n", "; ").replace("\\'", "'").replace("'", "")
  return (f"a --config.* override names a field the config does not have ({what}); "
          "check its spelling against the config file")


def quiet_logging():
  """Python-side logging at ERROR (TFDS's and orbax's notices) unless --verbosity is given."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)


def config():
  """The parsed --config, or a UserError when it is missing."""
  if flags.FLAGS.config is None:
    raise UserError("--config is required, e.g. --config=configs/mnist.py (see --help)")
  return flags.FLAGS.config
