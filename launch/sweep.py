r"""Runs a sweep (variants x seeds of one config) here, on a TPU VM pod slice, or on a SLURM cluster.

  python launch/sweep.py --sweep=configs/sweeps/table1.py --executor=local --workroot=runs
  python launch/sweep.py --sweep=configs/sweeps/table1.py --executor=tpu_vm \
      --workroot=gs://BUCKET/bigbigan --tpu_name=NAME --zone=ZONE [--project=P]
  python launch/sweep.py --sweep=configs/sweeps/table1.py --executor=slurm \
      --workroot=/shared/bigbigan --slurm_nodes=4 --slurm_gpus_per_node=8
  ... --dry_run   # prints one command per run and changes nothing

A sweep file has `get_sweep()` -> {name, config, variants, seeds, args, overrides}. Run (v, k) trains
in WORKROOT/<name>/<v>-seed<k> with

  python -m bigbigan_jax.main --config=<config>:variant=<v>,seed=<k>[,<args>] --workdir=<dir> \
      --config.<key>=<value> ... <--extra_flags>

Runs with a DONE file are skipped; the others are (re)started with the same command, which resumes
from their newest checkpoint. Executors:
  local   subprocesses on this machine, --parallel at a time; logs in <workdir>/train.log.
  tpu_vm  one run at a time on every worker of a pod slice (gcloud ... ssh --worker=all), with
          --distributed. The repo must be installed there (launch/tpu_vm.sh setup) and WORKROOT must
          be a gs:// bucket or a disk all workers share.
  slurm   one sbatch script per run (from launch/slurm.sbatch) in WORKROOT/<name>/slurm/, submitted
          with sbatch; one task per GPU, --distributed. WORKROOT must be on the shared filesystem.
"""

import concurrent.futures
import dataclasses
import json
import os
import posixpath
import queue
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script, `launch` is not yet importable as a package
  sys.path.insert(0, REPO)
from launch import summarize  # pylint: disable=g-import-not-at-top,wrong-import-position

SBATCH_TEMPLATE = os.path.join(REPO, "launch", "slurm.sbatch")
DEFAULT_PYTHON = {"local": sys.executable, "tpu_vm": "~/bigbigan_venv/bin/python", "slurm": "python"}


# ---------------------------------------------------------------------------------------------
# Sweep files and runs.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep."""
  variant: str
  seed: int
  workdir: str

  @property
  def name(self):
    return f"{self.variant}-seed{self.seed}"


def load_sweep(path):
  """The dict of a sweep file's `get_sweep()`, with defaults filled in and checked."""
  sweep = summarize.load_sweep_file(path)
  missing = [k for k in ("name", "config", "variants", "seeds") if k not in sweep]
  if missing:
    raise ValueError(f"{path}: get_sweep() lacks {', '.join(missing)}")
  sweep.setdefault("args", "")
  sweep.setdefault("overrides", {})
  sweep["sweep_file"] = os.path.abspath(path)
  return sweep


def is_url(path):
  return "://" in path


def expand(sweep, workroot):
  """Every (variant, seed) of the sweep as a Run, variant-major like Table 1."""
  root = posixpath.join(workroot, sweep["name"])
  return [Run(v, int(k), posixpath.join(root, f"{v}-seed{k}"))
          for v in sweep["variants"] for k in sweep["seeds"]]


def train_args(sweep, run, extra_flags=""):
  """The flags of bigbigan_jax.main for one run."""
  arg = f"variant={run.variant},seed={run.seed}" + (f",{sweep['args']}" if sweep["args"] else "")
  args = [f"--config={sweep['config']}:{arg}", f"--workdir={run.workdir}"]
  args += [f"--config.{key}={value}" for key, value in sweep["overrides"].items()]
  return args + shlex.split(extra_flags)


def is_finished(run):
  """Whether the run wrote DONE. Unreadable (e.g. gs:// without credentials) counts as not done."""
  try:
    return summarize.as_path(run.workdir).joinpath("DONE").exists()
  except Exception as e:  # pylint: disable=broad-except
    print(f"warning: cannot check {run.workdir}/DONE ({e}); running it", file=sys.stderr)
    return False


