"""Up-front config checks: every mistake is a one-line UserError naming the field and the fix.

Runs before anything is compiled or any checkpoint is touched.
"""

from bigbigan_jax.errors import UserError
from bigbigan_jax.models.encoder import OUTPUTS, TRUNKS
from bigbigan_jax.models.generator import G_CHANNELS

DTYPES = ("float32", "bfloat16", "float16")


def _check(ok: bool, message: str):
  if not ok:
    raise UserError(message)


def _check_choice(value, choices, field):
  _check(value in choices, f"config.{field}={value!r} is not one of {', '.join(map(str, choices))}; "
         f"set --config.{field}=<one of them>")


def _check_positive(config, field):
  node = config
  for part in field.split("."):
    node = node[part]
  _check(node > 0, f"config.{field}={node} must be > 0; set --config.{field} to a positive value")


def validate(config, num_devices: int | None = None):
  """Raises UserError on the first invalid field of `config`.

  Args:
    config: a full training config.
    num_devices: if given, the global batch must divide evenly over this many devices.
  """
  for field in ("total_steps", "batch_size", "optim.d_lr", "optim.g_lr", "optim.e_lr_mult",
                "optim.d_steps", "log_every", "checkpoint_every"):
    _check_positive(config, field)
  _check_choice(config.dtype, DTYPES, "dtype")
  _check(0.0 <= config.ema.decay < 1.0,
         f"config.ema.decay={config.ema.decay} must be in [0, 1); the paper uses 0.9999")
  grad_accum = config.optim.get("grad_accum", 1)
  _check(isinstance(grad_accum, int) and grad_accum > 0,
         f"config.optim.grad_accum={grad_accum!r} must be a positive integer; set "
         f"--config.optim.grad_accum=1 (no accumulation) or the number of micro-batches")
  _check(config.batch_size % grad_accum == 0,
         f"config.batch_size={config.batch_size} does not split into "
         f"config.optim.grad_accum={grad_accum} micro-batches; set --config.optim.grad_accum to "
         f"a divisor of {config.batch_size} (or --config.batch_size to a multiple of {grad_accum})")
  if num_devices is not None:
    _check(config.batch_size % num_devices == 0,
           f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices; "
           f"set --config.batch_size to a multiple of {num_devices}")
    micro = config.batch_size // grad_accum
    _check(micro % num_devices == 0,
           f"the micro-batch config.batch_size / config.optim.grad_accum = {micro} is not "
           f"divisible by the {num_devices} devices; set --config.optim.grad_accum so that "
           f"batch_size / grad_accum is a multiple of {num_devices}")
  if config.get("eval") is not None and "best_mode" in config.eval:
    _check_choice(config.eval.best_mode, ("max", "min"), "eval.best_mode")
  loss = config.loss
  _check_choice(loss.form, ("hinge", "bce"), "loss.form")
  _check_choice(loss.reduction, ("sum", "mean"), "loss.reduction")
  m = config.model
  _check_choice(m.z_dist, ("normal", "uniform"), "model.z_dist")
  _check(m.z_dim > 0, f"config.model.z_dim={m.z_dim} must be > 0")
  o = config.optim
  _check_choice(o.get("schedule", "constant"), ("constant", "constant_then_exp_decay"),
                "optim.schedule")
  _check(o.get("weight_decay", 0.0) >= 0,
         f"config.optim.weight_decay={o.get('weight_decay')} must be >= 0")
  if m.get("family", "bigbigan") == "bigan_mlp":
    from bigbigan_jax import bigan  # pylint: disable=g-import-not-at-top
    method = bigan.method_of(config)
    _check_choice(method, bigan.METHODS, "method")
    wants_encoder = method in bigan.WITH_ENCODER
    _check(bool(m.encoder.enabled) == wants_encoder,
           f"method={method} {'needs' if wants_encoder else 'has no'} encoder; set "
           f"--config.model.encoder.enabled={wants_encoder}")
    _check(loss.s_xz if method == "bigan" else loss.s_x,
           f"method={method} trains D's {'joint' if method == 'bigan' else 'image'} score; set "
           f"--config.loss.{'s_xz' if method == 'bigan' else 's_x'}=True")
    return
  e, g = m.encoder, m.generator
  if e.enabled:
    _check(loss.s_x or loss.s_z or loss.s_xz,
           "all loss terms are off (config.loss.s_x, s_z, s_xz); switch at least one on")
    _check_choice(e.trunk, TRUNKS, "model.encoder.trunk")
    _check_choice(e.output, OUTPUTS, "model.encoder.output")
    _check(not (m.z_dist == "uniform" and e.output == "stochastic"),
           "a uniform P_z needs a bounded encoder: set --config.model.encoder.output=uniform "
           "(or --config.model.z_dist=normal)")
  else:
    _check(loss.s_x and not (loss.s_z or loss.s_xz),
           "with no encoder (GAN mode) only s_x exists: set --config.loss.s_x=True "
           "--config.loss.s_z=False --config.loss.s_xz=False")
  _check_choice(g.resolution, tuple(G_CHANNELS), "model.generator.resolution")
  chunks = len(G_CHANNELS[g.resolution])
  _check(m.z_dim % chunks == 0,
         f"config.model.z_dim={m.z_dim} does not split into the {chunks} chunks of a "
         f"{g.resolution}px generator; set --config.model.z_dim to a multiple of {chunks}")
  if e.enabled:
    ratio = e.resolution / g.resolution
    _check(ratio >= 1 and ratio == int(ratio) and (int(ratio) & (int(ratio) - 1)) == 0,
           f"config.model.encoder.resolution={e.resolution} must be the generator's "
           f"{g.resolution} times a power of two (D sees E's input average-pooled 2x2)")
    _check(e.resolution >= 32, f"config.model.encoder.resolution={e.resolution} is below 32")
  _check_choice(config.data.augment, ("resnet", "light", "center"), "data.augment")
