"""k-nearest-neighbour classification on frozen features (docs/design.md#evaluation).

The train split (minus train_val) is the bank; knn{1,5}_{euclidean,cosine}_test on the first
probe feature (avepool_feat), nn1_test = knn1_euclidean_test, and nn1_train_val (the same 1-NN on
train_val, for model selection).
"""

from bigbigan_jax import metrics as metrics_lib
from bigbigan_jax.evaluators import common

KS = (1, 5)


def nn1(features, key, query_split, num_classes) -> float:
  """Euclidean 1-NN accuracy of split `query_split` against the train bank on feature `key`."""
  tr, q = features["train"], features[query_split]
  return metrics_lib.knn_accuracy(tr[key], tr["labels"], q[key], q["labels"], ks=(1,),
                                  metric="euclidean", num_classes=num_classes)[1]


def knn_metrics(features, key, num_classes) -> dict:
  tr, te = features["train"], features["test"]
  out = {}
  for metric in ("euclidean", "cosine"):
    accuracy = metrics_lib.knn_accuracy(tr[key], tr["labels"], te[key], te["labels"], ks=KS,
                                        metric=metric, num_classes=num_classes)
    for k, value in accuracy.items():
      out[f"knn{k}_{metric}_test"] = value
  out["nn1_test"] = out["knn1_euclidean_test"]
  if "train_val" in features:
    out["nn1_train_val"] = nn1(features, key, "train_val", num_classes)
  return out


class KNN(common.FeatureProbe):

  def run(self, ctx):
    return knn_metrics(ctx.features, ctx.probe_names[0][1], ctx.data.num_classes)
