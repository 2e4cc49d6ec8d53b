"""Evaluators as plugins, configured in `config.evals` and run by the same code in training
(every `eval_every` steps, or an entry's own `every`) and in `python -m bigbigan_jax.evaluate`.

  config.evals.<name> = dict(type=<a key of TYPES>, every=<None: eval_every | 0: off | N>,
                             **options of that type)

Types, one module each (docs/design.md#evaluation):
  linear_probe   linear_probe_{avepool,bn_crelu}_{train_val,test}          (linear_probe.py)
  knn            knn{1,5}_{euclidean,cosine}_test, nn1_test, nn1_train_val   (knn.py)
  recon          recon_mse_test                                              (recon.py)
  recon_labels   recon_label_agreement_test, recon_classifier_test           (recon_labels.py)
  pairing        pairing_encoder_test, pairing_generator                     (pairing.py)
  fid, inception_score   fid; is, is_std (need the FID Inception weights)    (fid.py)
  bigan_nn1      nn1_z_test, nn1_pixels_test: BiGAN (2017)'s Table 1         (bigan_nn1.py)

The features every evaluator of one evaluation asks for are computed once (`common.Context`).
"""

import time

from bigbigan_jax import config_lib
from bigbigan_jax.errors import UserError
from bigbigan_jax.evaluators import bigan_nn1
from bigbigan_jax.evaluators import common
from bigbigan_jax.evaluators import fid
from bigbigan_jax.evaluators import knn
from bigbigan_jax.evaluators import linear_probe
from bigbigan_jax.evaluators import pairing
from bigbigan_jax.evaluators import recon
from bigbigan_jax.evaluators import recon_labels

TYPES = {
    "linear_probe": linear_probe.LinearProbe,
    "knn": knn.KNN,
    "recon": recon.Recon,
    "recon_labels": recon_labels.ReconLabels,
    "pairing": pairing.Pairing,
    "fid": fid.FID,
    "inception_score": fid.InceptionScore,
    "bigan_nn1": bigan_nn1.BiganNN1,
}
# The (result name, feature key) pairs of the probes; k-NN uses the first.
PROBE_NAMES = (("avepool", "avepool_feat"), ("bn_crelu", "bn_crelu_feat"))


def enabled(config) -> tuple:
  """The names of `config.evals` that run in training (`every` not 0)."""
  return tuple(name for name, entry in config.evals.items() if entry.every != 0)


