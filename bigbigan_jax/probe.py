"""The linear probe and k-NN on extracted feature shards: the full protocol at any scale.

  python -m bigbigan_jax.extract --workdir=RUN --split=train,train_val,validation --out=FEATS
  python -m bigbigan_jax.probe --features=FEATS --test_split=validation [--workdir=RUN]
      [--metrics=linear_probe,knn] [--method=minibatch] [--epochs=10] [--batch_size=1024]
      [--distributed | --coordinator_address=... --num_processes=N --process_id=I]

Reads FEATS/train (the probe's training set and the k-NN bank), FEATS/train_val (model
selection) and FEATS/<test_split>, streaming them: host memory holds about two shards (and, for
k-NN, this host's part of the bank); the work is data-parallel over every device of every
process. Prints one JSON object (the keys `evaluate` uses) and, with --workdir, appends it to
WORKDIR/eval.jsonl.
"""

import json

from absl import flags
import jax

from bigbigan_jax import cli
from bigbigan_jax import feature_store
from bigbigan_jax import paths
from bigbigan_jax import sharding
from bigbigan_jax.errors import UserError
from bigbigan_jax.evaluators import knn
from bigbigan_jax.evaluators import linear_probe

PROBE_NAMES = (("avepool", "avepool_feat"), ("bn_crelu", "bn_crelu_feat"))

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("features", None, "Directory that `extract --out` wrote (local or gs://).")
  flags.DEFINE_string("train_split", "train", "Subdirectory of the training features.")
  flags.DEFINE_string("val_split", "train_val", "Subdirectory of the model-selection features "
                      "('' for none: the middle of the l2 grid is used).")
  flags.DEFINE_string("test_split", "test", "Subdirectory of the reported split (ImageNet: "
                      "validation).")
  flags.DEFINE_list("metrics", ["linear_probe", "knn"], "linear_probe and/or knn.")
  flags.DEFINE_enum("method", "auto", linear_probe.METHODS,
                    "Probe solver: L-BFGS in memory, minibatch Adam streaming, or auto (L-BFGS "
                    "while the train features fit in 1 GiB).")
  flags.DEFINE_integer("epochs", 10, "Minibatch probe: epochs (more if that is fewer than "
                       "--min_steps steps).")
  flags.DEFINE_integer("min_steps", 1500, "Minibatch probe: the fewest training steps.")
  flags.DEFINE_integer("batch_size", 1024, "Minibatch probe: global batch size.")
  flags.DEFINE_float("learning_rate", 1e-2, "Minibatch probe: Adam's peak learning rate.")
  flags.DEFINE_string("workdir", None, "Append the result to WORKDIR/eval.jsonl.")
  cli.define_distributed_flags()


def run(features, *, metrics=("linear_probe", "knn"), train_split="train",
        val_split="train_val", test_split="test", mesh=None, **probe_options) -> dict:
  """The probes on the shards under `features`; returns the result dict."""
  root = paths.path(features)
  splits = {"train": train_split, "test": test_split}
  if val_split:
    splits["train_val"] = val_split
  sources = {name: feature_store.Source.from_dir(root / split) for name, split in splits.items()}
  indexes = {splits[name]: source.index for name, source in sources.items()}
  index = indexes[train_split]
  for field in ("run", "step", "weights", "dataset", "data_dir", "shapes"):
    values = {split: json.dumps(i.get(field), sort_keys=True) for split, i in indexes.items()}
    if len(set(values.values())) > 1:
      raise UserError(f"the splits under {root} were extracted with different {field}s "
                      f"({', '.join(f'{s}: {v}' for s, v in values.items())}): extract them "
                      "again from one checkpoint")
  num_classes = index.get("num_classes")
  if not num_classes or num_classes < 2:
    raise UserError(f"{root / train_split}: the dataset has no class labels to probe")
  names = [n for n in PROBE_NAMES if n[1] in sources["train"].dims]
  if not names:
    raise UserError(f"{root / train_split} has no encoder features "
                    f"({', '.join(key for _, key in PROBE_NAMES)})")
  out = {"step": index["step"], "weights": index["weights"], "dataset": index["dataset"],
         "train_examples": sources["train"].count}
  if "linear_probe" in metrics:
    out.update(linear_probe.probe_metrics(sources, names, num_classes, mesh=mesh,
                                          **probe_options))
  if "knn" in metrics:
    out.update(knn.knn_metrics(sources, names[0][1], num_classes, mesh=mesh))
  return out


def main(argv):
  del argv
  cli.quiet_logging()
  if not FLAGS.features:
    raise UserError("--features is required: the --out directory of `extract`")
  unknown = set(FLAGS.metrics) - {"linear_probe", "knn"}
  if unknown:
    raise UserError(f"--metrics={','.join(FLAGS.metrics)}: use linear_probe and/or knn")
  for name, low in (("batch_size", 1), ("epochs", 1), ("min_steps", 0)):
    if getattr(FLAGS, name) < low:
      raise UserError(f"--{name}={getattr(FLAGS, name)}: use at least {low}")
  if not 0 < FLAGS.learning_rate < float("inf"):
    raise UserError(f"--learning_rate={FLAGS.learning_rate}: use a positive, finite rate")
  watchdog = cli.initialize_distributed()
  result = run(FLAGS.features, metrics=FLAGS.metrics, train_split=FLAGS.train_split,
               val_split=FLAGS.val_split, test_split=FLAGS.test_split,
               mesh=sharding.make_mesh(), method=FLAGS.method, epochs=FLAGS.epochs,
               min_steps=FLAGS.min_steps,
               batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate)
  if jax.process_index() == 0:
    if FLAGS.workdir:
      paths.append_jsonl(paths.path(FLAGS.workdir) / "eval.jsonl", [result])
    print(json.dumps(result), flush=True)
  if watchdog is not None:
    watchdog.stop()


if __name__ == "__main__":
  define_flags()
  cli.run(main)
