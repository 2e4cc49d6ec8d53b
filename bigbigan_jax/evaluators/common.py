"""What the evaluators share: access to a dataset's splits, the features of a bound model on
them (computed once per evaluation for every evaluator that asks), and the evaluator interface.

Splits are named 'train' (the train split minus train_val: the probes' training set and the k-NN
bank), 'train_val' (model selection) and 'test' (`data.eval_split`, reported as `*_test`).
"""

import itertools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

from bigbigan_jax import input_pipeline
from bigbigan_jax.errors import UserError

# The in-training evaluator keeps a split's images in host memory below this size.
CACHE_BYTES = 1 << 30


def progress_bar(iterable, total, description):
  """A tqdm bar on stderr on process 0 (tqdm ships with TFDS); plain iteration elsewhere.

  With `iterable=None`, a bar to `update` by hand, or None where there is none."""
  if jax.process_index() != 0:
    return iterable
  try:
    import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return iterable
  return tqdm.tqdm(iterable, total=total, desc=description, unit="batch", file=sys.stderr,
                   leave=False, mininterval=1.0)


def split_batches(model, data_config, split, *, limit=None, indices=None):
  """Yields this process's rows of global batches {'image', 'label', 'mask'} of `split`.

  Images are center-cropped at E's resolution and converted to the model's channels. With
  `limit`, only the first `limit` examples of the split (in its fixed order) are kept; with
  `indices`, only those examples, in that order.
  """
  b = model.batch_size
  # A mesh of this process's devices encodes everything here; a global one shares the work.
  index, processes = (jax.process_index(), jax.process_count()) if model.multihost else (0, 1)
  batches = input_pipeline.eval_batches(data_config, split, image_size=model.image_size,
                                        batch_size=b, channels=model.image_channels,
                                        process_index=index, process_count=processes,
                                        indices=indices)
  num_batches = None if limit is None else math.ceil(limit / b)
  local = b // processes
  for k, batch in enumerate(batches):
    if num_batches is not None and k >= num_batches:
      break
    rows = k * b + index * local + np.arange(local)
    mask = batch["mask"] if limit is None else batch["mask"] & (rows < limit)
    yield {"image": batch["image"], "label": batch["label"], "mask": mask}


def extract_features(model, batches, *, features=None, extras=()) -> dict:
  """Encodes `batches` (from `split_batches`) with a bound model; returns host arrays.

  Args:
    features: which encoder outputs to keep (default: all of `model.feature_keys`).
    extras: 'recon_mse' (per-image mean squared error of G(E(x)) from z_mean against x as G
      sees it, in [-1, 1] pixel units) and/or 'reconstruction' (G(E(x)) itself: small splits
      only, it is kept in host memory).
  Returns:
    {feature: [N, ...], 'labels': [N]} (+ the extras), padding removed.
  """
  model.require_encoder(features_only=True)
  fn = _feature_fn(model, tuple(model.feature_keys if features is None else features),
                   tuple(sorted(extras)))
  parts = []
  for batch in batches:
    out = fn(model.variables, model.to_device(batch["image"]))
    out = {k: np.asarray(v.addressable_data(0)) for k, v in out.items()}
    out["labels"] = model.gather(batch["label"])
    mask = model.gather(batch["mask"])
    parts.append({k: v[mask] for k, v in out.items()})
  if not parts:
    raise UserError("the split is empty: pick another split")
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _feature_fn(model, features, extras):
  """The jitted per-batch function (compiled once per model, feature set and extras)."""
  def fn(variables, images):
    enc = model.apply_encoder(variables, images)
    out = {k: enc[k] for k in features}
    if extras:
      recon = model.apply_generator(variables, enc["z_mean"])
    if "recon_mse" in extras:
      target = model.d_view(images)
      out["recon_mse"] = ((recon - target) ** 2).reshape(recon.shape[0], -1).mean(axis=1)
    if "reconstruction" in extras:
      out["reconstruction"] = recon
    return out
  return model.cached_jit(("features", features, extras), fn)