def write_sweep_json(sweep, workroot):
  """Leaves the sweep's definition next to its runs, for launch/summarize.py."""
  path = summarize.as_path(posixpath.join(workroot, sweep["name"]))
  path.mkdir(parents=True, exist_ok=True)
  (path / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Commands of each executor.
# ---------------------------------------------------------------------------------------------
def local_command(sweep, run, f):
  return [f.python, "-m", "bigbigan_jax.main", *train_args(sweep, run, f.extra_flags)]


def remote_train_command(sweep, run, f):
  """The shell line that trains one run on a multi-host machine (python is left unquoted so that
  `~/venv/bin/python` expands there)."""
  return (f"{f.python} -m bigbigan_jax.main {shlex.join(train_args(sweep, run, f.extra_flags))} "
          "--distributed")


def tpu_vm_command(sweep, run, f):
  """gcloud ssh on every worker of the pod slice: cd to the repo, train with --distributed."""
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", f.tpu_name, f"--zone={f.zone}"]
  if f.project:
    cmd.append(f"--project={f.project}")
  return cmd + ["--worker=all",
                f"--command=cd {f.tpu_repo_dir} && {remote_train_command(sweep, run, f)}"]


def slurm_script_path(sweep, run, f):
  return os.path.join(f.workroot, sweep["name"], "slurm", f"{run.name}.sbatch")


def slurm_script(sweep, run, f):
  """launch/slurm.sbatch with its {{PLACEHOLDERS}} filled in for one run."""
  extra = [f"--time={f.slurm_time}"] if f.slurm_time else []
  extra += [f"--partition={f.slurm_partition}"] if f.slurm_partition else []
  extra += [f"--account={f.slurm_account}"] if f.slurm_account else []
  extra += shlex.split(f.slurm_sbatch_args)
  values = {
      "JOB_NAME": f"{sweep['name']}-{run.name}",
      "NODES": str(f.slurm_nodes),
      "GPUS_PER_NODE": str(f.slurm_gpus_per_node),
      "CPUS_PER_TASK": str(f.slurm_cpus_per_task),
      "LOG_DIR": os.path.dirname(slurm_script_path(sweep, run, f)),
      "SBATCH_EXTRA": "\n".join(f"#SBATCH {option}" for option in extra),
      "REPO_DIR": shlex.quote(f.slurm_repo_dir or REPO),
      "SETUP": f.slurm_setup,
      "COMMAND": remote_train_command(sweep, run, f),
  }
  with open(SBATCH_TEMPLATE) as t:
    text = t.read()
  for key, value in values.items():
    text = text.replace("{{" + key + "}}", value)
  left = re.findall(r"{{\w+}}", text)
  if left:
    raise ValueError(f"{SBATCH_TEMPLATE}: no value for {', '.join(left)}")
  return text


def slurm_command(sweep, run, f):
  return ["sbatch", "--parsable", slurm_script_path(sweep, run, f)]


def command_line(sweep, run, f):
  """One printable line per run, as --dry_run shows it."""
  if f.executor == "local":
    return shlex.join(local_command(sweep, run, f))
  if f.executor == "tpu_vm":
    return shlex.join(tpu_vm_command(sweep, run, f))
  return f"{shlex.join(slurm_command(sweep, run, f))}  # srun {remote_train_command(sweep, run, f)}"


# ---------------------------------------------------------------------------------------------
# Executors. Each returns {run name: (status, detail)}, status in finished|skipped|submitted|failed.
# ---------------------------------------------------------------------------------------------
def _tail(path, lines=5):
  try:
    with open(path) as log:
      return "".join(log.readlines()[-lines:]).rstrip()
  except OSError:
    return ""


def run_local(sweep, runs, f):
  """Subprocesses, --parallel at a time; with --devices_per_run each gets its own GPUs."""
  env = dict(os.environ)
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  slots = queue.Queue()
  for slot in range(f.parallel):
    slots.put(slot)
  lock = threading.Lock()

  def one(index, run):
    try:
      return train(index, run)
    except Exception as e:  # pylint: disable=broad-except
      return ("failed", f"{type(e).__name__}: {e}")

  def train(index, run):
    slot = slots.get()
    try:
      run_env = dict(env)
      if f.devices_per_run:
        first = slot * f.devices_per_run
        run_env["CUDA_VISIBLE_DEVICES"] = ",".join(
            str(d) for d in range(first, first + f.devices_per_run))
      if is_url(run.workdir):  # the trainer writes there itself; keep the log here
        log_path = os.path.join(tempfile.gettempdir(), f"{sweep['name']}-{run.name}.log")
      else:
        os.makedirs(run.workdir, exist_ok=True)
        log_path = os.path.join(run.workdir, "train.log")
      with lock:
        print(f"[{index}/{len(runs)}] start {run.name} (log: {log_path})", flush=True)
      start = time.time()
      with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(local_command(sweep, run, f))}\n")
        log.flush()
        rc = subprocess.call(local_command(sweep, run, f), cwd=REPO, env=run_env, stdout=log,
                             stderr=subprocess.STDOUT)
      took = f"{time.time() - start:.0f}s"
      if rc == 0 and is_finished(run):
        status = ("finished", took)
      elif rc == 0:  # e.g. preempted: saved a checkpoint and stopped early
        status = ("failed", f"exit 0 but no DONE after {took}; rerun to resume")
      else:
        status = ("failed", f"exit {rc} after {took}, see {log_path}:\n{_tail(log_path)}")
      with lock:
        print(f"[{index}/{len(runs)}] {status[0]} {run.name} ({status[1].splitlines()[0]})",
              flush=True)
      return status
    finally:
      slots.put(slot)

  with concurrent.futures.ThreadPoolExecutor(max_workers=f.parallel) as pool:
    futures = {run.name: pool.submit(one, i + 1, run) for i, run in enumerate(runs)}
    return {name: future.result() for name, future in futures.items()}


