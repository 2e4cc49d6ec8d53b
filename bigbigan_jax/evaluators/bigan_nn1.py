"""BiGAN (2017)'s Table 1 numbers: 1-NN on E(x) next to 1-NN on raw pixels (BiGAN §4.2).

nn1_z_test: Euclidean 1-NN on E's linear output before the sigmoid (`z_logits`, where the BiGAN
code measured it: the squashed z saturates and crowds distances near +-1); nn1_pixels_test: the
same 1-NN on the raw pixels of the same split (computed once per run). Both against the train
split as the bank. The 1-NN on the penultimate layer is the `knn` evaluator's nn1_test.
"""

from bigbigan_jax.evaluators import common
from bigbigan_jax.evaluators import knn


class BiganNN1(common.Evaluator):
  needs_features = True
  needs_labels = True

  def requires(self, model, data):
    return {"train": set(), "test": set()}

  def run(self, ctx):
    out = {}
    if "z_logits" in ctx.model.feature_keys and "z_logits" in ctx.features["test"]:
      out["nn1_z_test"] = knn.nn1(ctx.features, "z_logits", "test", ctx.data.num_classes)
    if "pixel_nn1" not in ctx.data.memo:
      pixels = {name: ctx.data.pixels(ctx.model, name) for name in ("train", "test")}
      ctx.data.memo["pixel_nn1"] = knn.nn1(pixels, "pixels", "test", ctx.data.num_classes)
    out["nn1_pixels_test"] = ctx.data.memo["pixel_nn1"]
    return out
