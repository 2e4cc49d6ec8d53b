"""Do reconstructions keep their class? recon_label_agreement_test: the share of test images whose
G(E(x)) a softmax regression on real train pixels (as G produces them; L2 picked on train_val)
assigns to x's label; recon_classifier_test: that classifier's top-1 on the real test images.

Pixels are not standardised: that made the classifier fragile (on the digits, 5% salt noise took
its top-1 from 0.91 to 0.84 standardised, to 0.91 not). The classifier depends on the data alone,
so it is trained once per dataset (at the first evaluation of a run). A softmax regression on
pixels is cheap on digits, not on ImageNet: asked for by name.
"""

import numpy as np

from bigbigan_jax import metrics as metrics_lib
from bigbigan_jax.evaluators import common


def classifier(model, data):
  """(params, test top-1) of the pixel classifier, trained on the first call for `data`."""
  if "recon_classifier" not in data.memo:
    train_px = data.pixels(model, "train", as_generated=True)
    val_px = data.pixels(model, "train_val", as_generated=True) if data.has("train_val") else None
    test_px = data.pixels(model, "test", as_generated=True)
    probe = metrics_lib.linear_probe(
        train_px["pixels"], train_px["labels"],
        None if val_px is None else val_px["pixels"],
        None if val_px is None else val_px["labels"],
        test_px["pixels"], test_px["labels"], num_classes=data.num_classes,
        standardized=False, return_params=True)
    data.memo["recon_classifier"] = (probe["params"], probe["test"])
  return data.memo["recon_classifier"]


def label_agreement(model, data, reconstructions, labels) -> dict:
  """The classifier's labels of `reconstructions` [N, ...] against `labels`."""
  params, classifier_test = classifier(model, data)
  agreement = metrics_lib.accuracy(
      params, np.asarray(reconstructions, np.float32).reshape(len(reconstructions), -1), labels)
  return {"recon_label_agreement_test": agreement, "recon_classifier_test": classifier_test}


class ReconLabels(common.Evaluator):
  needs_encoder = True
  needs_labels = True

  def requires(self, model, data):
    return {"test": {"reconstruction"}}

  def run(self, ctx):
    test = ctx.features["test"]
    return label_agreement(ctx.model, ctx.data, test["reconstruction"], test["labels"])
