"""k-nearest-neighbour classification on frozen features (docs/design.md#evaluation).

The train split (minus train_val) is the bank; knn{1,5}_{euclidean,cosine}_test on the first
probe feature (avepool_feat), nn1_test = knn1_euclidean_test, and nn1_train_val (the same 1-NN on
train_val, for model selection). Exact: the bank is sharded over the devices and the queries go
in chunks (`metrics.sharded_knn_accuracy`).
"""

from bigbigan_jax import feature_store
from bigbigan_jax import metrics as metrics_lib
from bigbigan_jax import sharding
from bigbigan_jax.evaluators import common

KS = (1, 5)


def nn1(features, key, query_split, num_classes, mesh=None, placed=None) -> float:
  """Euclidean 1-NN accuracy of split `query_split` against the train bank on feature `key`."""
  return metrics_lib.sharded_knn_accuracy(
      feature_store.Source.of(features["train"]), feature_store.Source.of(features[query_split]),
      key, ks=(1,), metric="euclidean", num_classes=num_classes, mesh=mesh, placed=placed)[1]


def knn_metrics(features, key, num_classes, mesh=None) -> dict:
  """The k-NN results on per-split features ({key: arrays} or `feature_store.Source`s)."""
  mesh = mesh or sharding.local_mesh()
  bank, test = feature_store.Source.of(features["train"]), feature_store.Source.of(features["test"])
  placed = metrics_lib.shard_bank(bank, key, mesh, min_rows_per_device=max(KS))  # read once
  out = {}
  for metric in ("euclidean", "cosine"):
    accuracy = metrics_lib.sharded_knn_accuracy(bank, test, key, ks=KS, metric=metric,
                                                num_classes=num_classes, mesh=mesh,
                                                placed=placed)
    for k, value in accuracy.items():
      out[f"knn{k}_{metric}_test"] = value
  out["nn1_test"] = out["knn1_euclidean_test"]
  if "train_val" in features:
    out["nn1_train_val"] = nn1(features, key, "train_val", num_classes, mesh, placed)
  return out


class KNN(common.FeatureProbe):

  def run(self, ctx):
    return knn_metrics(ctx.features, ctx.probe_names[0][1], ctx.data.num_classes)