def run_tpu_vm(sweep, runs, f):
  """One run at a time, on all workers of the pod slice; gcloud's output goes to the console.

  The training processes live as long as the ssh sessions: if the connection drops, the run fails
  here and rerunning the sweep resumes it from its newest checkpoint.
  """
  results = {}
  for i, run in enumerate(runs):
    print(f"[{i + 1}/{len(runs)}] {run.name}: {command_line(sweep, run, f)}", flush=True)
    rc = subprocess.call(tpu_vm_command(sweep, run, f))
    results[run.name] = ("finished", "") if rc == 0 else ("failed", f"exit {rc}")
  return results


def run_slurm(sweep, runs, f):
  """Writes each run's sbatch script and submits it; the jobs run on the cluster's schedule."""
  results = {}
  for run in runs:
    path = slurm_script_path(sweep, run, f)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as script:
      script.write(slurm_script(sweep, run, f))
    proc = subprocess.run(slurm_command(sweep, run, f), capture_output=True, text=True)
    if proc.returncode == 0:
      results[run.name] = ("submitted", f"job {proc.stdout.strip()}, script {path}")
    else:
      results[run.name] = ("failed", f"sbatch exit {proc.returncode}: {proc.stderr.strip()}")
    print(f"{results[run.name][0]} {run.name}: {results[run.name][1]}", flush=True)
  return results


