r"""Table 1 of BiGAN (Donahue et al., 2017), permutation-invariant MNIST: BiGAN and its baselines.

  python launch/sweep.py --sweep=configs/sweeps/bigan_table1.py --executor=local --workroot=runs
  python launch/summarize.py --sweep_dir=runs/bigan_table1 --paper

Each run is `configs/bigan_mnist.py:variant=<row>,seed=<k>` in `WORKROOT/bigan_table1/<row>-seed<k>`
and evaluates itself every 500 steps and at its last step (1-NN on E(x), on E's penultimate layer
and on raw pixels, over the 1,000 test digits with the 3,500 training digits outside train_val as
the bank; `summarize --pick=best` takes the eval with the best train_val 1-NN). The
schedule is the paper's, scaled to the 3,500 training digits: the BiGAN row takes about 12 minutes
on 2 CPU cores alone; the whole sweep takes about an hour with `--parallel=2` (measured runs:
docs/experiments/).
"""

import os

from bigbigan_jax import config_lib

bigan_mnist = config_lib.load_sibling_config(os.path.dirname(os.path.abspath(__file__)),
                                             "bigan_mnist")

VARIANTS = tuple(bigan_mnist.VARIANTS)
# The paper's 1-NN accuracy (%) on the full MNIST test set (one number per row, no std).
PAPER_TABLE1 = {v: dict(nn1=(acc, None)) for v, acc in bigan_mnist.PAPER_1NN.items()}


def get_sweep():
  """Every row, one seed, at configs/bigan_mnist.py's schedule."""
  return dict(
      name="bigan_table1",
      config="configs/bigan_mnist.py",
      variants=list(VARIANTS),
      seeds=[0],
      args="",
      overrides={},
      paper=PAPER_TABLE1,
      columns=[["1-NN E(x) (%)", "nn1_z_test", 100.0, False],
               ["1-NN penultimate (%)", "nn1_test", 100.0, False],
               ["1-NN raw pixels (%)", "nn1_pixels_test", 100.0, False]],
      paper_columns=[["paper 1-NN (%)", "nn1"]],
  )
