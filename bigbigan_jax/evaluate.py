"""Evaluation of a run: linear probe, k-NN, reconstruction, FID and IS (SPEC §7).

  python -m bigbigan_jax.evaluate --workdir=runs/mnist [--metrics=linear_probe,knn,recon]
      (default: the run's eval.metrics)
      [--step=K] [--data_dir=DIR] [--train_examples=N] [--random_init | --raw_pixels]
      [--[no]encoder_standing_stats] [--noema]
  python -m bigbigan_jax.evaluate --workdir=runs/mnist --metrics=fid,is
      --inception_weights=pt_inception-2015-12-05-6726825d.pth [--num_fid_samples=N]

Prints one JSON object as its last line and appends it to WORKDIR/eval.jsonl. Accuracies are
fractions. The probes train on the train split minus train_val, pick their L2 strength on
train_val and report top-1 on train_val and on the evaluation split (`data.eval_split`, reported
as `*_test`):

  linear_probe_{avepool,bn_crelu}_{train_val,test}   softmax regression on standardised features
  nn1_test, knn{1,5}_{euclidean,cosine}_test          k-NN on avepool_feat, train split as the bank
  nn1_train_val                                       the same 1-NN on train_val (model selection)
  recon_mse_test                                      mean (G(E(x)) - x)^2 in [-1, 1] pixel units
  recon_label_agreement_test                          recon_labels (asked for by name): the share
                                                      of test images whose G(E(x)) a softmax
                                                      regression on real train pixels assigns to
                                                      x's label; recon_classifier_test is that
                                                      classifier's top-1 on the real test images
  pairing_encoder_test, pairing_generator            pairing (asked for by name): does D's joint
                                                      score (BiGAN's only one) tell which z goes
                                                      with which x? The share of test images x
                                                      whose score with E(x) beats the one with
                                                      another image's E(x'), and of generated
                                                      pairs (G(z), z) scored below (G(z), z')
                                                      (0.5: blind)
  fid, is, is_std                                     G's samples (EMA weights, standing BN
                                                      statistics) vs the evaluation split

FID/IS use the FID Inception-v3 (inception.py) with pytorch-fid's weights file, never downloaded;
the evaluation split's Inception statistics are computed once and cached in
WORKDIR/fid_reference_<dataset>_<split>_<resolution>.npz.

Baselines for the "does it learn" check: `--random_init` (same architecture, fresh weights) and
`--raw_pixels` (the probes on pixels: linear_probe_pixels_*, nn1_test, knn*). A GAN-mode run (no
encoder) has no encoder metrics; they are listed under 'skipped'.

BiGAN (2017) runs (configs/bigan_mnist.py) also report the paper's two 1-NN numbers side by side
with raw pixels on the same split: nn1_test (E's penultimate layer; D's hidden layer for the
d_features baseline), nn1_z_test (E(x), measured as the BiGAN code did on E's linear output
before the sigmoid, `z_logits`: the squashed z_mean saturates and crowds distances near ±1) and
nn1_pixels_test.
"""

import copy
import itertools
import json
import os
import re
import time

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from bigbigan_jax import api
from bigbigan_jax import cli
from bigbigan_jax import extract
from bigbigan_jax import inception as inception_lib
from bigbigan_jax import input_pipeline
from bigbigan_jax import metrics as metrics_lib
from bigbigan_jax import models
from bigbigan_jax import train
from bigbigan_jax.errors import UserError

METRICS = ("linear_probe", "knn", "recon")
GENERATION_METRICS = ("fid", "is")  # need --inception_weights
# Asked for by name only: a softmax regression on pixels is cheap on digits, not on ImageNet.
OPTIONAL_METRICS = ("recon_labels", "pairing")
PAIRING_SEED = 0  # the shuffles and the generated pairs' latents of `pairing`
PAIRING_EXAMPLES = 1000  # `pairing` scores the first this many test images (and as many G(z))
STANDING_STATS_BATCHES = 16  # batches of z for G's standing BN statistics
ENCODER_STATS_BATCHES = 16  # train batches for E's (--encoder_standing_stats)
FID_SEED = 0  # the generated samples' latents (fixed: checkpoints are compared on the same z)
KNN_KS = (1, 5)
PROBE_FEATURES = (("avepool", "avepool_feat"), ("bn_crelu", "bn_crelu_feat"))
# The in-training evaluator keeps a split's images in host memory below this size.
_CACHE_BYTES = 1 << 30


