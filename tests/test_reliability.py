"""Bad configs, divergence, preemption and broken checkpoints: fail fast, lose nothing."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bigbigan_jax import validation
from bigbigan_jax.config_lib import load_sibling_config
from bigbigan_jax.errors import UserError
from cli_helpers import CONFIG, REPO, env_for, main_command, metrics, run_main, state_arrays

base = load_sibling_config(os.path.join(REPO, "configs", "base.py"), "base")


@pytest.mark.parametrize("field,value,mentions", [
    ("model.z_dim", 100, "model.z_dim"),
    ("model.generator.resolution", 48, "model.generator.resolution"),
    ("model.encoder.resolution", 192, "model.encoder.resolution"),
    ("optim.g_lr", -1.0, "optim.g_lr"),
    ("optim.d_lr", 0.0, "optim.d_lr"),
    ("total_steps", 0, "total_steps"),
    ("model.z_dist", "uniform", "encoder.output=uniform"),
    ("dtype", "float8", "dtype"),
    ("loss.form", "wasserstein", "loss.form"),
    ("model.encoder.trunk", "vit", "model.encoder.trunk"),
])
def test_bad_config_values_name_the_field(field, value, mentions):
  config = base.get_config()
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(UserError, match=mentions.replace(".", r"\.")) as e:
    validation.validate(config)
  assert "\n" not in str(e.value)


def test_all_loss_terms_off_and_batch_not_divisible():
  config = base.get_config()
  config.loss.update(s_x=False, s_z=False, s_xz=False)
  with pytest.raises(UserError, match="all loss terms are off"):
    validation.validate(config)
  with pytest.raises(UserError, match="not divisible by the 3 devices"):
    validation.validate(base.get_config(), num_devices=3)


def _cli(args, devices=1):
  return subprocess.run([sys.executable, "-m", *args], env=env_for(devices), cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [
    ["bigbigan_jax.summary", "--config=configs/base.py:variant=no_such_row"],
    ["bigbigan_jax.summary", "--config=configs/base.py", "--config.model.z_dim=121"],
    ["bigbigan_jax.summary", "--config=configs/base.py", "--config.eval.no_such_field=1"],
    ["bigbigan_jax.summary", "--config=configs/no_such_file.py"],
    ["bigbigan_jax.summary", "--config=configs/base.py:seed=abc"],
    ["bigbigan_jax.summary", "--config=configs/base.py", "--config.optim.d_lr=inf"],
    ["bigbigan_jax.main", "--workdir=/tmp/x"],  # no --config
])
@pytest.mark.slow
def test_cli_bad_config_is_one_line_exit_2(args):
  result = _cli(args)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in result.stderr


def test_non_finite_float_fields_are_rejected():
  for field, value in (("optim.d_lr", float("inf")), ("ema.decay", float("nan")),
                       ("optim.weight_decay", float("-inf"))):
    config = base.get_config()
    parent, _, leaf = field.rpartition(".")
    config[parent][leaf] = value
    with pytest.raises(UserError, match=f"config.{field}=.* is not a finite number"):
      validation.validate(config)


@pytest.mark.slow
def test_unusable_workdirs_and_a_changed_architecture_are_one_line(tmp_path, mnist_data_dir,
                                                                   straight_run):
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  copy = tmp_path / "copy"
  shutil.copytree(straight_run, copy)
  os.remove(copy / "DONE")
  cases = [((f"--workdir={a_file}",), "is a file"),
           ((f"--workdir={a_file}/run",), "cannot write to --workdir"),
           ((f"--workdir={copy}", "--config.model.generator.ch=8", "--config.total_steps=6"),
            "was trained with another architecture: parameter")]
  # A read-only filesystem (root ignores file modes, so a read-only mount), where mounting works.
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(read_only)],
                           capture_output=True).returncode == 0
  if mounted:
    cases.append(((f"--workdir={read_only}/run",), "Read-only file system"))
  try:
    for flags, message in cases:
      command = [sys.executable, "-m", "bigbigan_jax.main", f"--config={CONFIG}",
                 f"--config.data.data_dir={mnist_data_dir}", *flags]
      result = subprocess.run(command, env=env_for(1), cwd=REPO, capture_output=True, text=True,
                              timeout=300)
      lines = result.stderr.strip().splitlines()
      assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(read_only)], check=False)
  # The healthy checkpoints of the run with the other architecture are where they were.
  assert sorted(os.listdir(copy / "checkpoints")) == ["2", "4"]
  assert not os.path.exists(copy / "checkpoints_unreadable")


@pytest.mark.slow
def test_main_batch_not_divisible_by_devices(tmp_path, mnist_data_dir):
  result = subprocess.run(main_command(str(tmp_path), mnist_data_dir, "--config.batch_size=12"),
                          env=env_for(8), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "error: config.batch_size=12 is not divisible by the 8 devices" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_missing_dataset_is_a_clear_error(tmp_path, mnist_data_dir):
  result = subprocess.run(
      main_command(str(tmp_path), mnist_data_dir, "--config.data.dataset=no_such_dataset"),
      env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "error: unknown dataset 'no_such_dataset'" in result.stderr


@pytest.mark.slow
def test_divergence_stops_with_the_step_and_term_and_saves_nothing_bad(tmp_path, mnist_data_dir):
  workdir = str(tmp_path)
  result = subprocess.run(
      main_command(workdir, mnist_data_dir, "--config.optim.g_lr=1e30",
                   "--config.checkpoint_every=1"),
      env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  error = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1 and "training diverged at step" in error[0] and "non-finite" in error[0]
  bad_step = int(error[0].split("at step ")[1].split(":")[0])
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert saved and max(saved) < bad_step
  for value in state_arrays(workdir, max(saved)).values():
    assert np.all(np.isfinite(value))


@pytest.mark.slow
def test_skip_nonfinite_counts_instead_of_stopping(tmp_path, mnist_data_dir):
  workdir = str(tmp_path)
  run_main(workdir, mnist_data_dir, "--config.optim.g_lr=1e30",
           "--config.skip_nonfinite=True")
  last = metrics(workdir)[-1]
  assert last["step"] == 4 and last["nonfinite_skipped"] >= 1
  for value in state_arrays(workdir, 4).values():
    assert np.all(np.isfinite(value))


@pytest.mark.slow
def test_sigterm_during_start_up_exits_at_once_and_the_rerun_trains(tmp_path, mnist_data_dir,
                                                                 straight_run):
  workdir = str(tmp_path)
  proc = subprocess.Popen(main_command(workdir, mnist_data_dir), env=env_for(1), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not os.path.isdir(workdir + "/checkpoints") and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # during start-up/compilation: nothing to save yet
  sent = time.time()
  out, err = proc.communicate(timeout=300)
  took = time.time() - sent
  assert proc.returncode == 0, err[-2000:]
  assert "Preempted (SIGTERM) before the first step: nothing to save yet" in out, out
  assert took < 10, took  # not after a whole compilation
  assert not os.listdir(workdir + "/checkpoints")
  run_main(workdir, mnist_data_dir)  # the same command trains to total_steps
  resumed, straight = state_arrays(workdir, 4), state_arrays(straight_run, 4)
  for key in straight:
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


@pytest.mark.slow
def test_sigterm_during_training_checkpoints_the_step_and_the_rerun_resumes(tmp_path,
                                                                           mnist_data_dir):
  workdir = str(tmp_path)
  long_run = ("--config.total_steps=100000", "--config.log_every=1")
  proc = subprocess.Popen(main_command(workdir, mnist_data_dir, *long_run), env=env_for(1),
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not (os.path.exists(workdir + "/metrics.jsonl") and metrics(workdir)):
    assert proc.poll() is None and time.time() < deadline, "the run never logged a step"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  saved = int(out.split("saved the checkpoint at step ")[1].split(";")[0])
  assert saved >= 1 and os.path.isdir(f"{workdir}/checkpoints/{saved}"), out
  result = run_main(workdir, mnist_data_dir, f"--config.total_steps={saved + 1}")
  assert f"Resumed from the checkpoint at step {saved}" in result.stdout
  assert [l["step"] for l in metrics(workdir)][-1] == saved + 1


@pytest.mark.slow
def test_unreadable_newest_checkpoint_falls_back_and_is_kept(tmp_path, mnist_data_dir,
                                                             straight_run):
  workdir = str(tmp_path / "run")
  shutil.copytree(straight_run, workdir)
  os.remove(os.path.join(workdir, "DONE"))
  state_dir = os.path.join(workdir, "checkpoints", "4", "state")
  for root, _, files in os.walk(state_dir):  # garble every array file of the newest step
    for f in files:
      if "ocdbt" in root or f.startswith(("manifest", "d")):
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"garbage")
  result = run_main(workdir, mnist_data_dir)
  assert "skipped unreadable checkpoints" in result.stdout and "resumed from step 2" in result.stdout
  assert os.listdir(os.path.join(workdir, "checkpoints_unreadable"))  # set aside, not deleted
  resumed, straight = state_arrays(workdir, 4), state_arrays(straight_run, 4)
  for key in straight:
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


def _saving(checkpoints, step):
  """The name of orbax's temporary directory for `step` while that save is in progress."""
  names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
  return next((n for n in names if n.startswith(f"{step}.orbax-checkpoint-tmp")), None)


