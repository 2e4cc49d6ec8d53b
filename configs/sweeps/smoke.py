"""A tiny sweep on the CPU demo data: three Table 1 rows x one seed, one step each.

  python launch/sweep.py --sweep=configs/sweeps/smoke.py --executor=local --workroot=/tmp/sweeps \
      --extra_flags=--config.data.data_dir=DATA_DIR
"""


def get_sweep():
  """base, deterministic E and no E (GAN) on `configs/mnist.py:runlocal`, one step each."""
  return dict(
      name="smoke",
      config="configs/mnist.py",
      variants=["base", "deterministic_e", "no_e_gan"],
      seeds=[0],
      args="runlocal",
      overrides={"total_steps": 1},
  )
