"""Prints a sweep's results in the layout of BigBiGAN's Table 1 (markdown, or CSV with --csv).

  python launch/summarize.py --sweep_dir=runs/table1 [--paper] [--pick=best] [--csv]

A sweep directory holds one run directory per (variant, seed), named `<variant>-seed<k>`, each with
`metrics.jsonl` (training), `eval.jsonl` (evaluations) and `DONE` once it reached total_steps. The
rows follow the sweep's order (`sweep.json`, written by launch/sweep.py, or --sweep=FILE) and every
cell is `mean ± std` over the seeds that have the value (std over seeds, ddof=0; one seed: its
value; none: `-`). Accuracies are shown in percent, like the paper. gs:// directories work too.
"""

import csv
import importlib.util
import io
import json
import os
import pathlib
import re
import statistics
import sys

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_DIR = re.compile(r"^(?P<variant>.+)-seed(?P<seed>\d+)$")

# (column title, eval.jsonl key, scale, lower is better). A sweep file may give its own as
# `columns` (and `paper_columns`: (title, key of its `paper` entries)), e.g. the BiGAN table's 1-NN.
METRICS = (
    ("IS", "is", 1.0, False),
    ("FID", "fid", 1.0, True),
    ("Cls train_val (%)", "linear_probe_avepool_train_val", 100.0, False),
    ("Cls test (%)", "linear_probe_avepool_test", 100.0, False),
)
PAPER_COLUMNS = (("paper IS", "IS"), ("paper FID", "FID"), ("paper Cls (%)", "cls"))


def as_path(path):
  """A pathlib.Path, or an etils.epath.Path for URLs such as gs://bucket/dir."""
  if "://" in str(path):
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(path)
  return pathlib.Path(path)


