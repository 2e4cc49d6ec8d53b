"""Encoder features of a whole dataset split, to an .npz file (SPEC §4's hub-module outputs).

  python -m bigbigan_jax.extract --workdir=runs/mnist --split=test --out=test_features.npz
      [--dataset=NAME --data_dir=DIR] [--batch_size=256] [--step=K] [--noema]

The .npz holds avepool_feat [N, D], bn_crelu_feat [N, 2D], z_mean [N, z_dim] and labels [N], in
the split's fixed order (padding removed). The dataset defaults to the one the run trained on.
"""

import math
import sys

from absl import flags
from absl import logging
import jax
import numpy as np

from bigbigan_jax import api
from bigbigan_jax import cli
from bigbigan_jax import input_pipeline
from bigbigan_jax.errors import UserError


def split_batches(model, data_config, split, *, limit=None):
  """Yields this process's rows of global batches {'image', 'label', 'mask'} of `split`.

  Images are center-cropped at E's resolution and converted to the model's channels. With
  `limit`, only the first `limit` examples of the split (in its fixed order) are kept.
  """
  b = model.batch_size
  # A mesh of this process's devices encodes everything here; a global one shares the work.
  index, processes = (jax.process_index(), jax.process_count()) if model.multihost else (0, 1)
  batches = input_pipeline.eval_batches(data_config, split, image_size=model.image_size,
                                        batch_size=b, process_index=index,
                                        process_count=processes)
  num_batches = None if limit is None else math.ceil(limit / b)
  local = b // processes
  for k, batch in enumerate(batches):
    if num_batches is not None and k >= num_batches:
      break
    rows = k * b + index * local + np.arange(local)
    mask = batch["mask"] if limit is None else batch["mask"] & (rows < limit)
    yield {"image": api.match_channels(batch["image"], model.image_channels),
           "label": batch["label"], "mask": mask}


def _progress(iterable, total, description):
  """A tqdm bar on stderr on process 0 (tqdm ships with TFDS); plain iteration elsewhere."""
  if jax.process_index() != 0:
    return iterable
  try:
    import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return iterable
  return tqdm.tqdm(iterable, total=total, desc=description, unit="batch", file=sys.stderr,
                   leave=False, mininterval=1.0)


def extract_features(model, data_config, split, *, limit=None, features=None,
                     reconstruction_error=False, reconstructions=False, progress=False,
                     batches=None, count=None) -> dict:
  """Encodes a split with `model` (a bound `api.BigBiGAN`); returns host arrays of its examples.

  Args:
    features: which encoder outputs to keep (default: all of `model.feature_keys`).
    reconstruction_error: also return 'recon_mse' [N], the per-image mean squared error of
      G(E(x)) (from z_mean) against x as G sees it, in [-1, 1] pixel units.
    reconstructions: also return 'reconstruction' [N, ...], G(E(x)) itself (small splits only:
      it is kept in host memory).
    batches: pre-loaded output of `split_batches` (the in-training evaluator caches them).
    count: the split's size if known, for the progress bar (opening a folder dataset to count
      it rescans the folder).
  Returns:
    {feature: [N, ...], 'labels': [N]} (+ 'recon_mse', 'reconstruction').
  """
  model.require_encoder(features_only=True)
  features = model.feature_keys if features is None else features
  if batches is None:
    batches = split_batches(model, data_config, split, limit=limit)
  fn = _feature_fn(model, tuple(features), reconstruction_error, reconstructions)
  if progress:
    if count is None:
      count = input_pipeline.dataset_info(data_config).num_examples.get(split, 0)
    count = count if limit is None else min(count, limit)
    batches = _progress(batches, math.ceil(count / model.batch_size), f"encoding {split}")
  parts = []
  for batch in batches:
    out = fn(model.variables, model.to_device(batch["image"]))
    out = {k: np.asarray(v.addressable_data(0)) for k, v in out.items()}
    out["labels"] = model.gather(batch["label"])
    mask = model.gather(batch["mask"])
    parts.append({k: v[mask] for k, v in out.items()})
  if not parts:
    raise UserError(f"split {split!r} is empty: pick another --split")
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _feature_fn(model, features, reconstruction_error, reconstructions=False):
  """The jitted per-batch function (compiled once per model and feature set)."""
  def fn(variables, images):
    enc = model.apply_encoder(variables, images)
    out = {k: enc[k] for k in features}
    if reconstruction_error or reconstructions:
      recon = model.apply_generator(variables, enc["z_mean"])
    if reconstruction_error:
      target = model.d_view(images)
      out["recon_mse"] = ((recon - target) ** 2).reshape(recon.shape[0], -1).mean(axis=1)
    if reconstructions:
      out["reconstruction"] = recon
    return out
  return model.cached_jit(("features", features, reconstruction_error, reconstructions), fn)


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
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
  if not FLAGS.workdir or not FLAGS.out or not FLAGS.split:
    raise UserError("--workdir, --split and --out are required, e.g. --workdir=runs/mnist "
                    "--split=test --out=test.npz")
  model = api.load(FLAGS.workdir, FLAGS.step, use_ema=FLAGS.ema, batch_size=FLAGS.batch_size)
  data = data_config_for(model.config, FLAGS.dataset, FLAGS.data_dir)
  out = extract_features(model, data, FLAGS.split, progress=True)
  if jax.process_index() == 0:
    np.savez(FLAGS.out, **out)
  shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in out.items())
  print(f"Wrote {len(out['labels'])} examples of {data.dataset}:{FLAGS.split} at step "
        f"{model.step} to {FLAGS.out}: {shapes}", flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
