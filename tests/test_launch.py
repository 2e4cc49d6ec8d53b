"""Sweeps and their summary: Table 1's dry runs, a real local sweep, the Table 1 layout.

  - table1 dry runs (tpu_vm, slurm) give the 19 x 3 commands, each run its own workdir, and
    create nothing;
  - a local sweep of three tiny variants trains them, a rerun skips them, a failing run is
    reported without stopping the sweep;
  - summarize computes mean ± std over seeds, marks unfinished runs and missing values.
"""

import csv
import io
import itertools
import json
import os
import re
import subprocess
import sys

import pytest

from cli_helpers import env_for
from launch import summarize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(REPO, "launch", "sweep.py")
SUMMARIZE = os.path.join(REPO, "launch", "summarize.py")
TABLE1 = os.path.join(REPO, "configs", "sweeps", "table1.py")
SMOKE = os.path.join(REPO, "configs", "sweeps", "smoke.py")


def _env():
  return env_for(1)


def _tool(script, *args, timeout=120):
  return subprocess.run([sys.executable, script, *args], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _table1_runs():
  table1 = summarize.load_sweep_file(TABLE1)
  return table1, set(itertools.product(table1["variants"], table1["seeds"]))


# ---------------------------------------------------------------------------------------------
# Table 1 as a sweep.
# ---------------------------------------------------------------------------------------------
def test_table1_sweep_has_every_row_of_base_py_and_its_paper_numbers():
  from bigbigan_jax import config_lib  # pylint: disable=g-import-not-at-top
  base = config_lib.load_sibling_config(TABLE1.replace("sweeps/table1.py", "base.py"), "base")
  table1, runs = _table1_runs()
  assert table1["variants"] == list(base.VARIANTS)
  assert len(runs) == 19 * 3
  assert set(table1["paper"]) == set(base.VARIANTS)
  assert table1["paper"]["base"] == dict(IS=(22.66, 0.18), FID=(31.19, 0.37), cls=(48.10, 0.13))
  assert table1["paper"]["no_e_gan"]["cls"] is None
  assert table1["paper"]["revnet_x4_up_e_lr"]["cls"] == (60.15, None)


def _check_run_lines(lines, workroot):
  """Each line trains one (variant, seed) of Table 1 in its own workdir, with --distributed."""
  _, expected = _table1_runs()
  assert len(lines) == 57
  seen, workdirs = set(), set()
  for line in lines:
    config = re.search(r"--config=configs/base\.py:variant=(\w+),seed=(\d+) ", line)
    workdir = re.search(r"--workdir=(\S+) ", line).group(1)
    variant, seed = config.group(1), int(config.group(2))
    assert workdir == f"{workroot}/table1/{variant}-seed{seed}"
    assert "--config.total_steps=500000" in line and "--distributed" in line
    seen.add((variant, seed))
    workdirs.add(workdir)
  assert seen == expected and len(workdirs) == 57


def test_table1_tpu_vm_dry_run(tmp_path):
  workroot = "gs://bucket/bigbigan"
  result = _tool(SWEEP, f"--sweep={TABLE1}", "--executor=tpu_vm", f"--workroot={workroot}",
                 "--tpu_name=pod", "--zone=us-central2-b", "--project=proj", "--dry_run")
  assert result.returncode == 0, result.stderr
  lines = [l for l in result.stdout.splitlines() if not l.startswith("#")]
  assert all(l.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b "
                          "--project=proj --worker=all ") for l in lines)
  _check_run_lines(lines, workroot)


def test_table1_slurm_dry_run_prints_scripts_and_creates_nothing(tmp_path):
  workroot = str(tmp_path / "root")
  result = _tool(SWEEP, f"--sweep={TABLE1}", "--executor=slurm", f"--workroot={workroot}",
                 "--slurm_nodes=2", "--slurm_gpus_per_node=4", "--slurm_partition=gpu",
                 "--slurm_setup=source ~/venv/bin/activate", "--dry_run", "--print_scripts")
  assert result.returncode == 0, result.stderr
  assert not os.path.exists(workroot)
  lines = [l for l in result.stdout.splitlines() if l.startswith("sbatch ")]
  assert all(f"{workroot}/table1/slurm/" in l and "# srun " in l for l in lines)
  _check_run_lines(lines, workroot)
  scripts = result.stdout.split("\n# ---- ")[1:]
  assert len(scripts) == 57
  script = next(s for s in scripts if s.startswith(f"{workroot}/table1/slurm/revnet-seed2.sbatch"))
  for expected in ("#SBATCH --job-name=table1-revnet-seed2", "#SBATCH --nodes=2",
                   "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                   "#SBATCH --partition=gpu", "source ~/venv/bin/activate",
                   "srun --kill-on-bad-exit=1 --ntasks-per-node=4 python -m bigbigan_jax.main "
                   "--config=configs/base.py:variant=revnet,seed=2 "
                   f"--workdir={workroot}/table1/revnet-seed2 --config.total_steps=500000 "
                   "--distributed"):
    assert expected in script
  assert "{{" not in script


