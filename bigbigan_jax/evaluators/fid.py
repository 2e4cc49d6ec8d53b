"""FID and Inception Score of G's samples (docs/design.md#evaluation).

The FID Inception-v3 (inception.py) with pytorch-fid's weights file, never downloaded. Samples
come from the bound G (EMA weights) with standing BN statistics (`standing_stats`); generated and
real images are rounded to 8 bits (as saved images would be) before the Inception network; real
images are the evaluation split at G's resolution (E-resolution images average-pooled as D sees
them). FID compares the pool3 statistics; IS is the mean (is_std: the std) over 10 splits of the
softmax of the 1008 unbiased logits. The evaluation split's statistics are computed once and
cached in `reference_dir` as fid_reference_<dataset>_<split>_<resolution>.npz.
"""

import copy
import io
import json
import re

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from bigbigan_jax import inception as inception_lib
from bigbigan_jax import metrics as metrics_lib
from bigbigan_jax import paths
from bigbigan_jax.errors import UserError
from bigbigan_jax.evaluators import common

STANDING_STATS_BATCHES = 16  # batches of z for G's standing BN statistics
SEED = 0  # the generated samples' latents (fixed: checkpoints are compared on the same z)


def eight_bit(images):
  """[-1, 1] images rounded to the 256 levels of an 8-bit image (as if saved to PNG)."""
  return jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


class Moments:
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


def missing_weights_error(names) -> UserError:
  return UserError(f"--metrics={','.join(names)} needs --inception_weights=PATH: pytorch-fid's "
                   f"{inception_lib.WEIGHTS_FILE} or an .npz of it (nothing is downloaded)")


class _InceptionEvaluator(common.Evaluator):
  """What FID and IS share: G's samples through the Inception network, computed once per
  evaluation for both.

  Options: `inception` (an `inception.Inception`, or a weights path loaded on first use),
  `num_samples` generated images, `standing_stats` (recompute G's BN statistics first, see
  `inference.BigBiGAN.with_standing_stats`), `reference_dir` (where the real split's statistics
  are cached; None: in memory only).
  """
  metric = ""

  def __init__(self, inception=None, inception_weights=None, num_samples: int = 10_000,
               standing_stats: bool = True, reference_dir=None):
    super().__init__()
    inception = inception if inception is not None else inception_weights
    if inception is None:
      raise missing_weights_error([self.metric])
    self.inception = inception_lib.load(inception) if isinstance(inception, str) else inception
    self.num_samples, self.standing_stats = int(num_samples), bool(standing_stats)
    self.reference_dir = reference_dir
    if self.num_samples < 10:
      raise UserError(f"num_samples={self.num_samples}: FID/IS need at least 10 generated images")
    self._variables = None  # the Inception weights on the model's devices, placed once
    self._reference = None  # (key, mu, sigma) of the real split

  def _inception_variables(self, model):
    if self._variables is None:
      self._variables = jax.device_put(self.inception.variables, model.replicated)
    return self._variables

  def generated(self, ctx) -> dict:
    """{'pool', 'probs'} of `num_samples` images of the bound G, shared within an evaluation."""
    key = ("inception_outputs", self.inception.fingerprint, self.num_samples, self.standing_stats)
    if key in ctx.shared:
      return ctx.shared[key]
    model = ctx.model
    generator = (model.with_standing_stats(STANDING_STATS_BATCHES) if self.standing_stats
                 else model)
    features = self.inception.features

    def generated_fn(variables, z):
      return features(variables["inception"], eight_bit(model.apply_generator(variables, z)))

    # G and the Inception network in one jitted function: the images never leave the devices.
    runner = copy.copy(generator)
    runner.variables = {**generator.variables, "inception": self._inception_variables(model)}
    fn = model.cached_jit(("fid_generated", self.inception), generated_fn)
    ctx.shared[key] = runner.batched(fn, model.sample_z(self.num_samples, SEED))
    return ctx.shared[key]

  def real_statistics(self, model, data):
    """(mu, sigma) of the evaluation split's pool3 features: computed once, then cached."""
    split = data.splits["test"]
    resolution = model.generator_resolution
    key = json.dumps({"dataset": data.config.dataset, "split": split, "resolution": resolution,
                      "examples": data.counts.get(split), "channels": model.image_channels,
                      "inception": self.inception.fingerprint}, sort_keys=True)
    if self._reference is not None and self._reference[0] == key:
      return self._reference[1:]
    path = None
    # A file cache only for a process-local mesh: in a multi-host run every process must take
    # part in the same computations, and a file that only some hosts see would break that.
    if self.reference_dir and not model.multihost:
      name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{data.config.dataset}_{split}").strip("_")
      path = paths.path(self.reference_dir) / f"fid_reference_{name}_{resolution}.npz"
      if path.exists():
        with np.load(io.BytesIO(path.read_bytes())) as cached:
          if str(cached["key"]) == key:
            self._reference = (key, cached["mu"], cached["sigma"])
            return self._reference[1:]
        logging.warning("%s was computed with another dataset, image format or Inception "
                        "weights: recomputing it", path)
    features = self.inception.features

    def real_fn(inception_variables, images):
      return features(inception_variables, eight_bit(model.d_view(images)))["pool"]

    fn = model.cached_jit(("fid_real", self.inception), real_fn)
    batches = data.batches(model, "test", whole=True)
    if data.progress:
      total = -(-data.counts.get(split, 0) // model.batch_size)
      batches = common.progress_bar(batches, total, f"Inception features of {split}")
    moments = Moments()
    for batch in batches:
      pool = np.asarray(fn(self._inception_variables(model),
                           model.to_device(batch["image"])).addressable_data(0))
      moments.add(pool[model.gather(batch["mask"])])
    mu, sigma = moments.statistics()
    if path is not None and jax.process_index() == 0:
      buffer = io.BytesIO()
      np.savez(buffer, mu=mu, sigma=sigma, key=np.asarray(key), num_examples=moments.n)
      paths.write_bytes(path, buffer.getvalue())
    self._reference = (key, mu, sigma)
    return mu, sigma

  def run(self, ctx):
    return {"fid_samples": self.num_samples, "standing_stats": self.standing_stats}


class FID(_InceptionEvaluator):
  metric = "fid"

  def run(self, ctx):
    pool = self.generated(ctx)["pool"].astype(np.float64)
    mu, sigma = self.real_statistics(ctx.model, ctx.data)
    fid = metrics_lib.frechet_distance(pool.mean(axis=0), np.cov(pool, rowvar=False), mu, sigma)
    return {**super().run(ctx), "fid": fid}


class InceptionScore(_InceptionEvaluator):
  metric = "is"

  def run(self, ctx):
    mean, std = metrics_lib.inception_score(self.generated(ctx)["probs"], splits=10)
    return {**super().run(ctx), "is": mean, "is_std": std}
