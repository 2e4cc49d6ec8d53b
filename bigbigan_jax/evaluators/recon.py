"""Reconstruction error: recon_mse_test, the mean (G(E(x)) - x)^2 in [-1, 1] pixel units, with
x as G sees it (average-pooled to G's resolution)."""

import numpy as np

from bigbigan_jax.evaluators import common


class Recon(common.Evaluator):
  needs_encoder = True

  def requires(self, model, data):
    return {"test": {"recon_mse"}}

  def run(self, ctx):
    return {"recon_mse_test": float(np.mean(ctx.features["test"]["recon_mse"]))}