def parse_metrics(names) -> tuple:
  """'linear_probe,knn' or a sequence -> a validated tuple of metric names."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  for name in names:
    if name not in METRICS + OPTIONAL_METRICS + GENERATION_METRICS:
      raise UserError(f"unknown metric {name!r}: use a comma-separated subset of "
                      f"{','.join(METRICS + OPTIONAL_METRICS + GENERATION_METRICS)}")
  return tuple(names)


def representation_metrics(features, *, metrics, num_classes, probe_names,
                           extra_nn1=()) -> dict:
  """The label-based metrics from per-split features {'train'|'train_val'|'test': {...}}.

  Args:
    features: split -> {feature key: [N, D], 'labels': [N]}; 'train_val' may be missing.
    metrics: a subset of ('linear_probe', 'knn').
    probe_names: (result name, feature key) pairs; k-NN uses the first.
    extra_nn1: (result name, feature key) pairs that also get a Euclidean 1-NN, nn1_<name>_test.
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
    if val is not None:  # for model selection: train_val against the same bank
      out["nn1_train_val"] = metrics_lib.knn_accuracy(
          tr[key], tr["labels"], val[key], val["labels"], ks=(1,), metric="euclidean",
          num_classes=num_classes)[1]
    for name, key in extra_nn1:
      out[f"nn1_{name}_test"] = metrics_lib.knn_accuracy(
          tr[key], tr["labels"], te[key], te["labels"], ks=(1,), metric="euclidean",
          num_classes=num_classes)[1]
  return out