EXECUTORS = {"local": run_local, "tpu_vm": run_tpu_vm, "slurm": run_slurm}


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------
def sweep_main(f):
  """Dry-runs or runs the sweep; returns the exit status (1 if any run failed)."""
  sweep = load_sweep(f.sweep)
  runs = expand(sweep, f.workroot)
  if f.dry_run:
    print(f"# {len(runs)} runs of sweep {sweep['name']!r} ({f.executor}); nothing was changed")
    for run in runs:
      print(command_line(sweep, run, f))
    if f.executor == "slurm" and f.print_scripts:
      for run in runs:
        print(f"\n# ---- {slurm_script_path(sweep, run, f)} ----\n{slurm_script(sweep, run, f)}")
    return 0

  # A tpu_vm workroot that is no URL lives on the workers' disks: nothing to read or write here.
  visible_here = f.executor != "tpu_vm" or is_url(f.workroot)
  results = {}
  if visible_here:
    try:
      write_sweep_json(sweep, f.workroot)
    except Exception as e:  # pylint: disable=broad-except
      print(f"warning: could not write sweep.json in {f.workroot} ({e})", file=sys.stderr)
    results = {run.name: ("skipped", "already finished (DONE)")
               for run in runs if is_finished(run)}
  todo = [run for run in runs if run.name not in results]
  print(f"Sweep {sweep['name']!r}: {len(runs)} runs, {len(results)} already finished, "
        f"{len(todo)} to {'submit' if f.executor == 'slurm' else 'run'}.", flush=True)
  if todo:
    results.update(EXECUTORS[f.executor](sweep, todo, f))

  print("\nSummary:")
  for run in runs:
    status, detail = results[run.name]
    print(f"  {status:9s} {run.name}" + (f": {detail}" if detail else ""))
  failed = [name for name, (status, _) in results.items() if status == "failed"]
  if f.executor != "slurm" and visible_here:
    try:
      print("\n" + summarize.render(posixpath.join(f.workroot, sweep["name"]), sweep))
    except Exception as e:  # pylint: disable=broad-except
      print(f"warning: could not summarize the sweep ({e})", file=sys.stderr)
  if failed:
    print(f"\n{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def define_flags():
  """The command-line flags of this tool."""
  flags.DEFINE_string("sweep", None, "Sweep file with get_sweep(), e.g. configs/sweeps/table1.py.")
  flags.DEFINE_enum("executor", "local", list(EXECUTORS), "Where the runs go.")
  flags.DEFINE_string("workroot", None, "Runs go to WORKROOT/<sweep name>/<variant>-seed<k>.")
  flags.DEFINE_bool("dry_run", False, "Print one command per run; change nothing.")
  flags.DEFINE_string("extra_flags", "", "Appended to every training command, e.g. "
                      "'--config.data.data_dir=/data/tfds'.")
  flags.DEFINE_string("python", None, "Python on the machine that trains (default: local: this "
                      "interpreter; tpu_vm: ~/bigbigan_venv/bin/python; slurm: python).")
  flags.DEFINE_integer("parallel", 1, "local: runs at a time.")
  flags.DEFINE_integer("devices_per_run", 0, "local: give each parallel run its own "
                       "CUDA_VISIBLE_DEVICES, this many GPUs each (0: don't set it).")
  flags.DEFINE_string("tpu_name", None, "tpu_vm: the TPU VM (pod slice).")
  flags.DEFINE_string("zone", None, "tpu_vm: its zone, e.g. us-central2-b.")
  flags.DEFINE_string("project", None, "tpu_vm: its GCP project (default: gcloud's).")
  flags.DEFINE_string("tpu_repo_dir", "~/bigbigan_jax", "tpu_vm: the repo on every worker.")
  flags.DEFINE_integer("slurm_nodes", 1, "slurm: nodes per run.")
  flags.DEFINE_integer("slurm_gpus_per_node", 8, "slurm: GPUs per node (one task each).")
  flags.DEFINE_integer("slurm_cpus_per_task", 8, "slurm: CPUs per task (input pipeline).")
  flags.DEFINE_string("slurm_time", None, "slurm: time limit, e.g. 2-00:00:00.")
  flags.DEFINE_string("slurm_partition", None, "slurm: partition.")
  flags.DEFINE_string("slurm_account", None, "slurm: account.")
  flags.DEFINE_string("slurm_sbatch_args", "", "slurm: more #SBATCH options, e.g. '--qos=high'.")
  flags.DEFINE_string("slurm_setup", "", "slurm: shell lines run before srun, e.g. "
                      "'source ~/venv/bin/activate'.")
  flags.DEFINE_string("slurm_repo_dir", None, "slurm: the repo on the cluster (default: this one).")
  flags.DEFINE_bool("print_scripts", False, "slurm --dry_run: also print every sbatch script.")
  flags.mark_flags_as_required(["sweep", "workroot"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if f.executor == "tpu_vm" and not (f.tpu_name and f.zone):
    raise app.UsageError("--executor=tpu_vm needs --tpu_name and --zone")
  if f.parallel < 1:
    raise app.UsageError("--parallel must be >= 1")
  if f.executor == "tpu_vm" and not is_url(f.workroot) and not f.dry_run:
    print("note: with --executor=tpu_vm, --workroot is read on the TPU workers: it should be a "
          "gs:// bucket or a disk they all share", file=sys.stderr)
  if f.executor != "tpu_vm" and not is_url(f.workroot):
    f.workroot = os.path.abspath(f.workroot)
  if f.python is None:
    f.python = DEFAULT_PYTHON[f.executor]
  sys.exit(sweep_main(f))


if __name__ == "__main__":
  define_flags()
  app.run(main)