class Data:
  """One dataset's splits for evaluation; keeps small splits' images in host memory between
  evaluations (`cache`) and per-run results that depend on the data alone (`memo`)."""

  def __init__(self, data_config, *, train_examples=None, test_examples=None, progress=False,
               cache=True):
    self.config, self.progress = data_config, progress
    self.limits = {"train": train_examples, "test": test_examples}
    info = input_pipeline.dataset_info(data_config)
    self.num_classes, self.counts = info.num_classes, info.num_examples
    self.labelled = self.num_classes is not None and self.num_classes > 1
    self.splits = {"train": data_config.train_split, "train_val": "train_val",
                   "test": data_config.eval_split}
    self._cache = {} if cache else None
    self.memo = {}

  def has(self, name) -> bool:
    return name != "train_val" or self.counts.get("train_val", 0) > 0

  def count(self, name) -> int:
    """Examples of split `name` that the evaluation uses."""
    count = self.counts.get(self.splits[name], 0)
    return count if self._limit(name) is None else min(count, self._limit(name))

  def _limit(self, name):
    return self.limits.get(name)

  def batches(self, model, name, whole=False):
    """The split's batches (`split_batches`), from the cache where it holds them; `whole`: all
    of the split, whatever `train_examples`/`test_examples` say (FID's reference statistics)."""
    if whole and self._limit(name) is not None:
      return split_batches(model, self.config, self.splits[name])
    if self._cache is not None:
      if name not in self._cache:
        size = self.count(name) * model.image_size ** 2 * model.image_channels * 4
        self._cache[name] = (list(split_batches(model, self.config, self.splits[name],
                                                limit=self._limit(name)))
                             if size <= CACHE_BYTES else None)
      if self._cache[name] is not None:
        return self._cache[name]
    return split_batches(model, self.config, self.splits[name], limit=self._limit(name))

  def features(self, model, name, extras=()) -> dict:
    batches = self.batches(model, name)
    if self.progress:
      batches = progress_bar(batches, math.ceil(self.count(name) / model.batch_size),
                             f"encoding {self.splits[name]}")
    return extract_features(model, batches, extras=extras)

  def images(self, model, name, *, as_generated=False, limit=None) -> dict:
    """Real images [N, S, S, C] of a split (its first `limit`) and their labels where it has
    them, at E's resolution or (`as_generated`) as G produces them (`model.d_view`)."""
    images, labels, n = [], [], 0
    for batch in self.batches(model, name):
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

  def pixels(self, model, name, *, as_generated=False) -> dict:
    """`images` of a labelled split, flattened: {'pixels': [N, D], 'labels': [N]}."""
    split = self.images(model, name, as_generated=as_generated)
    return {"pixels": split["images"].reshape(len(split["images"]), -1), "labels": split["labels"]}

  def with_encoder_standing_stats(self, model, num_batches):
    """`model` whose feature network (E; D for the "D features" baseline) normalises with the
    average batch moments of the first `num_batches` train batches, as the BiGAN code's "deploy"
    pass did before every evaluation, and the number of batches used. Only full batches count:
    the split's last, padded one never does."""
    full = min(int(num_batches), self.count("train") // model.batch_size)
    if full < 1 or not model.has_features:
      return model, 0
    images = (b["image"] for b in itertools.islice(self.batches(model, "train"), full))
    return model.with_encoder_standing_stats(images), full


class Context:
  """One evaluation of one bound model: the features every evaluator asked for, computed once.

  `features[split]` is {feature key: [N, D], 'labels': [N], extras...}; `probe_names` are the
  (result name, feature key) pairs the probes use (raw pixels replace both for `--raw_pixels`).
  """

  def __init__(self, model, data, features, probe_names):
    self.model, self.data, self.features, self.probe_names = model, data, features, probe_names
    self.shared = {}  # results several evaluators of this evaluation reuse (e.g. G's samples)


class Evaluator:
  """One metric family. Subclasses set `name`-independent behaviour:

  needs_encoder: runs only where the model has an encoder (or features, `needs_features`).
  needs_labels: runs only on a labelled dataset.
  `requires(model, data)`: {split: set of extras} the evaluator reads from `Context.features`.
  `run(ctx)`: its results as a flat dict.
  """
  needs_encoder = False
  needs_features = False
  needs_labels = False

  def __init__(self, **options):
    if options:
      raise UserError(f"{type(self).__name__} takes no options, got {sorted(options)}")

  def applies(self, model, data) -> bool:
    if self.needs_encoder and not model.has_encoder:
      return False
    if self.needs_features and not model.has_features:
      return False
    return data.labelled or not self.needs_labels

  def requires(self, model, data) -> dict:
    del model, data
    return {}

  def run(self, ctx) -> dict:
    raise NotImplementedError


def label_splits(data) -> dict:
  """{split: set()} of the splits a label-based metric trains and tests on."""
  return {name: set() for name in ("train", "train_val", "test") if data.has(name)}


class FeatureProbe(Evaluator):
  """An evaluator that fits on the train split's features and labels and reports on train_val
  and test (the linear probe, k-NN)."""
  needs_features = True
  needs_labels = True

  def requires(self, model, data):
    return label_splits(data)
