"""Representation-learning evaluation of a run: linear probe, k-NN, reconstruction (SPEC §7).

  python -m bigbigan_jax.evaluate --workdir=runs/mnist [--metrics=linear_probe,knn,recon]
      [--step=K] [--data_dir=DIR] [--train_examples=N] [--random_init | --raw_pixels]

Prints one JSON object as its last line and appends it to WORKDIR/eval.jsonl. Accuracies are
fractions. The probes train on the train split minus train_val, pick their L2 strength on
train_val and report top-1 on train_val and on the evaluation split (`data.eval_split`, reported
as `*_test`):

  linear_probe_{avepool,bn_crelu}_{train_val,test}   softmax regression on standardised features
  nn1_test, knn{1,5}_{euclidean,cosine}_test          k-NN on avepool_feat, train split as the bank
  recon_mse_test                                      mean (G(E(x)) - x)^2 in [-1, 1] pixel units

Baselines for the "does it learn" check: `--random_init` (same architecture, fresh weights) and
`--raw_pixels` (the probes on pixels: linear_probe_pixels_*, nn1_test, knn*). A GAN-mode run (no
encoder) has no encoder metrics; they are listed under 'skipped'.
"""

import json
import os
import time

from absl import flags
from absl import logging
import jax
import numpy as np

from bigbigan_jax import api
from bigbigan_jax import cli
from bigbigan_jax import extract
from bigbigan_jax import input_pipeline
from bigbigan_jax import metrics as metrics_lib
from bigbigan_jax import models
from bigbigan_jax import train
from bigbigan_jax.errors import UserError

METRICS = ("linear_probe", "knn", "recon")
NOT_YET = ("fid", "is")
KNN_KS = (1, 5)
PROBE_FEATURES = (("avepool", "avepool_feat"), ("bn_crelu", "bn_crelu_feat"))
# The in-training evaluator keeps a split's images in host memory below this size.
_CACHE_BYTES = 1 << 30


