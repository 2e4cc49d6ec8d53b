"""Encoder features of a whole dataset split, written as shards (the hub modules' outputs).

  python -m bigbigan_jax.extract --workdir=runs/mnist --split=train,train_val,test --out=features
      [--dataset=NAME --data_dir=DIR] [--batch_size=256] [--step=K] [--noema]
      [--shard_examples=N] [--distributed | --coordinator_address=... --num_processes=N
      --process_id=I]

OUT/<split> (OUT: a local or gs:// directory) receives one .npz per shard of the split, each
holding avepool_feat [n, D], bn_crelu_feat [n, 2D], z_mean [n, z_dim] and labels [n], in the
split's fixed order, then index.json (bigbigan_jax/feature_store.py). Host memory holds one shard
(about 128 MiB by default), whatever the split's size. A killed extraction keeps its finished
shards: rerun the same command to write the rest. With several processes (the same command on
every host), each encodes its own shards with its own devices. Read the features back with

  features = bigbigan_jax.feature_store.load("features/test")   # {key: [N, ...]}

and probe them with `python -m bigbigan_jax.probe --features=features`. The dataset defaults to
the one the run trained on.
"""

import itertools
import math

from absl import flags
import jax
from jax.experimental import multihost_utils
import numpy as np

from bigbigan_jax import cli
from bigbigan_jax import feature_store
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


def feature_shapes(model) -> dict:
  """{key: per-example shape} of what `extract` writes for a bound model."""
  image = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, model.image_channels),
                               np.float32)
  out = jax.eval_shape(model.apply_encoder, model.variables, image)
  shapes = {k: list(out[k].shape[1:]) for k in model.feature_keys}
  shapes["labels"] = []
  return shapes


def extract(model, data_config, split, out, *, run, weights, shard_examples=None,
            info=None) -> dict:
  """Writes the features of `split` under `out` as shards (resuming a killed extraction);
  each process encodes shards index % process_count == process_index. `run`: the training run
  (recorded, so that another run's features are never mixed in); `info`: the dataset's
  `input_pipeline.dataset_info`, if the caller has it (opening a dataset can be slow: an image
  folder is scanned). Returns the plan."""
  model.require_encoder(features_only=True)
  info = info or input_pipeline.dataset_info(data_config)
  count = info.num_examples.get(split, 0)
  if not count:
    raise UserError(f"split {split!r} is empty: pick another --split")
  shapes = feature_shapes(model)
  bytes_per_example = sum(4 * math.prod(s) for s in shapes.values())
  started = feature_store.planned(out).get("shard_examples")
  if shard_examples is None and started:  # a rerun keeps the shards it started with
    if started % model.batch_size:
      raise UserError(f"{out} was started with shards of {started} examples, not a multiple of "
                      f"this run's batch of {model.batch_size} (--batch_size rounded up to the "
                      "devices): rerun with a --batch_size that divides it")
    shard_examples = started
  shard_examples = shard_examples or feature_store.shard_examples_for(bytes_per_example,
                                                                      model.batch_size)
  if shard_examples <= 0 or shard_examples % model.batch_size:
    raise UserError(f"--shard_examples={shard_examples}: use a positive multiple of the batch "
                    f"size, {model.batch_size}")
  plan = {"run": str(run), "step": model.step, "weights": weights,
          "dataset": data_config.dataset, "data_dir": data_config.data_dir, "split": split,
          "count": count, "num_classes": info.num_classes, "shard_examples": shard_examples,
          "shapes": shapes}
  # Every process checks (and all fail alike); process 0 alone writes the plan.
  feature_store.check_plan(out, plan, write=jax.process_index() == 0)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("bigbigan_jax.extract plan")
  shards = feature_store.plan_shards(count, shard_examples)
  done = feature_store.existing_shards(out)
  mine = [i for i in range(jax.process_index(), len(shards), jax.process_count())
          if i not in done]
  total = sum(math.ceil((shards[i][1] - shards[i][0]) / model.batch_size) for i in mine)
  if 0 < len(done) < len(shards) and jax.process_index() == 0:
    print(f"Resuming: {len(done)} of {len(shards)} shards of {split} are already in {out}.",
          flush=True)

  bar = common.progress_bar(None, total, f"encoding {split}") if total else None
  # One pipeline over this process's shards: every shard but the split's last fills whole
  # batches, so a shard is a run of batches.
  indices = [np.arange(*shards[i]) for i in mine]
  batches = iter(common.split_batches(model, data_config, split,
                                      indices=np.concatenate(indices) if mine else []))
  for i, rows in zip(mine, indices):
    shard = itertools.islice(batches, math.ceil(len(rows) / model.batch_size))
    feature_store.write_shard(out, i, common.extract_features(model, _counted(shard, bar)))
  if bar is not None:
    bar.close()
  if jax.process_count() > 1:  # every process has written its shards (or failed, never here)
    multihost_utils.sync_global_devices("bigbigan_jax.extract")
  if jax.process_index() == 0:
    feature_store.write_index(out, plan, shards)
  return plan