@pytest.mark.slow
def test_sigkill_during_an_async_save_resumes_from_the_last_complete_checkpoint(
    tmp_path, mnist_data_dir, straight_run):
  """SIGKILL while orbax writes step 4 (the tiny config saves steps 2 and 4, asynchronously): the
  half-written step is never loaded; the rerun says so, resumes from step 2 and ends equal to a
  straight run."""
  workdir, checkpoints = str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints")
  with open(tmp_path / "killed.log", "w") as log:
    proc = subprocess.Popen(main_command(workdir, mnist_data_dir), env=env_for(1), cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  try:
    while not _saving(checkpoints, 4):  # poll every 2 ms; the save takes 0.1-3 s here
      assert proc.poll() is None and time.time() < deadline, "the run never began saving step 4"
      time.sleep(0.002)
  finally:
    proc.kill()  # SIGKILL
    proc.wait(timeout=60)
  assert _saving(checkpoints, 4) and not os.path.exists(os.path.join(checkpoints, "4")), (
      "the kill came after the save of step 4 completed")
  result = run_main(workdir, mnist_data_dir)  # the same command
  assert "warning: the save of step 4 never completed" in result.stdout, result.stdout
  assert "resuming from step 2, the newest complete checkpoint" in result.stdout
  assert "Resumed from the checkpoint at step 2" in result.stdout
  assert any(n.startswith("4.orbax-checkpoint-tmp")
             for n in os.listdir(checkpoints + "_unreadable"))  # set aside, not deleted
  assert not _saving(checkpoints, 4) and os.path.isdir(os.path.join(checkpoints, "4"))
  resumed, straight = state_arrays(workdir, 4), state_arrays(straight_run, 4)
  for key in straight:
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


# A killed or frozen peer of a multi-process run: tests/test_faults.py.
