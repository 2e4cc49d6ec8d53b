r"""Table 1 of BigBiGAN (Donahue & Simonyan, 2019) as an ablation sweep: 19 rows x 3 seeds.

  python launch/sweep.py --sweep=configs/sweeps/table1.py --executor=tpu_vm \
      --workroot=gs://BUCKET/bigbigan --tpu_name=NAME --zone=ZONE --dry_run
  python launch/summarize.py --sweep_dir=gs://BUCKET/bigbigan/table1 --paper

Each run is `configs/base.py:variant=<row>,seed=<k>` in `WORKROOT/table1/<row>-seed<k>`.
The paper ran the costlier rows once; here every row gets three seeds (drop seeds to save compute).
"""

# Rows in the paper's order; keys of configs/base.py's VARIANTS.
VARIANTS = (
    "base", "deterministic_e", "uniform_pz", "x_unary_only", "z_unary_only", "no_unaries",
    "small_g_32", "small_g_64", "no_e_gan", "high_res_e", "low_res_g", "high_res_g",
    "resnet101", "resnet_x2", "revnet", "revnet_x2", "revnet_x4", "resnet_up_e_lr",
    "revnet_x4_up_e_lr",
)

# The published numbers: (mean, std) over three seeds, std None where the paper ran one seed,
# None where the paper has no value. IS and FID of generated images at 500K steps; "cls" is
# ImageNet top-1 (%) of a logistic regression on E's features, on the 10K-image train_val split.
# Source: J. Donahue, K. Simonyan, "Large Scale Adversarial Representation Learning",
# NeurIPS 2019 (arXiv:1907.02544), Table 1.
# (No E (GAN) is selected by best FID, every other row by best train_val accuracy: each run's
# eval.best_metric.)
PAPER_TABLE1 = {
    "base": dict(IS=(22.66, 0.18), FID=(31.19, 0.37), cls=(48.10, 0.13)),
    "deterministic_e": dict(IS=(22.79, 0.27), FID=(31.31, 0.30), cls=(46.97, 0.35)),
    "uniform_pz": dict(IS=(22.83, 0.24), FID=(31.52, 0.28), cls=(45.11, 0.93)),
    "x_unary_only": dict(IS=(23.19, 0.28), FID=(31.99, 0.30), cls=(47.74, 0.20)),
    "z_unary_only": dict(IS=(19.52, 0.39), FID=(39.48, 1.00), cls=(47.78, 0.28)),
    "no_unaries": dict(IS=(19.70, 0.30), FID=(42.92, 0.92), cls=(46.71, 0.88)),
    "small_g_32": dict(IS=(3.28, 0.18), FID=(247.30, 10.31), cls=(43.59, 0.34)),
    "small_g_64": dict(IS=(19.96, 0.15), FID=(38.93, 0.39), cls=(47.54, 0.33)),
    "no_e_gan": dict(IS=(23.56, 0.37), FID=(30.91, 0.23), cls=None),
    "high_res_e": dict(IS=(23.45, 0.14), FID=(27.86, 0.13), cls=(50.80, 0.30)),
    "low_res_g": dict(IS=(19.40, 0.19), FID=(15.82, 0.06), cls=(47.51, 0.09)),
    "high_res_g": dict(IS=(24.70, None), FID=(38.58, None), cls=(51.49, None)),
    "resnet101": dict(IS=(23.29, None), FID=(28.01, None), cls=(51.21, None)),
    "resnet_x2": dict(IS=(23.68, None), FID=(27.81, None), cls=(52.66, None)),
    "revnet": dict(IS=(23.33, 0.09), FID=(27.78, 0.06), cls=(49.42, 0.18)),
    "revnet_x2": dict(IS=(23.21, None), FID=(27.96, None), cls=(54.40, None)),
    "revnet_x4": dict(IS=(23.23, None), FID=(28.15, None), cls=(57.15, None)),
    "resnet_up_e_lr": dict(IS=(23.27, 0.22), FID=(28.51, 0.44), cls=(53.70, 0.15)),
    "revnet_x4_up_e_lr": dict(IS=(23.08, None), FID=(28.54, None), cls=(60.15, None)),
}


def get_sweep():
  """All 19 rows of Table 1 at the paper's schedule, seeds 0-2."""
  return dict(
      name="table1",
      config="configs/base.py",
      variants=list(VARIANTS),
      seeds=[0, 1, 2],
      args="",                               # extra config args, e.g. "runlocal"
      overrides={"total_steps": 500_000},    # --config.<key>=<value> for every run
      paper=PAPER_TABLE1,
  )