def parse_names(names, config) -> tuple:
  """'linear_probe,knn' or a sequence -> a validated tuple of `config.evals` names."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  for name in names:
    if name not in config.evals:
      raise UserError(f"unknown metric {name!r}: use a comma-separated subset of "
                      f"{','.join(config.evals)}")
  return tuple(names)


def weights_label(use_ema: bool, encoder_stats_batches: int = 0) -> str:
  """How eval.jsonl names the weights an evaluation used."""
  label = "ema" if use_ema else "raw"
  return label + ("+encoder_standing_stats" if encoder_stats_batches else "")


class Suite:
  """Named evaluators over one dataset; `suite(model)` runs them on a bound model."""

  def __init__(self, evaluators: dict, data: common.Data, *, encoder_stats_batches=0,
               every=None):
    """`encoder_stats_batches`: before each evaluation, re-estimate the feature network's BN
    statistics on that many full train batches (`common.Data.with_encoder_standing_stats`);
    0 keeps the running statistics of training. `every`: {name: steps} for `due`."""
    self.evaluators, self.data = evaluators, data
    self.encoder_stats_batches = int(encoder_stats_batches or 0)
    if self.encoder_stats_batches < 0:
      raise UserError(f"eval.encoder_stats_batches={encoder_stats_batches}: use 0 (off) or a "
                      "positive number of train batches")
    self.every = every or {}

  def due(self, step: int, total_steps: int) -> tuple:
    """The evaluators to run after training step `step` (those that run in training also run at
    the last step)."""
    return tuple(n for n in self.evaluators
                 if self.every.get(n) and (step % self.every[n] == 0 or step == total_steps))

  def __call__(self, model, names=None) -> dict:
    """Results of the evaluators `names` (default: all) on a bound `inference.BigBiGAN`."""
    start = time.perf_counter()
    chosen = {n: self.evaluators[n] for n in (names or self.evaluators)}
    out = {"step": model.step}
    # G-only evaluators (FID/IS) first: only the feature network changes below.
    context = common.Context(model, self.data, {}, PROBE_NAMES)
    for name, e in chosen.items():
      if not (e.needs_encoder or e.needs_features):
        out.update(_timed(name, e, context))
    representation = {n: e for n, e in chosen.items() if e.needs_encoder or e.needs_features}
    runnable = {n: e for n, e in representation.items() if e.applies(model, self.data)}
    skipped = [n for n in representation if n not in runnable]
    if runnable:
      if self.encoder_stats_batches:
        model, used = self.data.with_encoder_standing_stats(model, self.encoder_stats_batches)
        out["encoder_stats_batches"] = used
      needed = {}
      for e in runnable.values():
        for split, extras in e.requires(model, self.data).items():
          needed.setdefault(split, set()).update(extras)
      features_start = time.perf_counter()
      features = {split: self.data.features(model, split, extras)
                  for split, extras in sorted(needed.items())}
      out["seconds/features"] = time.perf_counter() - features_start
      context = common.Context(model, self.data, features, PROBE_NAMES)
      for name, e in runnable.items():
        out.update(_timed(name, e, context))
    if skipped:
      reason = ("no encoder (GAN mode)" if not model.has_features
                else "the dataset has no class labels" if not self.data.labelled
                else "no encoder")
      out["skipped"] = f"{reason}: {','.join(skipped)}"
    out["eval_seconds"] = time.perf_counter() - start
    return out

  def raw_pixels(self, model, names=None) -> dict:
    """The probes (linear_probe, knn) on flattened pixels at E's resolution: the no-learning
    baseline, reported as linear_probe_pixels_*, nn1_test, knn*."""
    start = time.perf_counter()
    if not self.data.labelled:
      raise UserError("--raw_pixels needs a labelled dataset (the probes predict class labels)")
    chosen = [e for n, e in self.evaluators.items() if names is None or n in names]
    chosen = [e for e in chosen if isinstance(e, common.FeatureProbe)]
    splits = common.label_splits(self.data)
    features = {name: self.data.pixels(model, name) for name in splits}
    context = common.Context(model, self.data, features, (("pixels", "pixels"),))
    out = {"step": model.step or 0}  # pixels have no training step
    for e in chosen:
      out.update(e.run(context))
    out["eval_seconds"] = time.perf_counter() - start
    return out


def _timed(name, evaluator, context) -> dict:
  """The evaluator's results plus 'seconds/<name>', the time it took."""
  start = time.perf_counter()
  out = evaluator.run(context)
  out[f"seconds/{name}"] = time.perf_counter() - start
  return out


def from_config(config, names=None, *, data_config=None, train_examples="config",
                test_examples="config",
                encoder_stats_batches=None, progress=False, cache=True, reference_dir=None,
                inception=None, fid_options=None) -> Suite:
  """The Suite of `config.evals` (only `names` if given, else the enabled ones).

  Args:
    data_config: the dataset to evaluate on (default: the run's `config.data`).
    train_examples: probe/k-NN bank size (default: `config.eval.train_examples`).
    test_examples: test examples the evaluators use (default: `config.eval.test_examples`).
    encoder_stats_batches: default `config.eval.encoder_stats_batches`.
    reference_dir: where FID/IS cache the real split's statistics.
    inception: an `inception.Inception` or a weights path, for every FID/IS evaluator.
    fid_options: overrides of the FID/IS entries' options (num_samples, standing_stats).
  """
  names = enabled(config) if names is None else parse_names(names, config)
  evaluators, every = {}, {}
  for name in names:
    entry = dict(config.evals[name])
    kind, step_every = entry.pop("type"), entry.pop("every")
    if kind not in TYPES:
      raise UserError(f"config.evals.{name}.type={kind!r} is not one of {', '.join(TYPES)}")
    if kind in config_lib.INCEPTION_TYPES:
      entry["reference_dir"] = reference_dir
      if inception is not None:
        entry["inception"] = inception
      entry.update({k: v for k, v in (fid_options or {}).items() if v is not None})
      if entry.get("inception") is None and entry.get("inception_weights") is None:
        raise fid.missing_weights_error(config_lib.inception_names(config.evals, names))
    try:
      evaluators[name] = TYPES[kind](**entry)
    except TypeError as e:
      raise UserError(f"config.evals.{name}: {e}; check the options of type {kind!r}") from None
    every[name] = config.eval_every if step_every is None else step_every
  data = common.Data(config.data if data_config is None else data_config,
                     train_examples=(config.eval.train_examples if train_examples == "config"
                                     else train_examples),
                     test_examples=(config.eval.test_examples if test_examples == "config"
                                    else test_examples),
                     progress=progress, cache=cache)
  if encoder_stats_batches is None:
    encoder_stats_batches = config.eval.encoder_stats_batches
  return Suite(evaluators, data, encoder_stats_batches=encoder_stats_batches, every=every)
