"""The accelerator check for benchmarks/RESULTS.md: about 10 minutes on one GPU, nothing downloaded.

Install first, where pip can reach its index (the check itself needs no network):

  pip install -e ".[demo]" "jax[cuda12]>=0.10.2,<0.11"

then, from the repository root:

  OUT=/tmp/gpu_check python benchmarks/gpu_check.py [--budget_s=570] [--only=revnet,base,demo]

It records, as JSON lines in $OUT/gpu_check.jsonl (echoed to stdout) and a table in
$OUT/gpu_check.md, in this order:

  revnet  the RevNet x4 encoder's forward + backward at batch 64, bf16 (configs/base.py:
          variant=revnet_x4): the device's peak memory with the reversible backward and with plain
          autodiff (`benchmark --component=encoder`);
  base    configs/base.py in bf16, without and then with remat (G, D and E): img/s and MFU at the
          largest batch that fits. A compile-only probe at batch 64 gives XLA's memory analysis
          for this device: the argument bytes (the state) are fixed and the temp bytes grow with
          the batch, which predicts the largest batch within 92% of the allocator's limit (a
          multiple of 32, at most the config's 2,048); that batch is measured, and lowered by a
          quarter after each out-of-memory failure. `mfu` counts recomputed FLOPs (remat's
          forward) as work; `mfu_model` of the remat row uses the FLOPs per image of the run
          without remat;
  demo    the README demo's wall time (configs/mnist.py, its whole schedule, a fresh workdir and a
          cold compilation cache), with the run's own steps/s and compile time from metrics.jsonl.

Every measurement runs in its own process under a deadline taken from the budget; what the budget
leaves out is recorded as skipped. `--smoke` runs the same commands on the tiny `runlocal` configs
(any machine, CPU included) to check them.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
PROBE_BATCH = 64
BATCH_MULTIPLE = 32
MEMORY_HEADROOM = 0.92  # of bytes_limit: the allocator's fragmentation, initialisation buffers
REMAT = ["--config.model.generator.remat=True", "--config.model.discriminator.remat=True",
         "--config.model.encoder.remat=True"]


class Check:
  """Runs the measurements against one deadline and records each one."""

  def __init__(self, out: pathlib.Path, budget_s: float, smoke: bool):
    self.out, self.smoke = out, smoke
    self.deadline = time.monotonic() + budget_s
    self.records = []
    self.env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.95",
                    JAX_COMPILATION_CACHE_DIR=str(out / "jax_cache"))

  def left(self) -> float:
    return self.deadline - time.monotonic()

  def record(self, entry: dict):
    self.records.append(entry)
    line = json.dumps(entry)
    print(line, flush=True)
    with open(self.out / "gpu_check.jsonl", "a") as f:
      f.write(line + "\n")

  def run(self, name: str, command: list, cap_s: float, env=None) -> dict:
    """Runs `command` for at most `cap_s` (and what the budget leaves); logs to $OUT/NAME.log."""
    limit = min(cap_s, self.left())
    if limit < 20:
      return {"name": name, "status": "skipped", "why": "budget spent"}
    start = time.monotonic()
    with open(self.out / f"{name}.log", "w") as log:
      try:
        proc = subprocess.run(command, cwd=REPO, env=env or self.env, stdout=subprocess.PIPE,
                              stderr=log, text=True, timeout=limit)
      except subprocess.TimeoutExpired:
        return {"name": name, "status": "timeout", "limit_s": round(limit),
                "wall_s": round(time.monotonic() - start, 1)}
    entry = {"name": name, "wall_s": round(time.monotonic() - start, 1), "rc": proc.returncode}
    log_text = (self.out / f"{name}.log").read_text()
    if proc.returncode:
      oom = "RESOURCE_EXHAUSTED" in log_text or "out of memory" in log_text.lower()
      return {**entry, "status": "oom" if oom else "failed", "log_tail": log_text[-400:]}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    return {**entry, "status": "ok", "result": json.loads(lines[-1]) if lines else None}

  def benchmark(self, name: str, config: str, *flags, cap_s: float) -> dict:
    return self.run(name, [sys.executable, "-m", "bigbigan_jax.benchmark", f"--config={config}",
                           *flags], cap_s)


def revnet(check: Check):
  config = "configs/base.py:variant=revnet_x4" + (",runlocal" if check.smoke else "")
  batch = 8 if check.smoke else PROBE_BATCH
  for reversible in (True, False):
    entry = check.benchmark(
        f"revnet_x4_reversible_{reversible}", config, "--component=encoder", "--steps=3",
        f"--config.batch_size={batch}", f"--config.model.encoder.reversible_backward={reversible}",
        cap_s=120)
    check.record({"check": "revnet", "reversible_backward": reversible, **entry})


def demo(check: Check):
  workdir, cache = check.out / "demo_run", check.out / "demo_compilation_cache"
  for stale in (workdir, cache):
    shutil.rmtree(stale, ignore_errors=True)
  config = "configs/mnist.py" + (":runlocal" if check.smoke else "")
  env = {k: v for k, v in check.env.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  entry = check.run("demo", [sys.executable, "-m", "bigbigan_jax.main", f"--config={config}",
                             f"--workdir={workdir}", f"--compilation_cache_dir={cache}"],
                    cap_s=240, env=env)
  metrics_path = workdir / "metrics.jsonl"
  if metrics_path.exists():
    lines = [json.loads(l) for l in metrics_path.read_text().splitlines() if l.strip()]
    if lines:
      entry["steps"] = lines[-1]["step"]
      entry["elapsed_s"] = lines[-1].get("elapsed_s")
      entry["compile_s"] = next((l["compile_s"] for l in lines if "compile_s" in l), None)
      entry["steps_per_s_last"] = lines[-1].get("steps_per_s")
  entry.pop("result", None)  # training prints progress lines, not one JSON object
  check.record({"check": "demo", **entry})


def largest_batch(probe: dict, cap: int):
  """The batch whose predicted peak fits MEMORY_HEADROOM of the limit (None without statistics)."""
  limit, temp = probe.get("bytes_limit"), probe.get("temp_bytes")
  if not limit or not temp:
    return None
  fixed = probe.get("argument_bytes") or 0
  per_image = temp / probe["batch_size"]
  batch = int((MEMORY_HEADROOM * limit - fixed) / per_image) // BATCH_MULTIPLE * BATCH_MULTIPLE
  return max(min(batch, cap), BATCH_MULTIPLE)


def _model_flops(entry: dict, remat: bool, flops_per_image: dict):
  """Notes the FLOPs per image of a run without remat; adds `mfu_model` to a run with it."""
  result = entry.get("result") or {}
  flops = max(result.get("flops_per_iter") or 0.0, result.get("dot_conv_flops_per_iter") or 0.0)
  if entry["status"] != "ok" or not flops:
    return
  if not remat:
    flops_per_image.setdefault(False, flops / result["batch_size"])
  elif False in flops_per_image and result.get("mfu"):
    result["mfu_model"] = result["mfu"] * flops_per_image[False] * result["batch_size"] / flops


def base(check: Check, remat: bool, flops_per_image: dict):
  config = "configs/base.py" + (":runlocal" if check.smoke else "")
  flags = ["--nohalves", *(REMAT if remat else [])]
  tag = f"base_remat_{remat}"
  probe_batch = 8 if check.smoke else PROBE_BATCH
  probe = check.benchmark(f"{tag}_batch{probe_batch}", config, *flags, "--compile_only",
                          f"--config.batch_size={probe_batch}", cap_s=150)
  _model_flops(probe, remat, flops_per_image)
  check.record({"check": "base", "remat": remat, "probe": True, **probe})
  batch = largest_batch(probe["result"], cap=2048) if probe["status"] == "ok" else None
  while batch and batch > probe_batch:
    entry = check.benchmark(f"{tag}_batch{batch}", config, *flags, "--steps=5",
                            f"--config.batch_size={batch}", cap_s=240)
    _model_flops(entry, remat, flops_per_image)
    check.record({"check": "base", "remat": remat, "probe": False, **entry})
    if entry["status"] != "oom":
      break
    batch = (batch * 3 // 4) // BATCH_MULTIPLE * BATCH_MULTIPLE


def summary(check: Check) -> str:
  rows = ["| check | setting | status | batch | img/s | MFU | peak GiB | XLA temp GiB | limit GiB "
          "| wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
  gib = lambda b: f"{b / 2**30:.2f}" if b else ""
  for r in check.records:
    result = r.get("result") or {}
    setting = {"revnet": f"reversible_backward={r.get('reversible_backward')}",
               "demo": f"{r.get('steps')} steps, elapsed_s {r.get('elapsed_s')}",
               "base": f"remat={r.get('remat')}" + (" (compile-only probe)" if r.get("probe")
                                                    else "")}[r["check"]]
    mfu = result.get("mfu_model", result.get("mfu"))
    rows.append(" | ".join([
        f"| {r['check']}", setting, r["status"], str(result.get("batch_size", "")),
        f"{result['img_per_s']:.1f}" if result.get("img_per_s") else "",
        f"{mfu:.3f}" if mfu else "", gib(result.get("peak_bytes")), gib(result.get("temp_bytes")),
        gib(result.get("bytes_limit")),
        f"{r.get('wall_s', '')} |"]))
  device = next((r["result"]["device"] for r in check.records if r.get("result")), "unknown")
  return f"Device: {device}\n\n" + "\n".join(rows) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--budget_s", type=float, default=570.0)
  parser.add_argument("--only", default="revnet,base,demo")
  parser.add_argument("--smoke", action="store_true", help="tiny runlocal configs (any machine)")
  args = parser.parse_args()
  if "OUT" not in os.environ:
    sys.exit("error: set OUT to the folder for the results")
  out = pathlib.Path(os.environ["OUT"]).resolve()
  out.mkdir(parents=True, exist_ok=True)
  check = Check(out, args.budget_s, args.smoke)
  only = args.only.split(",")
  if "revnet" in only:
    revnet(check)
  if "base" in only:
    flops_per_image = {}
    for remat in (False, True):
      base(check, remat, flops_per_image)
  if "demo" in only:
    demo(check)
  table = summary(check)
  (out / "gpu_check.md").write_text(table)
  print(table, flush=True)


if __name__ == "__main__":
  main()