def parse_metrics(names) -> tuple:
  """'linear_probe,knn' or a sequence -> a validated tuple of metric names."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  for name in names:
    if name in NOT_YET:
      raise UserError(f"--metrics={name} is not available yet (no Inception-v3 port; "
                      "metrics.frechet_distance/inception_score take your own Inception "
                      f"outputs): use --metrics={','.join(METRICS)}")
    if name not in METRICS:
      raise UserError(f"unknown metric {name!r}: use a comma-separated subset of "
                      f"{','.join(METRICS)}")
  return tuple(names)


def representation_metrics(features, *, metrics, num_classes, probe_names) -> dict:
  """The label-based metrics from per-split features {'train'|'train_val'|'test': {...}}.

  Args:
    features: split -> {feature key: [N, D], 'labels': [N]}; 'train_val' may be missing.
    metrics: a subset of ('linear_probe', 'knn').
    probe_names: (result name, feature key) pairs; k-NN uses the first.
  """
  tr, val, te = features["train"], features.get("train_val"), features["test"]
  out = {}
  if "linear_probe" in metrics:
    for name, key in probe_names:
      probe = metrics_lib.linear_probe(
          tr[key], tr["labels"], None if val is None else val[key],
          None if val is None else val["labels"], te[key], te["labels"],
          num_classes=num_classes)
      out[f"linear_probe_{name}_test"] = probe["test"]
      if "val" in probe:
        out[f"linear_probe_{name}_train_val"] = probe["val"]
      out[f"linear_probe_{name}_l2"] = probe["l2"]
  if "knn" in metrics:
    key = probe_names[0][1]
    for metric in ("euclidean", "cosine"):
      accuracy = metrics_lib.knn_accuracy(tr[key], tr["labels"], te[key], te["labels"],
                                          ks=KNN_KS, metric=metric, num_classes=num_classes)
      for k, value in accuracy.items():
        out[f"knn{k}_{metric}_test"] = value
    out["nn1_test"] = out["knn1_euclidean_test"]
  return out


class Evaluator:
  """Evaluates bound models on one dataset; keeps small splits' images in memory between calls."""

  def __init__(self, model, data_config, *, metrics=METRICS, train_examples=None,
               progress=False, cache=True):
    self.model, self.data = model, data_config
    self.metrics = parse_metrics(metrics)
    self.train_examples, self.progress = train_examples, progress
    info = input_pipeline.dataset_info(data_config)
    self.num_classes = info.num_classes
    self.counts = info.num_examples
    self.splits = {"train": data_config.train_split, "train_val": "train_val",
                   "test": data_config.eval_split}
    self._cache = {} if cache else None

  def _needed_splits(self, encoder: bool):
    labelled = self.num_classes is not None and self.num_classes > 1
    needed = set()
    if labelled and {"linear_probe", "knn"} & set(self.metrics):
      needed |= {"train", "test"}
      if "linear_probe" in self.metrics and self.counts.get("train_val", 0) > 0:
        needed.add("train_val")
    if encoder and "recon" in self.metrics:
      needed.add("test")
    return sorted(needed), labelled

  def _batches(self, model, name):
    split = self.splits[name]
    limit = self.train_examples if name == "train" else None
    if self._cache is None:
      return None
    if name not in self._cache:
      count = self.counts.get(split, 0) if limit is None else min(limit, self.counts.get(split, 0))
      size = count * model.image_size ** 2 * model.image_channels * 4
      self._cache[name] = (list(extract.split_batches(model, self.data, split, limit=limit))
                           if size <= _CACHE_BYTES else None)
    return self._cache[name]

  def _features(self, model, name, *, reconstruction_error=False):
    split = self.splits[name]
    limit = self.train_examples if name == "train" else None
    return extract.extract_features(model, self.data, split, limit=limit,
                                    reconstruction_error=reconstruction_error,
                                    progress=self.progress, batches=self._batches(model, name),
                                    count=self.counts.get(split))

  def __call__(self, model) -> dict:
    """Metrics of a bound `api.BigBiGAN` (GAN mode: the encoder metrics are skipped)."""
    start = time.perf_counter()
    out = {"step": model.step}
    if not model.has_encoder:
      out["skipped"] = "no encoder (GAN mode): " + ",".join(self.metrics)
      return out
    needed, labelled = self._needed_splits(encoder=True)
    features = {}
    for name in needed:
      recon = name == "test" and "recon" in self.metrics
      features[name] = self._features(model, name, reconstruction_error=recon)
    if "recon" in self.metrics:
      out["recon_mse_test"] = float(np.mean(features["test"].pop("recon_mse")))
    if labelled:
      out.update(representation_metrics(features, metrics=self.metrics,
                                        num_classes=self.num_classes,
                                        probe_names=PROBE_FEATURES))
    elif {"linear_probe", "knn"} & set(self.metrics):
      out["skipped"] = "the dataset has no class labels: linear_probe,knn"
    out["eval_seconds"] = time.perf_counter() - start
    return out

  def raw_pixels(self, model) -> dict:
    """The probes on flattened pixels at E's resolution (the no-learning baseline)."""
    start = time.perf_counter()
    needed, labelled = self._needed_splits(encoder=False)
    if not labelled:
      raise UserError("--raw_pixels needs a labelled dataset (the probes predict class labels)")
    features = {}
    for name in needed:
      batches = self._batches(model, name) or extract.split_batches(
          model, self.data, self.splits[name],
          limit=self.train_examples if name == "train" else None)
      images, labels = [], []
      for batch in batches:
        mask = model.gather(batch["mask"])
        images.append(model.gather(batch["image"])[mask].reshape(int(mask.sum()), -1))
        labels.append(model.gather(batch["label"])[mask])
      features[name] = {"pixels": np.concatenate(images), "labels": np.concatenate(labels)}
    out = {"step": model.step or 0}  # pixels have no training step
    out.update(representation_metrics(features, metrics=self.metrics,
                                      num_classes=self.num_classes,
                                      probe_names=(("pixels", "pixels"),)))
    out["eval_seconds"] = time.perf_counter() - start
    return out


