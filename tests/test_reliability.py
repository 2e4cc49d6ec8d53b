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
from cli_helpers import REPO, env_for, main_command, metrics, run_main, state_arrays

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
])
def test_cli_bad_config_is_one_line_exit_2(args):
  result = _cli(args)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in result.stderr


def test_main_batch_not_divisible_by_devices(tmp_path, mnist_data_dir):
  result = subprocess.run(main_command(str(tmp_path), mnist_data_dir, "--config.batch_size=12"),
                          env=env_for(8), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "error: config.batch_size=12 is not divisible by the 8 devices" in result.stderr
  assert "Traceback" not in result.stderr


def test_missing_dataset_is_a_clear_error(tmp_path, mnist_data_dir):
  result = subprocess.run(
      main_command(str(tmp_path), mnist_data_dir, "--config.data.dataset=no_such_dataset"),
      env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "error: unknown dataset 'no_such_dataset'" in result.stderr


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


def test_skip_nonfinite_counts_instead_of_stopping(tmp_path, mnist_data_dir):
  workdir = str(tmp_path)
  run_main(workdir, mnist_data_dir, "--config.optim.g_lr=1e30",
           "--config.skip_nonfinite=True")
  last = metrics(workdir)[-1]
  assert last["step"] == 4 and last["nonfinite_skipped"] >= 1
  for value in state_arrays(workdir, 4).values():
    assert np.all(np.isfinite(value))


def test_sigterm_checkpoints_and_resumes_to_the_straight_result(tmp_path, mnist_data_dir,
                                                                 straight_run):
  workdir = str(tmp_path)
  proc = subprocess.Popen(main_command(workdir, mnist_data_dir), env=env_for(1), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not os.path.isdir(workdir + "/checkpoints") and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # during start-up/compilation: the first step is the last
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  assert "Preempted (SIGTERM): saved the checkpoint at step 1" in out
  run_main(workdir, mnist_data_dir)  # the same command resumes to total_steps
  resumed, straight = state_arrays(workdir, 4), state_arrays(straight_run, 4)
  for key in straight:
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


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
