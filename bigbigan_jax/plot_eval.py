"""Plots a run's representation metrics against wall-clock training seconds, with the random-init
twin as horizontal lines.

  pip install -e ".[plot]"
  python -m bigbigan_jax.plot_eval --workdir=runs/mnist --out=docs/mnist_demo_learning.png
      [--baseline='{"nn1_test": 0.578, "linear_probe_avepool_test": 0.678}' | --baseline=FILE.jsonl]
      [--metrics=linear_probe_avepool_test,nn1_test]

Reads WORKDIR/eval.jsonl (one line per evaluation: in training every `eval_every` steps, and
each `python -m bigbigan_jax.evaluate` run) and WORKDIR/metrics.jsonl. The x axis is the
training's wall-clock seconds at each evaluated step (start-up and compilation included, the
time of in-training evaluations left out), from metrics.jsonl's `elapsed_s`; in logs that lack it,
the sum of steps/steps_per_s. Each weights label of eval.jsonl (`ema`,
`ema+encoder_standing_stats`, ...) is its own curve. The random twin is the newest eval.jsonl line
whose weights start with `random_init` (one with `+encoder_standing_stats` first: what
`evaluate --random_init --encoder_standing_stats` writes), or `--baseline`: a JSON object, or a
JSON-lines file read the same way.
"""

import io
import json

from absl import flags
import numpy as np

from bigbigan_jax import cli
from bigbigan_jax import paths
from bigbigan_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The training run (local or gs://) with eval.jsonl.")
flags.DEFINE_string("out", None, "Where to write the PNG (local or gs://).")
flags.DEFINE_string("baseline", None,
                    "The random twin's metrics: a JSON object, or a JSON-lines file (e.g. another "
                    "run's eval.jsonl); default: the random_init line of WORKDIR/eval.jsonl.")
DEFAULT_METRICS = ("linear_probe_avepool_test", "nn1_test")
flags.DEFINE_list("metrics", list(DEFAULT_METRICS),
                  "eval.jsonl fields to plot (fractions).")

BASELINE_PREFIXES = ("random_init", "raw_pixels")
LABELS = {"linear_probe_avepool_test": "linear probe (avepool)", "nn1_test": "1-NN",
          "recon_label_agreement_test": "G(E(x)) keeps x's digit"}


def random_twin(records: list) -> dict | None:
  """The newest `random_init` evaluation, preferring one with re-estimated BN statistics."""
  twins = [r for r in records if str(r.get("weights", "")).startswith("random_init")]
  standing = [r for r in twins if r["weights"].endswith("+encoder_standing_stats")]
  return (standing or twins or [None])[-1]


def read_baseline(spec: str) -> dict:
  """`--baseline`: a JSON object, or a JSON-lines file whose random twin (else last line) counts."""
  if spec.lstrip().startswith("{"):
    try:
      return json.loads(spec)
    except json.JSONDecodeError as e:
      raise UserError(f"--baseline is not a JSON object ({e})") from None
  if not paths.path(spec).exists():
    raise UserError(f"--baseline={spec}: no such file; pass a JSON object or a JSON-lines file")
  records = paths.read_jsonl(spec)
  if not records:
    raise UserError(f"--baseline={spec} holds no JSON lines")
  return random_twin(records) or records[-1]


def elapsed_at(metrics: list):
  """A function step -> wall-clock seconds of training at that step, from metrics.jsonl."""
  timed = sorted((r["step"], r["elapsed_s"]) for r in metrics if "elapsed_s" in r)
  if not timed:  # older logs: each line's steps_per_s covers the steps since the line before
    total, last, timed = 0.0, 0, [(0, 0.0)]
    for r in sorted((r for r in metrics if r.get("steps_per_s")), key=lambda r: r["step"]):
      total += (r["step"] - last) / r["steps_per_s"]
      last = r["step"]
      timed.append((last, total))
  steps, seconds = np.array(timed, np.float64).T
  return lambda step: float(np.interp(step, steps, seconds))


def curves(evals: list, metrics: list, names) -> dict:
  """{weights label: {metric: [(training seconds, value), ...]}} of the trained networks."""
  elapsed = elapsed_at(metrics) if metrics else None
  # In-training evaluations carry `elapsed_s`; their own time is not training time.
  in_training = sorted((r["step"], r.get("eval_seconds", 0.0)) for r in evals
                       if "elapsed_s" in r)
  out = {}
  for r in evals:
    weights = str(r.get("weights", "ema"))
    if weights.startswith(BASELINE_PREFIXES):
      continue
    if "elapsed_s" in r:
      seconds = r["elapsed_s"]
    elif elapsed is not None:
      seconds = elapsed(r["step"])
    else:
      raise UserError("metrics.jsonl is missing or has no timing fields: cannot place the "
                      "evaluations in wall-clock time")
    seconds -= sum(s for step, s in in_training if step < r["step"])
    for name in names:
      if isinstance(r.get(name), (int, float)):
        out.setdefault(weights, {}).setdefault(name, []).append((seconds, r[name]))
  return {w: {n: sorted(p) for n, p in c.items()} for w, c in out.items()}


def plot(workdir, out, baseline: dict | None = None, names=DEFAULT_METRICS) -> dict:
  """Writes the PNG to `out`; returns what it drew: {"curves": ..., "baseline": {metric: value}}."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top  (an optional dependency)
  except ImportError:
    raise UserError('plotting needs matplotlib: pip install -e ".[plot]"') from None
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  workdir = paths.path(workdir)
  evals = paths.read_jsonl(workdir / "eval.jsonl")
  if not evals:
    raise UserError(f"{workdir}/eval.jsonl has no evaluations: train with eval_every > 0 or run "
                    "python -m bigbigan_jax.evaluate first")
  drawn = curves(evals, paths.read_jsonl(workdir / "metrics.jsonl"), names)
  if not drawn:
    raise UserError(f"{workdir}/eval.jsonl has none of {', '.join(names)} for trained weights")
  twin = baseline if baseline is not None else random_twin(evals)
  twin_values = {n: twin[n] for n in names if isinstance((twin or {}).get(n), (int, float))}

  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
  colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  markers = iter("os^Dv<>")
  for weights, by_metric in drawn.items():
    marker = next(markers, "o")
    for name, points in by_metric.items():
      x, y = zip(*points)
      ax.plot(x, y, marker=marker, color=colors[name],
              label=f"{LABELS.get(name, name)} ({weights})")
  twin_label = (twin or {}).get("weights", "random init")
  for name, value in twin_values.items():
    ax.axhline(value, linestyle="--", color=colors[name], alpha=0.8,
               label=f"{LABELS.get(name, name)}, random twin ({twin_label}): {value:.3f}")
  ax.set_xlabel("training wall-clock seconds (compilation included, evaluations left out)")
  ax.set_ylabel("test accuracy")
  ax.set_title(f"Representation learning: {workdir.name}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  plt.close(fig)
  paths.write_bytes(out, buffer.getvalue())
  return {"curves": drawn, "baseline": twin_values}


def main(argv):
  del argv
  if not FLAGS.workdir or not FLAGS.out:
    raise UserError("--workdir and --out are required, e.g. --workdir=runs/mnist "
                    "--out=docs/mnist_demo_learning.png")
  baseline = read_baseline(FLAGS.baseline) if FLAGS.baseline else None
  drawn = plot(FLAGS.workdir, FLAGS.out, baseline, tuple(FLAGS.metrics))
  print(json.dumps({"out": str(paths.path(FLAGS.out)), **drawn}))


if __name__ == "__main__":
  cli.run(main)
