"""Encoder features of a whole dataset split, to an .npz file (the hub modules' outputs).

  python -m bigbigan_jax.extract --workdir=runs/mnist --split=test --out=test_features.npz
      [--dataset=NAME --data_dir=DIR] [--batch_size=256] [--step=K] [--noema]

The .npz holds avepool_feat [N, D], bn_crelu_feat [N, 2D], z_mean [N, z_dim] and labels [N], in
the split's fixed order (padding removed). The dataset defaults to the one the run trained on.
"""

import io
import math

from absl import flags
import jax
import numpy as np

from bigbigan_jax import cli
from bigbigan_jax import inference
from bigbigan_jax import input_pipeline
from bigbigan_jax import paths
from bigbigan_jax.errors import UserError
from bigbigan_jax.evaluators import common


def data_config_for(config, dataset=None, data_dir=None):
  """The run's data config, with the dataset and/or data_dir optionally replaced."""
  data = config.data.copy_and_resolve_references()
  if dataset:
    data.dataset = dataset
  if data_dir:
    data.data_dir = data_dir
  return data


# ---------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a program: main.py has its own --workdir)."""
  flags.DEFINE_string("split", None, "Split: 'train' (minus train_val), 'train_val', 'test', ...")
  flags.DEFINE_string("out", None, "Output .npz path.")
  flags.DEFINE_string("workdir", None, "Training run directory (or its checkpoints/ directory).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_string("dataset", None, "TFDS name or folder:/path (default: the run's dataset).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the run's).")
  flags.DEFINE_integer("batch_size", 256, "Images per device call.")
  flags.DEFINE_bool("ema", True, "Use the EMA weights of E (--noema: the raw weights).")


def main(argv):
  del argv
  cli.quiet_logging()
  if not FLAGS.workdir or not FLAGS.out or not FLAGS.split:
    raise UserError("--workdir, --split and --out are required, e.g. --workdir=runs/mnist "
                    "--split=test --out=test.npz")
  model = inference.load(FLAGS.workdir, FLAGS.step, use_ema=FLAGS.ema,
                         batch_size=FLAGS.batch_size)
  model.require_encoder(features_only=True)
  data = data_config_for(model.config, FLAGS.dataset, FLAGS.data_dir)
  count = input_pipeline.dataset_info(data).num_examples.get(FLAGS.split, 0)
  batches = common.progress_bar(common.split_batches(model, data, FLAGS.split),
                                math.ceil(count / model.batch_size), f"encoding {FLAGS.split}")
  try:
    out = common.extract_features(model, batches)
  except UserError:
    raise UserError(f"split {FLAGS.split!r} is empty: pick another --split") from None
  if jax.process_index() == 0:
    buffer = io.BytesIO()
    np.savez(buffer, **out)
    paths.write_bytes(FLAGS.out, buffer.getvalue())
  shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in out.items())
  print(f"Wrote {len(out['labels'])} examples of {data.dataset}:{FLAGS.split} at step "
        f"{model.step} to {FLAGS.out}: {shapes}", flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
