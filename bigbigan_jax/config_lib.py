"""Helpers for config files: big_vision-style `arg` strings and up-front validation."""

import ml_collections

from bigbigan_jax.errors import UserError


def parse_arg(arg, **defaults):
  """Parses `"variant=x,runlocal,seed=3"` into a ConfigDict, typed by `defaults`.

  A bare name (`runlocal`) means True. Unknown keys are an error naming the known ones.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise UserError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))} "
                      "(e.g. --config=configs/base.py:variant=revnet,runlocal)")
    default = defaults[key]
    if not _:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      value = int(value)
    out[key] = value
  return out


def load_sibling_config(config_file: str, name: str):
  """Imports the config module `name`.py that sits next to `config_file`.

  Config files are loaded by path (`--config=configs/mnist.py`), not as a package, so a preset
  that extends `base.py` finds it through its own location rather than through sys.path.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"bigbigan_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
