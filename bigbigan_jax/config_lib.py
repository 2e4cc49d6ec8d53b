"""Helpers for config files: big_vision-style `arg` strings, sibling configs, the evaluators'
section, and reading configs saved by older versions."""

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
      try:
        value = int(value)
      except ValueError:
        raise UserError(f"config argument {key}={value!r} is not an integer; e.g. "
                        f"--config=configs/base.py:{key}=1") from None
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


# The evaluators of `config.evals` (see bigbigan_jax/evaluators/): name -> (type, options).
EVALUATORS = {
    # method 'auto': L-BFGS while the train features fit in lbfgs_max_bytes, else minibatch
    # Adam (epochs; max_seconds caps its training time, e.g. in training at ImageNet scale).
    "linear_probe": ("linear_probe", {"method": "auto", "lbfgs_max_bytes": 1 << 30,
                                      "epochs": 10, "max_seconds": None}),
    "knn": ("knn", {}),
    "recon": ("recon", {}),
    "recon_labels": ("recon_labels", {}),
    "pairing": ("pairing", {"examples": 1000}),
    "fid": ("fid", {"num_samples": 10_000, "standing_stats": True}),
    "is": ("inception_score", {"num_samples": 10_000, "standing_stats": True}),
    "bigan_nn1": ("bigan_nn1", {}),
}


# The evaluator types that need the FID Inception network (and its weights file).
INCEPTION_TYPES = ("fid", "inception_score")


def inception_names(evals_section, names) -> list:
  """The names among `names` whose `config.evals` entries need the FID Inception network."""
  return [n for n in names if evals_section[n].type in INCEPTION_TYPES]


def evals(*enabled: str) -> ml_collections.ConfigDict:
  """`config.evals`: every evaluator, those named in `enabled` running every `eval_every` steps
  (`every=None`), the others off (`every=0`; `python -m bigbigan_jax.evaluate --metrics=NAME`
  still runs them). FID/IS take `inception_weights` (a path; nothing is downloaded)."""
  out = ml_collections.ConfigDict()
  for name, (kind, options) in EVALUATORS.items():
    every = (ml_collections.config_dict.placeholder(int) if name in enabled
             else ml_collections.FieldReference(0, field_type=int))
    out[name] = ml_collections.ConfigDict(dict(type=kind, every=every, **options))
    if kind in INCEPTION_TYPES:
      out[name].inception_weights = ml_collections.config_dict.placeholder(str)
  return out


def upgrade_saved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A config saved by an older version of bigbigan_jax, with the fields added since filled in
  as that version behaved (the trainer from `method`, which only BiGAN configs had; the
  evaluators from eval.metrics)."""
  c = config
  if "family" not in c.model:
    c.model.family = "bigbigan"
  if "trainer" not in c:
    c.trainer = "bigan" if "method" in c else "bigbigan"
  if "image_channels" not in c.model:
    c.model.image_channels = 3
  c.skip_nonfinite = c.get("skip_nonfinite", False)
  o = c.optim
  for field, value in (("weight_decay", 0.0), ("schedule", "constant"), ("decay_start", 0.5),
                       ("final_lr_mult", 1.0), ("grad_accum", 1)):
    if field not in o:
      o[field] = value
  if "separate_d_batches" not in c.model:
    c.model.separate_d_batches = False
  if c.trainer == "bigbigan":
    for net in ("generator", "discriminator", "encoder"):
      c.model[net].remat = c.model[net].get("remat", False)
    c.model.encoder.units = c.model.encoder.get("units")
  if "eval" not in c:
    c.eval = ml_collections.ConfigDict()
  e = c.eval
  defaults = dict(batch_size=256, train_examples=None, test_examples=None,
                  encoder_stats_batches=0, best_metric="",
                  best_mode="max")
  for field, value in defaults.items():
    if field not in e:
      e[field] = value
  c.eval_every = c.get("eval_every", 0)
  if "evals" not in c:
    names = [n.strip() for n in e.get("metrics", "linear_probe,knn,recon").split(",")]
    c.evals = evals(*names, *(["bigan_nn1"] if c.trainer == "bigan" and "knn" in names else []))
    for name in ("fid", "is"):
      c.evals[name].num_samples = e.get("num_fid_samples", 10_000)
      c.evals[name].standing_stats = e.get("standing_stats", True)
      c.evals[name].inception_weights = e.get("inception_weights")
  return c
