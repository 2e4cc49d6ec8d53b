"""Up-front config checks: every mistake is a one-line UserError naming the field and the fix.

Runs before anything is compiled or any checkpoint is touched. The checks common to every
trainer are here; each trainer adds its own (`trainers.<name>.validate`).
"""

import math

from bigbigan_jax import config_lib
from bigbigan_jax import trainers
from bigbigan_jax.errors import check, check_choice

DTYPES = ("float32", "bfloat16", "float16")


def _check_positive(config, field):
  node = config
  for part in field.split("."):
    node = node[part]
  check(node > 0, f"config.{field}={node} must be > 0; set --config.{field} to a positive value")


def _check_finite_floats(node, prefix=""):
  """No float field may be inf or nan (a learning rate, a decay, a loss weight...)."""
  for key, value in node.items():
    field = f"{prefix}{key}"
    if hasattr(value, "items"):
      _check_finite_floats(value, field + ".")
    elif isinstance(value, float):
      check(math.isfinite(value), f"config.{field}={value} is not a finite number; set "
            f"--config.{field} to a finite value")


def _check_evals(config):
  """config.evals: known types, `every` None or >= 0, FID/IS weights where they run in training."""
  types = {kind for kind, _ in config_lib.EVALUATORS.values()}
  for name, entry in config.evals.items():
    check_choice(entry.type, sorted(types), f"evals.{name}.type")
    check(entry.every is None or entry.every >= 0,
          f"config.evals.{name}.every={entry.every} must be None (every eval_every steps), 0 "
          f"(off) or a positive number of steps")
    runs = entry.every if entry.every is not None else config.eval_every
    if runs and entry.type in config_lib.INCEPTION_TYPES:
      check(bool(entry.get("inception_weights")),
            f"config.evals.{name} runs in training but has no Inception weights: set "
            f"--config.evals.{name}.inception_weights=PATH (pytorch-fid's weights file; nothing "
            "is downloaded)")


def validate(config, num_devices: int | None = None):
  """Raises UserError on the first invalid field of `config`.

  Args:
    config: a full training config.
    num_devices: if given, the global batch must divide evenly over this many devices.
  """
  trainer = trainers.get_trainer(config.trainer)
  trainer.check_family(config)  # before any field of one family is read
  _check_finite_floats(config)
  _check_evals(config)
  for field in ("total_steps", "batch_size", "optim.d_lr", "optim.g_lr", "optim.e_lr_mult",
                "optim.d_steps", "log_every", "checkpoint_every"):
    _check_positive(config, field)
  check_choice(config.dtype, DTYPES, "dtype")
  check(0.0 <= config.ema.decay < 1.0,
        f"config.ema.decay={config.ema.decay} must be in [0, 1); the paper uses 0.9999")
  grad_accum = config.optim.grad_accum
  check(isinstance(grad_accum, int) and grad_accum > 0,
        f"config.optim.grad_accum={grad_accum!r} must be a positive integer; set "
        f"--config.optim.grad_accum=1 (no accumulation) or the number of micro-batches")
  check(config.batch_size % grad_accum == 0,
        f"config.batch_size={config.batch_size} does not split into "
        f"config.optim.grad_accum={grad_accum} micro-batches; set --config.optim.grad_accum to "
        f"a divisor of {config.batch_size} (or --config.batch_size to a multiple of {grad_accum})")
  if num_devices is not None:
    check(config.batch_size % num_devices == 0,
          f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices; "
          f"set --config.batch_size to a multiple of {num_devices}")
    micro = config.batch_size // grad_accum
    check(micro % num_devices == 0,
          f"the micro-batch config.batch_size / config.optim.grad_accum = {micro} is not "
          f"divisible by the {num_devices} devices; set --config.optim.grad_accum so that "
          f"batch_size / grad_accum is a multiple of {num_devices}")
  check_choice(config.eval.best_mode, ("max", "min"), "eval.best_mode")
  loss = config.loss
  check_choice(loss.form, ("hinge", "bce"), "loss.form")
  check_choice(loss.reduction, ("sum", "mean"), "loss.reduction")
  m = config.model
  check_choice(m.z_dist, ("normal", "uniform"), "model.z_dist")
  check(m.z_dim > 0, f"config.model.z_dim={m.z_dim} must be > 0")
  o = config.optim
  check_choice(o.schedule, ("constant", "constant_then_exp_decay"), "optim.schedule")
  check(o.weight_decay >= 0, f"config.optim.weight_decay={o.weight_decay} must be >= 0")
  check_choice(config.data.augment, ("resnet", "light", "center"), "data.augment")
  trainer.validate(config)
