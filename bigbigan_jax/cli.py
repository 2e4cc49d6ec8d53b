"""What every command-line entry point shares: config flags and one-line user errors."""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from bigbigan_jax.errors import UserError


def define_config_flag():
  """`--config=FILE[:ARG]` plus `--config.x=y` overrides (ml_collections)."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/base.py:variant=revnet.",
                                  lock_config=True)


def run(main):
  """`absl.app.run(main)`, turning a UserError (even one raised while the config file is
  loaded) into `error: <message>` on stderr and exit status 2, with no traceback."""
  def wrapped(argv):
    try:
      main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  try:
    app.run(wrapped)
  except UserError as e:  # raised by get_config() during flag parsing
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def config():
  return flags.FLAGS.config