def _counted(items, bar):
  for item in items:
    yield item
    if bar is not None:
      bar.update(1)


# ---------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a program: main.py has its own --workdir)."""
  flags.DEFINE_list("split", None, "Splits: 'train' (minus train_val), 'train_val', 'test', ...")
  flags.DEFINE_string("out", None, "Output directory (local or gs://): OUT/<split>/ per split.")
  flags.DEFINE_string("workdir", None, "Training run directory (or its checkpoints/ directory).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_string("dataset", None, "TFDS name or folder:/path (default: the run's dataset).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the run's).")
  flags.DEFINE_integer("batch_size", 256, "Images per device call.")
  flags.DEFINE_bool("ema", True, "Use the EMA weights of E (--noema: the raw weights).")
  flags.DEFINE_integer("shard_examples", None,
                       "Examples per shard (default: about 128 MiB of features per shard).")
  cli.define_distributed_flags()


def main(argv):
  del argv
  cli.quiet_logging()
  if not FLAGS.workdir or not FLAGS.out or not FLAGS.split:
    raise UserError("--workdir, --split and --out are required, e.g. --workdir=runs/mnist "
                    "--split=train,train_val,test --out=features")
  if str(FLAGS.out).endswith(".npz"):
    raise UserError(f"--out={FLAGS.out}: extract writes a directory of feature shards per "
                    "split; pass a directory, e.g. --out=features")
  watchdog = cli.initialize_distributed()
  model = inference.load(FLAGS.workdir, FLAGS.step, use_ema=FLAGS.ema,
                         batch_size=FLAGS.batch_size)
  data = data_config_for(model.config, FLAGS.dataset, FLAGS.data_dir)
  info = input_pipeline.dataset_info(data)
  for split in FLAGS.split:  # every name checked before the first is encoded
    if split not in info.num_examples:
      raise UserError(f"unknown split {split!r}: use one of "
                      f"{', '.join(sorted(info.num_examples))}")
  for split in FLAGS.split:
    out = paths.path(FLAGS.out) / split
    plan = extract(model, data, split, out, run=inference.workdir_of(FLAGS.workdir),
                   weights="ema" if FLAGS.ema else "raw", shard_examples=FLAGS.shard_examples,
                   info=info)
    shapes = ", ".join(f"{k} {[plan['count'], *v]}" for k, v in plan["shapes"].items())
    if jax.process_index() == 0:
      print(f"Wrote {plan['count']} examples of {data.dataset}:{split} at step {model.step} to "
            f"{out} in {math.ceil(plan['count'] / plan['shard_examples'])} shards: {shapes}",
            flush=True)
  if watchdog is not None:
    watchdog.stop()


if __name__ == "__main__":
  define_flags()
  cli.run(main)