def test_local_dry_run_creates_nothing(tmp_path):
  workroot = str(tmp_path / "root")
  result = _tool(SWEEP, f"--sweep={SMOKE}", "--executor=local", f"--workroot={workroot}",
                 "--dry_run")
  assert result.returncode == 0, result.stderr
  lines = [l for l in result.stdout.splitlines() if not l.startswith("#")]
  assert len(lines) == 3 and "variant=no_e_gan,seed=0,runlocal" in lines[2]
  assert not os.path.exists(workroot)


def test_tpu_vm_shell_script_parses_and_dry_runs():
  script = os.path.join(REPO, "launch", "tpu_vm.sh")
  assert subprocess.run(["bash", "-n", script]).returncode == 0
  result = subprocess.run(["bash", script, "--dry_run", "--name=pod", "--zone=z", "run",
                           "--config=configs/base.py:variant=revnet", "--workdir=gs://b/r"],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert "tpu-vm ssh pod --zone=z --worker=all" in result.stdout
  assert "bigbigan_jax.main" in result.stdout and "--distributed" in result.stdout


# ---------------------------------------------------------------------------------------------
# A real local sweep.
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_smoke_sweep_runs_skips_and_summarizes(tmp_path, mnist_data_dir):
  workroot = str(tmp_path)
  args = [f"--sweep={SMOKE}", "--executor=local", f"--workroot={workroot}",
          f"--extra_flags=--config.data.data_dir={mnist_data_dir}"]
  first = _tool(SWEEP, *args, timeout=900)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  names = ["base-seed0", "deterministic_e-seed0", "no_e_gan-seed0"]
  for name in names:
    with open(os.path.join(workroot, "smoke", name, "DONE")) as f:
      assert json.load(f) == {"step": 1}
    assert re.search(rf"finished\s+{name}", first.stdout)

  again = _tool(SWEEP, *args)
  assert again.returncode == 0, again.stderr
  assert again.stdout.count("skipped") == 3 and "0 to run" in again.stdout

  table = _tool(SUMMARIZE, f"--sweep_dir={workroot}/smoke")
  assert table.returncode == 0, table.stderr
  rows = [l for l in table.stdout.splitlines() if l.startswith("| ") and "variant" not in l]
  assert [r.split(" | ")[0] for r in rows] == ["| " + n.split("-seed")[0] for n in names]
  assert all(r.split(" | ")[1:3] == ["1/1", "1"] for r in rows)


def test_local_sweep_reports_failures_and_goes_on(tmp_path):
  sweep_file = tmp_path / "bad.py"
  sweep_file.write_text(
      "def get_sweep():\n"
      "  return dict(name='bad', config='configs/mnist.py', variants=['nope', 'nada'], "
      "seeds=[0], args='runlocal')\n")
  result = _tool(SWEEP, f"--sweep={sweep_file}", "--executor=local", f"--workroot={tmp_path}",
                 "--parallel=2")
  assert result.returncode == 1
  assert re.search(r"failed\s+nope-seed0: exit 2", result.stdout)
  assert re.search(r"failed\s+nada-seed0: exit 2", result.stdout)
  assert "unknown variant 'nope'" in result.stdout
  assert "2 run(s) failed" in result.stderr


# ---------------------------------------------------------------------------------------------
# summarize on synthetic runs.
# ---------------------------------------------------------------------------------------------
def _fake_run(root, name, steps, evals=(), done=True, best_step=None):
  run = root / name
  run.mkdir(parents=True)
  if best_step is not None:  # what the training loop writes with its best checkpoint
    (run / "best").mkdir()
    (run / "best" / "best.json").write_text(json.dumps(
        {"step": best_step, "metric": "linear_probe_avepool_train_val", "value": 0.0}))
  (run / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": s, "d_loss": 1.0}) + "\n" for s in steps))
  (run / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
  if done:
    (run / "DONE").write_text(json.dumps({"step": steps[-1]}))


@pytest.fixture
def fake_sweep(tmp_path):
  """base: two finished seeds (one without FID); revnet: one seed finished, one stopped early
  without evals; small_g_32: no eval file content at all."""
  ev = lambda step, **kw: dict(step=step, **kw)  # pylint: disable=unnecessary-lambda-assignment
  _fake_run(tmp_path, "base-seed0", [10, 20], [
      ev(10, **{"is": 5.0, "fid": 90.0, "linear_probe_avepool_train_val": 0.70}),
      ev(20, **{"is": 20.0, "fid": 30.0, "linear_probe_avepool_train_val": 0.50,
                "linear_probe_avepool_test": 0.40})], best_step=10)
  _fake_run(tmp_path, "base-seed1", [10, 20], [
      ev(20, **{"is": 22.0, "linear_probe_avepool_train_val": 0.60,
                "linear_probe_avepool_test": 0.50})], best_step=20)
  _fake_run(tmp_path, "revnet-seed0", [20], [ev(20, **{"is": 10.0})])
  _fake_run(tmp_path, "revnet-seed1", [5], done=False)
  _fake_run(tmp_path, "small_g_32-seed0", [20])
  return tmp_path


def _rows(text):
  rows = [l.strip("| ").split(" | ") for l in text.splitlines() if l.startswith("| ")]
  return {r[0]: r for r in rows[1:]}, rows[0]


def test_summarize_mean_std_missing_and_unfinished(fake_sweep):
  rows, header = _rows(summarize.render(str(fake_sweep)))
  assert header == ["variant", "runs", "steps", "IS", "FID", "Cls train_val (%)", "Cls test (%)"]
  assert list(rows) == ["base", "revnet", "small_g_32"]  # no sweep.json: sorted
  assert rows["base"] == ["base", "2/2", "20", "21.00 ± 1.00", "30.00", "55.00 ± 5.00",
                          "45.00 ± 5.00"]
  assert rows["revnet"] == ["revnet", "1/2*", "5..20", "10.00", "-", "-", "-"]
  assert rows["small_g_32"] == ["small_g_32", "1/1", "20", "-", "-", "-", "-"]
  assert "revnet-seed1 (step 5)" in summarize.render(str(fake_sweep))


def test_summarize_sweep_order_paper_best_and_csv(fake_sweep):
  sweep = dict(name="t", variants=["small_g_32", "revnet", "base"], seeds=[0, 1])
  (fake_sweep / "sweep.json").write_text(json.dumps(sweep))
  result = _tool(SUMMARIZE, f"--sweep_dir={fake_sweep}", "--paper", "--pick=best")
  assert result.returncode == 0, result.stderr
  rows, header = _rows(result.stdout)
  assert list(rows) == ["small_g_32", "revnet", "base"]
  assert header[-3:] == ["paper IS", "paper FID", "paper Cls (%)"]
  assert rows["small_g_32"][1] == "1/2*" and "small_g_32-seed1 (not started)" in result.stdout
  # best/best.json: base-seed0's step-10 eval (train_val 0.70), base-seed1's only one (0.60)
  assert rows["base"][3:7] == ["13.50 ± 8.50", "90.00", "65.00 ± 5.00", "50.00"]
  assert rows["base"][7:] == ["22.66 ± 0.18", "31.19 ± 0.37", "48.10 ± 0.13"]
  assert rows["revnet"][7:] == ["23.33 ± 0.09", "27.78 ± 0.06", "49.42 ± 0.18"]

  result = _tool(SUMMARIZE, f"--sweep_dir={fake_sweep}", "--csv")
  table = list(csv.DictReader(io.StringIO(result.stdout)))
  assert [r["variant"] for r in table] == ["small_g_32", "revnet", "base"]
  base = table[2]
  assert (base["finished"], base["total"], base["is_mean"], base["is_std"]) == ("2", "2", "21.0",
                                                                                 "1.0")
  assert base["fid_n"] == "1" and table[0]["fid_mean"] == ""


def test_pick_best_takes_the_step_of_the_runs_best_json():
  records = [{"step": 500, "nn1_train_val": 0.90, "nn1_test": 0.91},
             {"step": 1000, "nn1_train_val": 0.93, "nn1_test": 0.92},
             {"step": 1500, "nn1_train_val": 0.93, "nn1_test": 0.95},
             {"step": 2000, "nn1_train_val": 0.80, "nn1_test": 0.85}]
  best = {"step": 1000, "metric": "nn1_train_val", "value": 0.93}
  assert summarize.pick_eval(records, "best", best)["step"] == 1000
  assert summarize.pick_eval(records, "last", best)["step"] == 2000
  assert summarize.pick_eval(records, "best", None)["step"] == 2000  # no best.json: the newest
