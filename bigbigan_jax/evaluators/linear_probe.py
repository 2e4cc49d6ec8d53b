"""Linear probes: softmax regression on frozen features (BigBiGAN §3.1; docs/design.md#evaluation).

Trains on the train split minus train_val, picks its L2 strength on train_val and reports top-1
on both: linear_probe_{avepool,bn_crelu}_{train_val,test} and the chosen linear_probe_*_l2.

Two solvers reach the same optimum (within a point on the digits): full-batch L-BFGS on features
in memory (`metrics.linear_probe`, the small-data path) and minibatch Adam streaming feature
shards, data-parallel over the devices (`metrics.minibatch_linear_probe`). `method='auto'` uses
L-BFGS while the train features fit in `lbfgs_max_bytes`.
"""

import numpy as np

from bigbigan_jax import feature_store
from bigbigan_jax import metrics as metrics_lib
from bigbigan_jax.errors import UserError
from bigbigan_jax.evaluators import common

METHODS = ("auto", "lbfgs", "minibatch")


def probe_metrics(features, probe_names, num_classes, *, method="auto", lbfgs_max_bytes=1 << 30,
                  mesh=None, **minibatch) -> dict:
  """The probes on per-split features {'train'|'train_val'|'test': {key: [N, D], 'labels'}} or
  {split: feature_store.Source}. `minibatch`: options of `metrics.minibatch_linear_probe`."""
  if method not in METHODS:
    raise UserError(f"linear_probe method={method!r}: use one of {', '.join(METHODS)}")
  out = {}
  for name, key in probe_names:
    if _use_lbfgs(features["train"], key, method, lbfgs_max_bytes):
      tr, val, te = (_in_memory(features.get(s), key) for s in ("train", "train_val", "test"))
      probe = metrics_lib.linear_probe(
          tr[key], tr["labels"], None if val is None else val[key],
          None if val is None else val["labels"], te[key], te["labels"], num_classes=num_classes)
    else:
      tr, val, te = (None if features.get(s) is None else feature_store.Source.of(features[s])
                     for s in ("train", "train_val", "test"))
      probe = metrics_lib.minibatch_linear_probe(tr, val, te, key, num_classes=num_classes,
                                                 mesh=mesh, **minibatch)
    out[f"linear_probe_{name}_test"] = probe["test"]
    if "val" in probe:
      out[f"linear_probe_{name}_train_val"] = probe["val"]
    out[f"linear_probe_{name}_l2"] = probe["l2"]
  return out


def _use_lbfgs(train, key, method, max_bytes) -> bool:
  if method != "auto":
    return method == "lbfgs"
  if isinstance(train, feature_store.Source):
    return train.count * train.dims[key] * 4 <= max_bytes
  return np.asarray(train[key]).nbytes <= max_bytes


def _in_memory(split, key):
  if split is None or not isinstance(split, feature_store.Source):
    return split
  parts = list(split.ordered(key, 1 << 14))
  return {key: np.concatenate([x[m] for x, _, m in parts]),
          "labels": np.concatenate([y[m] for _, y, m in parts])}


class LinearProbe(common.FeatureProbe):
  """Options: method ('auto' | 'lbfgs' | 'minibatch'), lbfgs_max_bytes, and for the minibatch
  solver epochs, batch_size, learning_rate and max_seconds (a time budget for training)."""

  def __init__(self, method="auto", lbfgs_max_bytes=1 << 30, **minibatch):
    known = {"epochs", "min_steps", "batch_size", "learning_rate", "max_seconds", "seed",
             "early_stopping"}
    if set(minibatch) - known:
      raise UserError(f"LinearProbe has no options {sorted(set(minibatch) - known)}; it takes "
                      f"method, lbfgs_max_bytes, {', '.join(sorted(known))}")
    if method not in METHODS:
      raise UserError(f"linear_probe method={method!r}: use one of {', '.join(METHODS)}")
    super().__init__()
    self.method, self.lbfgs_max_bytes = method, int(lbfgs_max_bytes)
    self.minibatch = {k: v for k, v in minibatch.items() if v is not None}

  def run(self, ctx):
    return probe_metrics(ctx.features, ctx.probe_names, ctx.data.num_classes,
                         method=self.method, lbfgs_max_bytes=self.lbfgs_max_bytes,
                         **self.minibatch)