class Evaluator:
  """Evaluates bound models on one dataset; keeps small splits' images in memory between calls."""

  def __init__(self, model, data_config, *, metrics=METRICS, train_examples=None,
               progress=False, cache=True, inception=None, num_fid_samples=10_000,
               standing_stats=True, reference_dir=None, encoder_stats_batches=0):
    """`encoder_stats_batches`: before each evaluation, re-estimate the feature network's BN
    statistics on that many full train batches (see `with_encoder_standing_stats`); 0: keep the
    running statistics of training.

    FID/IS arguments: `inception` (an `inception.Inception`, required by 'fid' and 'is'),
    `num_fid_samples` generated images, `standing_stats` (recompute G's BN statistics first, see
    `api.BigBiGAN.with_standing_stats`), `reference_dir` (where the real split's Inception
    statistics are cached as fid_reference_<dataset>_<split>_<resolution>.npz; None: in memory).
    """
    self.model, self.data = model, data_config
    self.metrics = parse_metrics(metrics)
    self.generation = [m for m in self.metrics if m in GENERATION_METRICS]
    if self.generation and inception is None:
      raise UserError(f"--metrics={','.join(self.generation)} needs the FID Inception-v3 "
                      "weights: pass --inception_weights=PATH (pytorch-fid's "
                      f"{inception_lib.WEIGHTS_FILE} or an .npz of it; nothing is downloaded)")
    self.train_examples, self.progress = train_examples, progress
    info = input_pipeline.dataset_info(data_config)
    self.num_classes = info.num_classes
    self.counts = info.num_examples
    self.splits = {"train": data_config.train_split, "train_val": "train_val",
                   "test": data_config.eval_split}
    self._cache = {} if cache else None
    self._pixel_nn1 = None  # BiGAN runs: raw-pixel 1-NN, computed once
    self._recon_classifier = None  # recon_labels: (params, its test top-1), trained once
    self.inception, self.num_fid_samples = inception, num_fid_samples
    self.standing_stats, self.reference_dir = standing_stats, reference_dir
    self._inception_variables = None  # on the model's devices, placed once
    self._fid_reference = None  # (key, mu, sigma) of the real split
    self.encoder_stats_batches = int(encoder_stats_batches or 0)
    if self.encoder_stats_batches < 0:
      raise UserError(f"eval.encoder_stats_batches={encoder_stats_batches}: use 0 (off) or a "
                      "positive number of train batches")

  def _needed_splits(self, encoder: bool, metrics=None):
    metrics = self.metrics if metrics is None else metrics
    labelled = self.num_classes is not None and self.num_classes > 1
    needed = set()
    probes = {"linear_probe", "knn"} | ({"recon_labels"} if encoder else set())
    if labelled and probes & set(metrics):  # recon_labels' classifier trains on real pixels
      needed |= {"train", "test"}
      if self.counts.get("train_val", 0) > 0:
        needed.add("train_val")
    if encoder and "recon" in metrics:
      needed.add("test")
    return sorted(needed), labelled

  def _count(self, name):
    """Examples of split `name` ('train', 'train_val', 'test') that the evaluation uses."""
    count = self.counts.get(self.splits[name], 0)
    return count if name != "train" or self.train_examples is None else min(
        count, self.train_examples)

  def _batches(self, model, name):
    split = self.splits[name]
    limit = self.train_examples if name == "train" else None
    if self._cache is None:
      return None
    if name not in self._cache:
      size = self._count(name) * model.image_size ** 2 * model.image_channels * 4
      self._cache[name] = (list(extract.split_batches(model, self.data, split, limit=limit))
                           if size <= _CACHE_BYTES else None)
    return self._cache[name]

  def _features(self, model, name, *, reconstruction_error=False, reconstructions=False):
    split = self.splits[name]
    limit = self.train_examples if name == "train" else None
    return extract.extract_features(model, self.data, split, limit=limit,
                                    reconstruction_error=reconstruction_error,
                                    reconstructions=reconstructions,
                                    progress=self.progress, batches=self._batches(model, name),
                                    count=self.counts.get(split))

  def _images(self, model, name, *, as_generated=False, limit=None):
    """Real images [N, S, S, C] of a split (its first `limit`) and their labels where it has them,
    at E's resolution or (`as_generated`) as G produces them (`model.d_view`)."""
    batches = self._batches(model, name) or extract.split_batches(
        model, self.data, self.splits[name],
        limit=self.train_examples if name == "train" else None)
    images, labels, n = [], [], 0
    for batch in batches:
      mask = model.gather(batch["mask"])
      x = model.gather(batch["image"])[mask]
      images.append(np.asarray(model.d_view(jnp.asarray(x))) if as_generated else x)
      if "label" in batch:
        labels.append(model.gather(batch["label"])[mask])
      n += len(x)
      if limit is not None and n >= limit:
        break
    out = {"images": np.concatenate(images)[:limit]}
    if labels:
      out["labels"] = np.concatenate(labels)[:limit]
    return out

  def _pixels(self, model, name, *, as_generated=False):
    """`_images` of a labelled split, flattened: {'pixels': [N, D], 'labels': [N]}."""
    split = self._images(model, name, as_generated=as_generated)
    return {"pixels": split["images"].reshape(len(split["images"]), -1), "labels": split["labels"]}

  def recon_label_metrics(self, model, reconstructions, labels) -> dict:
    """Do reconstructions keep their digit? A softmax regression on real train pixels (as G
    produces them; L2 picked on train_val) labels the test reconstructions `[N, ...]`. Pixels
    are not standardised: that made the classifier fragile (on the digits, 5% salt noise took
    its top-1 from 0.91 to 0.84 standardised, to 0.91 not). The classifier depends on the data
    alone, so it is trained once per Evaluator (at the first evaluation of a run)."""
    if self._recon_classifier is None:
      train_px = self._pixels(model, "train", as_generated=True)
      val_px = (self._pixels(model, "train_val", as_generated=True)
                if self.counts.get("train_val", 0) else None)
      test_px = self._pixels(model, "test", as_generated=True)
      probe = metrics_lib.linear_probe(
          train_px["pixels"], train_px["labels"],
          None if val_px is None else val_px["pixels"],
          None if val_px is None else val_px["labels"],
          test_px["pixels"], test_px["labels"], num_classes=self.num_classes,
          standardized=False, return_params=True)
      self._recon_classifier = (probe["params"], probe["test"])
    params, classifier_test = self._recon_classifier
    agreement = metrics_lib.accuracy(
        params, np.asarray(reconstructions, np.float32).reshape(len(reconstructions), -1), labels)
    return {"recon_label_agreement_test": agreement, "recon_classifier_test": classifier_test}

  def pairing_metrics(self, model) -> dict:
    """Does D's joint score know the pairing? Encoder pairs (x, E(x)) are D's "real" pairs, so
    a D that knows E's pairing scores them above (x, E(x')), x' another test image (of the first
    PAIRING_EXAMPLES); generator pairs are "fake", so one that knows G's pairing scores (G(z), z)
    below (G(z), z'). Returns the two shares of pairs for which it does (0.5: no knowledge); {}
    without a joint score."""
    images = self._images(model, "test", limit=PAIRING_EXAMPLES)["images"]
    n = len(images)
    shuffle = np.random.default_rng(PAIRING_SEED).permutation(n)
    joint = lambda x, z: model.discriminate(x, z)["score_xz"]
    z_hat = model.encode(images, seed=PAIRING_SEED)["z_sample"]
    matched = joint(images, z_hat)
    if matched is None:
      return {}
    z = model.sample_z(n, seed=PAIRING_SEED)
    fake = model.generate(z)
    return {"pairing_encoder_test": float(np.mean(matched > joint(images, z_hat[shuffle]))),
            "pairing_generator": float(np.mean(joint(fake, z) < joint(fake, z[shuffle])))}

  def with_encoder_standing_stats(self, model, num_batches):
    """`model` whose feature network (E; D for the "D features" baseline) normalises with the
    average batch moments of the first `num_batches` train batches, as the BiGAN code's "deploy"
    pass did before every evaluation (`api.BigBiGAN.with_encoder_standing_stats`), and the
    number of batches used. Only full batches count: the split's last, padded one never does."""
    full = min(int(num_batches), self._count("train") // model.batch_size)
    if full < 1 or not model.has_features:
      return model, 0
    batches = self._batches(model, "train") or extract.split_batches(
        model, self.data, self.splits["train"], limit=self.train_examples)
    images = (b["image"] for b in itertools.islice(batches, full))
    return model.with_encoder_standing_stats(images), full

  def __call__(self, model) -> dict:
    """Metrics of a bound `api.BigBiGAN` (GAN mode: the encoder metrics are skipped)."""
    start = time.perf_counter()
    out = {"step": model.step}
    if self.generation:
      out.update(self.generation_metrics(model))
    representation = [m for m in self.metrics if m not in GENERATION_METRICS]
    if not model.has_features or not representation:
      if representation:
        out["skipped"] = "no encoder (GAN mode): " + ",".join(representation)
      if self.generation:
        out["eval_seconds"] = time.perf_counter() - start
      return out
    if self.encoder_stats_batches:  # only the feature network changes: after G's FID/IS
      model, used = self.with_encoder_standing_stats(model, self.encoder_stats_batches)
      out["encoder_stats_batches"] = used
    needed, labelled = self._needed_splits(encoder=model.has_encoder)
    features = {}
    recon_metric = "recon" in self.metrics and model.has_encoder
    recon_labels = "recon_labels" in self.metrics and model.has_encoder and labelled
    for name in needed:
      recon = name == "test" and recon_metric
      features[name] = self._features(model, name, reconstruction_error=recon,
                                      reconstructions=name == "test" and recon_labels)
    if recon_metric:
      out["recon_mse_test"] = float(np.mean(features["test"].pop("recon_mse")))
    if recon_labels:
      out.update(self.recon_label_metrics(model, features["test"].pop("reconstruction"),
                                          features["test"]["labels"]))
    if "pairing" in self.metrics and model.has_encoder:
      out.update(self.pairing_metrics(model))
    probes = {"linear_probe", "knn"} & set(self.metrics)
    if labelled and probes:
      bigan_nn1 = model.bigan_mlp and "knn" in self.metrics
      out.update(representation_metrics(
          features, metrics=self.metrics, num_classes=self.num_classes,
          probe_names=PROBE_FEATURES,
          extra_nn1=(("z", "z_logits"),) if bigan_nn1 and model.has_encoder else ()))
      if bigan_nn1:
        if self._pixel_nn1 is None:
          self._pixel_nn1 = self.raw_pixels(model, metrics=("knn",))["nn1_test"]
        out["nn1_pixels_test"] = self._pixel_nn1
    elif probes:
      out["skipped"] = "the dataset has no class labels: linear_probe,knn"
    out["eval_seconds"] = time.perf_counter() - start
    return out

  # -- FID and IS. --------------------------------------------------------------------------

  def generation_metrics(self, model) -> dict:
    """FID and/or IS of `num_fid_samples` images of the bound G (the EMA weights when bound so).

    With `standing_stats`, G's BN statistics are first recomputed on fresh latents. Generated and
    real images are rounded to 8 bits (as saved images would be) before the Inception network;
    real images are the evaluation split at G's resolution (E-resolution images average-pooled as
    D sees them). FID compares the pool3 statistics; IS is the mean (is_std: the std) over 10
    splits of the softmax of the 1008 unbiased logits (see inception.py).
    """
    n = int(self.num_fid_samples)
    if n < 10:
      raise UserError(f"eval.num_fid_samples={n}: FID/IS need at least 10 generated images")
    if self._inception_variables is None:
      self._inception_variables = jax.device_put(self.inception.variables, model.replicated)
    generator = (model.with_standing_stats(STANDING_STATS_BATCHES) if self.standing_stats
                 else model)
    features = self.inception.features

    def generated_fn(variables, z):
      images = _eight_bit(model.apply_generator(variables, z))
      return features(variables["inception"], images)

    # G and the Inception network in one jitted function: the images never leave the devices.
    runner = copy.copy(generator)
    runner.variables = {**generator.variables, "inception": self._inception_variables}
    fn = model.cached_jit(("fid_generated", self.inception), generated_fn)
    out = runner._batched(fn, model.sample_z(n, FID_SEED))  # pylint: disable=protected-access
    result = {"fid_samples": n, "standing_stats": bool(self.standing_stats)}
    if "fid" in self.generation:
      mu, sigma = self._real_statistics(model)
      pool = out["pool"].astype(np.float64)
      result["fid"] = metrics_lib.frechet_distance(pool.mean(axis=0), np.cov(pool, rowvar=False),
                                                   mu, sigma)
    if "is" in self.generation:
      result["is"], result["is_std"] = metrics_lib.inception_score(out["probs"], splits=10)
    return result

  def _real_statistics(self, model):
    """(mu, sigma) of the evaluation split's pool3 features: computed once, then cached."""
    split = self.splits["test"]
    resolution = model.generator_resolution
    key = json.dumps({"dataset": self.data.dataset, "split": split, "resolution": resolution,
                      "examples": self.counts.get(split), "channels": model.image_channels,
                      "inception": self.inception.fingerprint}, sort_keys=True)
    if self._fid_reference is not None and self._fid_reference[0] == key:
      return self._fid_reference[1:]
    path = None
    # A file cache only for a process-local mesh: in a multi-host run every process must take
    # part in the same computations, and a file that only some hosts see would break that.
    if self.reference_dir and not model.multihost:
      name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.data.dataset}_{split}").strip("_")
      path = os.path.join(self.reference_dir, f"fid_reference_{name}_{resolution}.npz")
      if os.path.exists(path):
        with np.load(path) as cached:
          if str(cached["key"]) == key:
            self._fid_reference = (key, cached["mu"], cached["sigma"])
            return self._fid_reference[1:]
        logging.warning("%s was computed with another dataset, image format or Inception "
                        "weights: recomputing it", path)
    features = self.inception.features

    def real_fn(inception_variables, images):
      return features(inception_variables, _eight_bit(model.d_view(images)))["pool"]

    fn = model.cached_jit(("fid_real", self.inception), real_fn)
    batches = self._batches(model, "test") or extract.split_batches(model, self.data, split)
    if self.progress:
      total = -(-self.counts.get(split, 0) // model.batch_size)
      batches = extract._progress(  # pylint: disable=protected-access
          batches, total, f"Inception features of {split}")
    moments = _Moments()
    for batch in batches:
      pool = np.asarray(fn(self._inception_variables,
                           model.to_device(batch["image"])).addressable_data(0))
      moments.add(pool[model.gather(batch["mask"])])
    mu, sigma = moments.statistics()
    if path is not None and jax.process_index() == 0:
      tmp = path + ".tmp.npz"
      np.savez(tmp, mu=mu, sigma=sigma, key=np.asarray(key), num_examples=moments.n)
      os.replace(tmp, path)
    self._fid_reference = (key, mu, sigma)
    return mu, sigma

  def raw_pixels(self, model, metrics=None) -> dict:
    """The probes on flattened pixels at E's resolution (the no-learning baseline)."""
    start = time.perf_counter()
    metrics = self.metrics if metrics is None else metrics
    needed, labelled = self._needed_splits(encoder=False, metrics=metrics)
    if not labelled:
      raise UserError("--raw_pixels needs a labelled dataset (the probes predict class labels)")
    features = {name: self._pixels(model, name) for name in needed}
    out = {"step": model.step or 0}  # pixels have no training step
    out.update(representation_metrics(features, metrics=metrics, num_classes=self.num_classes,
                                      probe_names=(("pixels", "pixels"),)))
    out["eval_seconds"] = time.perf_counter() - start
    return out


def _eight_bit(images):
  """[-1, 1] images rounded to the 256 levels of an 8-bit image (as if saved to PNG)."""
  return jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


class _Moments:
  """Mean and covariance (N - 1 normalised, as np.cov) of feature rows added batch by batch.

  Float64 sums of (x - shift) and its outer products, shifted by the first batch's mean.
  """

  def __init__(self):
    self.n, self.shift, self.sum, self.outer = 0, None, 0.0, 0.0

  def add(self, rows):
    rows = np.asarray(rows, np.float64)
    if not len(rows):
      return
    if self.shift is None:
      self.shift = rows.mean(axis=0)
    rows = rows - self.shift
    self.n += len(rows)
    self.sum = self.sum + rows.sum(axis=0)
    self.outer = self.outer + rows.T @ rows

  def statistics(self):
    if self.n < 2:
      raise UserError(f"the evaluation split has {self.n} images: FID needs at least 2")
    mean = self.sum / self.n
    sigma = (self.outer - self.n * np.outer(mean, mean)) / (self.n - 1)
    return self.shift + mean, sigma


def _eval_setting(config, name, default):
  section = config.get("eval") or {}
  value = section.get(name) if hasattr(section, "get") else None
  return default if value is None else value


def make_evaluator(config, networks, mesh):
  """`evaluate(state) -> dict` of the metrics above, from a live training state (EMA weights).

  Compiles once; the images of small splits stay in host memory between calls. Optional config
  fields: eval.metrics ('linear_probe,knn,recon'), eval.batch_size (256), eval.train_examples
  (None = the whole train split as the probes' training set and k-NN bank); for 'fid'/'is' in
  eval.metrics: eval.inception_weights (a path), eval.num_fid_samples, eval.standing_stats (the
  real split's statistics are then kept in memory, not cached in a file).
  """
  model = api.BigBiGAN(config, networks, mesh,
                       batch_size=_eval_setting(config, "batch_size", 256))
  metrics = parse_metrics(_eval_setting(config, "metrics", ",".join(METRICS)))
  weights = _eval_setting(config, "inception_weights", None)
  evaluator = Evaluator(model, config.data, metrics=metrics,
                        train_examples=_eval_setting(config, "train_examples", None),
                        encoder_stats_batches=_eval_setting(config, "encoder_stats_batches", 0),
                        **_generation_settings(config, metrics, weights))

  def evaluate(state) -> dict:
    return evaluator(model.with_state(state, use_ema=True))

  return evaluate


def _generation_settings(config, metrics, inception, num_fid_samples=None,
                         standing_stats=None) -> dict:
  """Evaluator's FID/IS arguments: the arguments given, else the config's eval fields.

  `inception`: an `inception.Inception`, a weights path (loaded only if FID/IS are wanted), None.
  """
  if isinstance(inception, str):
    wanted = any(m in GENERATION_METRICS for m in metrics)
    inception = inception_lib.load(inception) if wanted else None
  return dict(
      inception=inception,
      num_fid_samples=(num_fid_samples if num_fid_samples is not None
                       else _eval_setting(config, "num_fid_samples", 10_000)),
      standing_stats=(standing_stats if standing_stats is not None
                      else _eval_setting(config, "standing_stats", True)))


# ---------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a program: main.py has its own --workdir)."""
  flags.DEFINE_string("workdir", None, "Training run directory (or its checkpoints/ directory).")
  flags.DEFINE_string("metrics", None,
                      "Comma-separated subset of "
                      + ",".join(METRICS + OPTIONAL_METRICS + GENERATION_METRICS)
                      + " (default: the run's eval.metrics, else " + ",".join(METRICS) + ")")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_string("dataset", None, "TFDS name or folder:/path (default: the run's dataset).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the run's).")
  flags.DEFINE_integer("batch_size", 256, "Images per device call.")
  flags.DEFINE_integer("train_examples", None,
                       "Use only the first N train examples for the probes and the k-NN bank.")
  flags.DEFINE_bool("ema", True, "Use the EMA weights of G and E (--noema: the raw weights).")
  flags.DEFINE_bool("random_init", False, "Baseline: the same architecture, freshly initialised.")
  flags.DEFINE_bool("raw_pixels", False, "Baseline: the probes on raw pixels instead of features.")
  flags.DEFINE_bool("encoder_standing_stats", None,
                    "Re-estimate E's batch-norm statistics as the average moments of the first "
                    "batches of the train split before evaluating (the run's "
                    f"eval.encoder_stats_batches, else {ENCODER_STATS_BATCHES}); with "
                    "--random_init this is the random twin normalised as in training (at init "
                    "its BN statistics are mean 0, variance 1: the identity). Default: as the "
                    "run evaluated itself in training (eval.encoder_stats_batches).")
  flags.DEFINE_string("inception_weights", None,
                      f"fid,is: the FID Inception-v3 weights, pytorch-fid's "
                      f"{inception_lib.WEIGHTS_FILE} (or an .npz of it); never downloaded.")
  flags.DEFINE_integer("num_fid_samples", None,
                       "fid,is: generated images (default: the run's eval.num_fid_samples).")
  flags.DEFINE_bool("standing_stats", None,
                    "fid,is: recompute G's BN statistics on fresh latents first "
                    "(default: the run's eval.standing_stats, else True).")


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
  if not FLAGS.workdir:
    raise UserError("--workdir is required: the training run to evaluate")
  if FLAGS.random_init and FLAGS.raw_pixels:
    raise UserError("--random_init and --raw_pixels are two different baselines: pass one")
  metrics = parse_metrics(FLAGS.metrics if FLAGS.metrics is not None else _eval_setting(
      api.load_config(FLAGS.workdir, FLAGS.step), "metrics", ",".join(METRICS)))
  generation = [m for m in metrics if m in GENERATION_METRICS]
  if generation and not FLAGS.inception_weights:
    raise UserError(f"--metrics={','.join(generation)} needs --inception_weights=PATH: "
                    f"pytorch-fid's {inception_lib.WEIGHTS_FILE} or an .npz of it "
                    "(nothing is downloaded)")
  if FLAGS.inception_weights and not generation:
    raise UserError("--inception_weights is only used by --metrics=fid,is: add them to "
                    "--metrics or drop the flag")
  if generation and FLAGS.raw_pixels:
    raise UserError("--raw_pixels has no generator: drop fid,is from --metrics")
  # The weights first: a wrong file fails before the checkpoint is restored.
  inception = inception_lib.load(FLAGS.inception_weights) if generation else None
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
  configured = int(_eval_setting(config, "encoder_stats_batches", 0) or 0)
  if FLAGS.encoder_standing_stats and (not model.has_features or FLAGS.raw_pixels):
    raise UserError("--encoder_standing_stats needs an encoder: drop it (GAN mode or "
                    "--raw_pixels)")
  if FLAGS.encoder_standing_stats is None:
    stats_batches = 0 if FLAGS.raw_pixels else configured
  else:
    stats_batches = (configured or ENCODER_STATS_BATCHES) if FLAGS.encoder_standing_stats else 0
  if stats_batches:
    weights += "+encoder_standing_stats"
  evaluator = Evaluator(model, data, metrics=metrics, train_examples=FLAGS.train_examples,
                        progress=True, cache=False, reference_dir=api.workdir_of(FLAGS.workdir),
                        encoder_stats_batches=stats_batches,
                        **_generation_settings(config, metrics, inception,
                                               FLAGS.num_fid_samples, FLAGS.standing_stats))
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
