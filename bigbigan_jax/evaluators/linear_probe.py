"""Linear probes: softmax regression on frozen features (BigBiGAN §3.1; docs/design.md#evaluation).

Trains on the train split minus train_val, picks its L2 strength on train_val and reports top-1
on both: linear_probe_{avepool,bn_crelu}_{train_val,test} and the chosen linear_probe_*_l2.
"""

from bigbigan_jax import metrics as metrics_lib
from bigbigan_jax.evaluators import common


def probe_metrics(features, probe_names, num_classes) -> dict:
  """The probes on per-split features {'train'|'train_val'|'test': {key: [N, D], 'labels'}}."""
  tr, val, te = features["train"], features.get("train_val"), features["test"]
  out = {}
  for name, key in probe_names:
    probe = metrics_lib.linear_probe(
        tr[key], tr["labels"], None if val is None else val[key],
        None if val is None else val["labels"], te[key], te["labels"], num_classes=num_classes)
    out[f"linear_probe_{name}_test"] = probe["test"]
    if "val" in probe:
      out[f"linear_probe_{name}_train_val"] = probe["val"]
    out[f"linear_probe_{name}_l2"] = probe["l2"]
  return out


class LinearProbe(common.FeatureProbe):

  def run(self, ctx):
    return probe_metrics(ctx.features, ctx.probe_names, ctx.data.num_classes)