def _eval_setting(config, name, default):
  section = config.get("eval") or {}
  value = section.get(name) if hasattr(section, "get") else None
  return default if value is None else value


def make_evaluator(config, networks, mesh):
  """`evaluate(state) -> dict` of the metrics above, from a live training state (EMA weights).

  Compiles once; the images of small splits stay in host memory between calls. Optional config
  fields: eval.metrics ('linear_probe,knn,recon'), eval.batch_size (256), eval.train_examples
  (None = the whole train split as the probes' training set and k-NN bank).
  """
  model = api.BigBiGAN(config, networks, mesh,
                       batch_size=_eval_setting(config, "batch_size", 256))
  evaluator = Evaluator(model, config.data,
                        metrics=_eval_setting(config, "metrics", ",".join(METRICS)),
                        train_examples=_eval_setting(config, "train_examples", None))

  def evaluate(state) -> dict:
    return evaluator(model.with_state(state, use_ema=True))

  return evaluate


# ---------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a program: main.py has its own --workdir)."""
  flags.DEFINE_string("workdir", None, "Training run directory (or its checkpoints/ directory).")
  flags.DEFINE_string("metrics", ",".join(METRICS),
                      "Comma-separated subset of " + ",".join(METRICS))
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_string("dataset", None, "TFDS name or folder:/path (default: the run's dataset).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the run's).")
  flags.DEFINE_integer("batch_size", 256, "Images per device call.")
  flags.DEFINE_integer("train_examples", None,
                       "Use only the first N train examples for the probes and the k-NN bank.")
  flags.DEFINE_bool("ema", True, "Use the EMA weights of G and E (--noema: the raw weights).")
  flags.DEFINE_bool("random_init", False, "Baseline: the same architecture, freshly initialised.")
  flags.DEFINE_bool("raw_pixels", False, "Baseline: the probes on raw pixels instead of features.")
  flags.DEFINE_string("inception_weights", None, "FID/IS Inception-v3 weights (not available yet).")


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
  if not FLAGS.workdir:
    raise UserError("--workdir is required: the training run to evaluate")
  if FLAGS.random_init and FLAGS.raw_pixels:
    raise UserError("--random_init and --raw_pixels are two different baselines: pass one")
  metrics = parse_metrics(FLAGS.metrics)
  if FLAGS.inception_weights:
    raise UserError("--inception_weights is not used yet (FID/IS are not available); drop it")
  mesh = api.local_mesh()
  if FLAGS.random_init or FLAGS.raw_pixels:
    config = api.load_config(FLAGS.workdir, FLAGS.step)
    networks = models.build(config)
    model = api.BigBiGAN(config, networks, mesh, batch_size=FLAGS.batch_size)
    if FLAGS.random_init:
      model = model.with_state(
          train.fresh_state(networks, train.create_optimizers(config), config, mesh))
    weights = "random_init" if FLAGS.random_init else "raw_pixels"
  else:
    config, networks, state, _ = api.restore(FLAGS.workdir, FLAGS.step, mesh)
    model = api.BigBiGAN(config, networks, mesh, batch_size=FLAGS.batch_size).with_state(
        state, use_ema=FLAGS.ema)
    weights = "ema" if FLAGS.ema else "raw"
  data = extract.data_config_for(config, FLAGS.dataset, FLAGS.data_dir)
  evaluator = Evaluator(model, data, metrics=metrics, train_examples=FLAGS.train_examples,
                        progress=True, cache=False)
  result = evaluator.raw_pixels(model) if FLAGS.raw_pixels else evaluator(model)
  result = {"step": result.pop("step"), "weights": weights, "dataset": data.dataset,
            "train_examples": FLAGS.train_examples, **result}
  line = json.dumps(result)
  if jax.process_index() == 0:
    with open(os.path.join(api.workdir_of(FLAGS.workdir), "eval.jsonl"), "a") as f:
      f.write(line + "\n")
  print(line, flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