def read_jsonl(path):
  """The JSON objects of a JSON-lines file; [] if it is missing. Skips a torn last line."""
  path = as_path(path)
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def load_sweep_file(path):
  """Imports a sweep file and returns its `get_sweep()` dict."""
  spec = importlib.util.spec_from_file_location("bigbigan_sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_sweep()


def pick_eval(records, pick="last", best=None):
  """One eval.jsonl record of a run: the newest ('last'), or ('best') the one of the step that
  the run's `best/best.json` names (`best`: that record; the training loop keeps the checkpoint
  that scored best on the config's eval.best_metric, the paper's early stopping). A run without
  a best record gives its newest."""
  if not records:
    return {}
  if pick == "best" and best:
    at_best = [r for r in records if r.get("step") == best.get("step")]
    if at_best:
      return at_best[-1]
  return max(records, key=lambda r: r.get("step", 0))


def read_run(run_dir, pick="last"):
  """{finished, step, eval} of one run directory."""
  run_dir = as_path(run_dir)
  done = run_dir / "DONE"
  finished = done.exists()
  steps = [r.get("step", 0) for r in read_jsonl(run_dir / "metrics.jsonl")]
  if finished:
    try:
      steps.append(json.loads(done.read_text())["step"])
    except (ValueError, KeyError, TypeError):
      pass
  best = None
  if pick == "best" and (run_dir / "best" / "best.json").exists():
    try:
      best = json.loads((run_dir / "best" / "best.json").read_text())
    except ValueError:
      pass
  return dict(finished=finished, step=max(steps, default=0),
              eval=pick_eval(read_jsonl(run_dir / "eval.jsonl"), pick, best))


def find_runs(sweep_dir):
  """{(variant, seed): run directory} for every `<variant>-seed<k>` directory in `sweep_dir`."""
  sweep_dir = as_path(sweep_dir)
  runs = {}
  if sweep_dir.exists():
    for child in sweep_dir.iterdir():
      match = RUN_DIR.match(child.name)
      if match and child.is_dir():
        runs[(match["variant"], int(match["seed"]))] = child
  return runs


def sweep_info(sweep_dir, sweep_file=None):
  """The sweep dict: from --sweep=FILE, else the sweep.json that launch/sweep.py left, else None."""
  if sweep_file:
    return load_sweep_file(sweep_file)
  path = as_path(sweep_dir) / "sweep.json"
  return json.loads(path.read_text()) if path.exists() else None


def mean_std(values):
  """(mean, std, n) of the non-missing values; (None, None, 0) if there are none."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None, 0
  return statistics.fmean(values), statistics.pstdev(values), len(values)


def columns_of(sweep):
  """(metric columns, paper columns) of a sweep: its own, else Table 1 of BigBiGAN's."""
  sweep = sweep or {}
  return (tuple(tuple(c) for c in sweep.get("columns") or METRICS),
          tuple(tuple(c) for c in sweep.get("paper_columns") or PAPER_COLUMNS))


def summarize(sweep_dir, sweep=None, pick="last"):
  """One dict per variant: variant, finished, total, steps, unfinished, and per metric (mean, std, n)."""
  metrics = columns_of(sweep)[0]
  found = find_runs(sweep_dir)
  if sweep:
    order = list(sweep["variants"])
    expected = {v: [(v, s) for s in sweep["seeds"]] for v in order}
  else:
    order = []
    expected = {}
  for variant, seed in sorted(found):
    if variant not in expected:
      order.append(variant)
      expected[variant] = []
    if (variant, seed) not in expected[variant]:
      expected[variant].append((variant, seed))
  rows = []
  for variant in order:
    results, unfinished = [], []
    for key in expected[variant]:
      result = read_run(found[key], pick) if key in found else None
      if result is None or not result["finished"]:
        unfinished.append((key[1], result["step"] if result else None))
      if result is not None:
        results.append(result)
    row = dict(variant=variant, total=len(expected[variant]), unfinished=unfinished,
               finished=len(expected[variant]) - len(unfinished),
               steps=sorted({r["step"] for r in results}))
    for title, key, scale, _ in metrics:
      values = [r["eval"].get(key) for r in results]
      row[title] = mean_std([None if v is None else scale * v for v in values])
    rows.append(row)
  return rows


def _fmt(mean, std, n):
  if n == 0 or mean is None:
    return "-"
  return f"{mean:.2f}" if n == 1 or std is None else f"{mean:.2f} ± {std:.2f}"


def _steps(steps):
  if not steps:
    return "-"
  return str(steps[0]) if len(steps) == 1 else f"{steps[0]}..{steps[-1]}"


def _paper_cell(paper, variant, key):
  entry = (paper or {}).get(variant) or {}
  value = entry.get(key)
  if value is None:
    return "-"
  mean, std = value
  return _fmt(mean, std, 1 if std is None else 2)


def markdown(rows, paper=None, sweep=None):
  """Table 1's layout as a markdown table; `*` marks variants with unfinished runs."""
  metrics, paper_columns = columns_of(sweep)
  header = ["variant", "runs", "steps"] + [m[0] for m in metrics]
  if paper is not None:
    header += [title for title, _ in paper_columns]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  notes = []
  for row in rows:
    mark = "*" if row["unfinished"] else ""
    cells = [row["variant"], f"{row['finished']}/{row['total']}{mark}", _steps(row["steps"])]
    cells += [_fmt(*row[m[0]]) for m in metrics]
    if paper is not None:
      cells += [_paper_cell(paper, row["variant"], key) for _, key in paper_columns]
    lines.append("| " + " | ".join(cells) + " |")
    notes += [f"{row['variant']}-seed{seed} ({'not started' if step is None else f'step {step}'})"
              for seed, step in row["unfinished"]]
  if notes:
    lines.append("")
    lines.append("\\* not finished (no DONE): " + ", ".join(notes))
  return "\n".join(lines)


def to_csv(rows, paper=None, sweep=None):
  """The same table as CSV, one number per cell (mean and std in separate columns)."""
  metrics, paper_columns = columns_of(sweep)
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  header = ["variant", "finished", "total", "min_step", "max_step"]
  for _, key, _, _ in metrics:
    header += [f"{key}_mean", f"{key}_std", f"{key}_n"]
  if paper is not None:
    for _, key in paper_columns:
      header += [f"paper_{key}_mean", f"paper_{key}_std"]
  writer.writerow(header)
  blank = lambda v: "" if v is None else v  # pylint: disable=unnecessary-lambda-assignment
  for row in rows:
    cells = [row["variant"], row["finished"], row["total"],
             row["steps"][0] if row["steps"] else "", row["steps"][-1] if row["steps"] else ""]
    for title, _, _, _ in metrics:
      mean, std, n = row[title]
      cells += [blank(mean), blank(std), n]
    if paper is not None:
      for _, key in paper_columns:
        value = ((paper.get(row["variant"]) or {}).get(key)) or (None, None)
        cells += [blank(value[0]), blank(value[1])]
    writer.writerow(cells)
  return out.getvalue().rstrip("\n")


def paper_numbers(sweep):
  """The published Table 1 numbers: the sweep's `paper` entry, else configs/sweeps/table1.py's."""
  if sweep and sweep.get("paper"):
    return sweep["paper"]
  return load_sweep_file(os.path.join(REPO, "configs", "sweeps", "table1.py"))["paper"]


def render(sweep_dir, sweep=None, pick="last", as_csv=False, paper=False):
  """The whole output of this tool, as a string."""
  rows = summarize(sweep_dir, sweep, pick)
  reference = paper_numbers(sweep) if paper else None
  return to_csv(rows, reference, sweep) if as_csv else markdown(rows, reference, sweep)


if __name__ == "__main__":
  flags.DEFINE_string("sweep_dir", None, "WORKROOT/<sweep name>: holds the <variant>-seed<k> runs.")
  flags.DEFINE_string("sweep", None, "Sweep file for the row order (default: SWEEP_DIR/sweep.json).")
  flags.DEFINE_enum("pick", "last", ["last", "best"],
                    "Which eval of a run: the newest, or the paper's early stopping (the step "
                    "of the run's best/best.json, chosen in training by eval.best_metric).")
  flags.DEFINE_bool("csv", False, "Print CSV instead of markdown.")
  flags.DEFINE_bool("paper", False, "Add the published Table 1 numbers as reference columns.")
  flags.mark_flag_as_required("sweep_dir")

  def main(argv):
    del argv
    f = flags.FLAGS
    if not as_path(f.sweep_dir).exists():
      print(f"error: no such sweep directory: {f.sweep_dir}", file=sys.stderr)
      sys.exit(2)
    print(render(f.sweep_dir, sweep_info(f.sweep_dir, f.sweep), f.pick, f.csv, f.paper))

  app.run(main)
