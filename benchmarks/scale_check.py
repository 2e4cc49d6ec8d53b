"""Evaluation at scale on one machine: peak memory and throughput for benchmarks/RESULTS.md.

  python benchmarks/scale_check.py probe --root=/tmp/scale [--rows=300000 --dim=4096]
  python benchmarks/scale_check.py extract --root=/tmp/scale --workdir=RUN [--times=20]

probe    writes a synthetic feature set of ROWS x DIM float32 as shards (generated on the fly, a
         linear teacher's labels over 100 classes, plus 10,000-row train_val and test sets), then
         runs `python -m bigbigan_jax.probe --method=minibatch` on it in a child process and
         reports the child's peak RSS, the probe's time and its accuracy.
extract  runs `python -m bigbigan_jax.extract` on the run's own (small) test split, then on an
         image folder TIMES larger made of copies of that split's digits, and reports both
         children's peak RSS, time and throughput (--shard_examples: smaller shards than the
         default ~128 MiB, so that the small model's features span several).

Each result is one JSON line on stdout. Peak RSS is the child's ru_maxrss (os.wait4).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bigbigan_jax import feature_store  # pylint: disable=wrong-import-position


def measure(command, env=None) -> dict:
  """Runs `command`; returns its wall time, peak RSS and the last line of its stdout."""
  start = time.perf_counter()
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    out.seek(0), err.seek(0)  # pylint: disable=expression-not-assigned
    out, err = out.read(), err.read()
  if os.waitstatus_to_exitcode(status):
    raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
  return {"seconds": round(time.perf_counter() - start, 1),
          "peak_rss_mib": round(usage.ru_maxrss / 1024),
          "last_line": (out.strip().splitlines() or [""])[-1]}


def write_synthetic(out, rows, dim, classes, seed, shard_examples):
  """Shards of rows x dim features whose labels a linear teacher gives (plus noise)."""
  teacher = np.random.default_rng(0).normal(size=(dim, classes)).astype(np.float32)
  shards = feature_store.plan_shards(rows, shard_examples)
  rng = np.random.default_rng(seed)
  for i, (start, stop) in enumerate(shards):
    x = rng.normal(size=(stop - start, dim)).astype(np.float32)
    logits = x @ teacher / np.sqrt(dim) * 3 + rng.gumbel(size=(stop - start, classes))
    feature_store.write_shard(out, i, {"avepool_feat": x,
                                       "labels": logits.argmax(1).astype(np.int32)})
  plan = {"step": 0, "weights": "synthetic", "dataset": "synthetic", "split": os.path.basename(out),
          "count": rows, "num_classes": classes, "shard_examples": shard_examples,
          "shapes": {"avepool_feat": [dim], "labels": []}}
  feature_store.write_index(out, plan, shards)


def probe(args):
  shard_examples = feature_store.shard_examples_for(4 * args.dim, 1024)
  start = time.perf_counter()
  for split, rows, seed in (("train", args.rows, 1), ("train_val", 10_000, 2),
                            ("test", 10_000, 3)):
    path = os.path.join(args.root, "features", split)
    if not os.path.exists(os.path.join(path, feature_store.INDEX)):
      write_synthetic(path, rows, args.dim, 100, seed, shard_examples)
  written = time.perf_counter() - start
  result = measure([sys.executable, "-m", "bigbigan_jax.probe",
                    f"--features={os.path.join(args.root, 'features')}", "--method=minibatch",
                    "--metrics=linear_probe", f"--epochs={args.epochs}", "--min_steps=0",
                    "--batch_size=1024"],
                   env={"JAX_PLATFORMS": "cpu"})
  record = json.loads(result.pop("last_line"))
  gb = args.rows * args.dim * 4 / 1e9
  print(json.dumps({"check": "probe", "rows": args.rows, "dim": args.dim, "features_gb": gb,
                    "write_seconds": round(written, 1), "epochs": args.epochs, **result,
                    "rows_per_s": round(args.rows * args.epochs / result["seconds"]),
                    "linear_probe_test": record.get("linear_probe_avepool_test")}), flush=True)


def extract(args):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  features = os.path.join(args.root, "extract")
  shards = [f"--shard_examples={args.shard_examples}"] if args.shard_examples else []
  shutil.rmtree(features, ignore_errors=True)
  small = measure([sys.executable, "-m", "bigbigan_jax.extract", f"--workdir={args.workdir}",
                   "--split=test", f"--out={features}/small", *shards],
                  env={"JAX_PLATFORMS": "cpu"})
  digits = feature_store.load(f"{features}/small/test", keys=["labels"])["labels"]
  # The run's test digits again, `times` times over, as an image folder (one folder per class).
  from bigbigan_jax import inference  # pylint: disable=g-import-not-at-top
  from bigbigan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = inference.load_config(args.workdir)
  batches = input_pipeline.eval_batches(config.data, config.data.eval_split, image_size=28,
                                        batch_size=len(digits), channels=1)
  images = next(batches)["image"]
  folder = os.path.join(args.root, f"digits_folder_x{args.times}")
  if not os.path.exists(os.path.join(folder, "done")):
    shutil.rmtree(folder, ignore_errors=True)
    for copy in range(args.times):
      for i, (image, label) in enumerate(zip(images, digits)):
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
        pixels = np.round((image[..., 0] + 1) * 127.5).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, str(label), f"{copy:03d}_{i:05d}.png"))
    open(os.path.join(folder, "done"), "w").close()
  large = measure([sys.executable, "-m", "bigbigan_jax.extract", f"--workdir={args.workdir}",
                   "--split=train", f"--dataset=folder:{folder}", f"--out={features}/large",
                   *shards],
                  env={"JAX_PLATFORMS": "cpu"})
  for name, result, n in (("digits", small, len(digits)),
                          ("folder", large, len(digits) * args.times)):
    result.pop("last_line")
    print(json.dumps({"check": "extract", "split": name, "examples": n,
                      "shard_examples": args.shard_examples or "default", **result,
                      "examples_per_s": round(n / result["seconds"])}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("check", choices=("probe", "extract"))
  parser.add_argument("--root", required=True, help="A scratch directory.")
  parser.add_argument("--rows", type=int, default=300_000)
  parser.add_argument("--dim", type=int, default=4096)
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--workdir", help="extract: a training run (e.g. the README demo's).")
  parser.add_argument("--times", type=int, default=20)
  parser.add_argument("--shard_examples", type=int, help="extract: examples per shard.")
  args = parser.parse_args()
  os.makedirs(args.root, exist_ok=True)
  probe(args) if args.check == "probe" else extract(args)  # pylint: disable=expression-not-assigned


if __name__ == "__main__":
  main()
