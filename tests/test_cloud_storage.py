"""Cloud-storage workdirs (gs://) against a GCS emulator on 127.0.0.1 (tests/gcs_emulator.py):

  - a 2-process run writes its checkpoints, metrics, TensorBoard events and image grids to the
    bucket; SIGKILL of both processes and the same command again resume from the bucket and end
    bitwise equal to a straight 2-process run;
  - `load`, `evaluate` and `extract --out=gs://...` (feature shards) work on the bucket run;
  - the path helpers (whole-object writes, JSON lines, moving a directory) work on the bucket;
  - storage that does not answer is a one-line error naming the path, not minutes of retries.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bigbigan_jax import feature_store
from bigbigan_jax import paths
from cli_helpers import REPO, env_for, free_port, main_command, state_arrays
from gcs_emulator import Emulator, client_env

BUCKET = "bucket"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """The emulator, with this process's storage clients pointed at it."""
  server = Emulator(BUCKET, str(tmp_path_factory.mktemp("gcs") / "fake_gcs.log"))
  saved = {k: os.environ.get(k) for k in server.env}
  os.environ.update(server.env)
  yield server
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
  server.stop()


def _env(server):
  return {**env_for(4), **server.env}


def _start_two_processes(workdir, data_dir, server, log_dir, tag):
  port = free_port()
  procs = []
  temp = os.path.join(log_dir, f"tmp-{tag}")  # the runs' local temporary files
  os.makedirs(temp, exist_ok=True)
  for i in range(2):
    log = open(os.path.join(log_dir, f"{tag}-{i}.log"), "w")
    procs.append((subprocess.Popen(
        main_command(workdir, data_dir, f"--coordinator_address=127.0.0.1:{port}",
                     "--num_processes=2", f"--process_id={i}"),
        env={**_env(server), "TMPDIR": temp}, cwd=REPO, stdout=log, stderr=subprocess.STDOUT),
        log))
  return procs


def _finish(procs, log_dir, tag):
  outputs = []
  for i, (proc, log) in enumerate(procs):
    proc.wait(timeout=600)
    log.close()
    with open(os.path.join(log_dir, f"{tag}-{i}.log")) as f:
      outputs.append(f.read())
    assert proc.returncode == 0, outputs[-1][-3000:]
  return outputs


@pytest.fixture(scope="module")
def bucket_runs(emulator, mnist_data_dir, tmp_path_factory):
  """gs://bucket/straight: 4 steps by 2 processes x 4 devices; gs://bucket/run: the same, killed
  (SIGKILL, both processes) once step 2 is saved, then the same command again."""
  logs = str(tmp_path_factory.mktemp("bucket_logs"))
  straight = f"gs://{BUCKET}/straight"
  _finish(_start_two_processes(straight, mnist_data_dir, emulator, logs, "straight"), logs,
          "straight")

  run = f"gs://{BUCKET}/run"
  procs = _start_two_processes(run, mnist_data_dir, emulator, logs, "killed")
  deadline = time.time() + 300
  try:
    while "run/checkpoints/2/commit_success.txt" not in emulator.objects("run/checkpoints/2/"):
      assert all(p.poll() is None for p, _ in procs), "the run ended before saving step 2"
      assert time.time() < deadline, "the run never saved step 2"
      time.sleep(0.005)
  finally:
    for proc, log in procs:
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=60)
      log.close()
  assert "run/checkpoints/4/commit_success.txt" not in emulator.objects("run/checkpoints/4/"), (
      "the kill came after step 4 was saved")
  resumed = _finish(_start_two_processes(run, mnist_data_dir, emulator, logs, "resumed"), logs,
                    "resumed")
  return {"straight": straight, "run": run, "resumed_output": resumed,
          "straight_temp": os.listdir(os.path.join(logs, "tmp-straight"))}


@pytest.mark.slow
def test_a_killed_bucket_run_resumes_to_the_straight_result(bucket_runs, emulator):
  assert "Resumed from the checkpoint at step 2" in bucket_runs["resumed_output"][0]
  names = emulator.objects("run/")
  for expected in ("run/metrics.jsonl", "run/DONE", "run/images/samples_0000004.png",
                   "run/images/reconstructions_0000004.png"):
    assert expected in names, expected
  assert any(n.startswith("run/events.out.tfevents") for n in names), names
  # TensorBoard's local staging folder is removed once its files are in the bucket.
  assert not [n for n in bucket_runs["straight_temp"] if "tensorboard" in n]
  steps = [r["step"] for r in paths.read_jsonl(f"{bucket_runs['run']}/metrics.jsonl")]
  assert steps == [1, 2, 3, 4]
  resumed = state_arrays(bucket_runs["run"], 4)
  straight = state_arrays(bucket_runs["straight"], 4)
  assert resumed.keys() == straight.keys() and int(resumed["['step']"]) == 4
  for key in straight:
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)


@pytest.mark.slow
def test_load_evaluate_and_extract_read_the_bucket_run(bucket_runs, emulator, mnist_data_dir):
  import bigbigan_jax  # pylint: disable=g-import-not-at-top
  model = bigbigan_jax.load(bucket_runs["run"], batch_size=8)
  assert model.step == 4
  x = model.preprocess(np.zeros((3, 28, 28), np.uint8))
  assert model.encode(x)["z_mean"].shape == (3, model.z_dim)

  env = {**env_for(1), **emulator.env}
  out = f"gs://{BUCKET}/features"
  for module, flags in (("extract", ["--split=test", f"--out={out}"]),
                        ("evaluate", ["--metrics=knn,recon"])):
    result = subprocess.run(
        [sys.executable, "-m", f"bigbigan_jax.{module}", f"--workdir={bucket_runs['run']}",
         f"--data_dir={mnist_data_dir}", *flags], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
  features = feature_store.load(f"{out}/test")
  assert features["z_mean"].shape == (1000, model.z_dim) and len(features["labels"]) == 1000
  record = paths.read_jsonl(f"{bucket_runs['run']}/eval.jsonl")[-1]
  assert record["step"] == 4 and 0.0 < record["nn1_test"] <= 1.0 and "recon_mse_test" in record


def test_path_helpers_write_whole_objects_in_the_bucket(emulator):
  root = paths.path(f"gs://{BUCKET}/helpers")
  paths.append_jsonl(root / "log.jsonl", [{"step": 1}])
  paths.append_jsonl(root / "log.jsonl", [{"step": 2}, {"step": 3}])
  assert [r["step"] for r in paths.read_jsonl(root / "log.jsonl")] == [1, 2, 3]
  paths.write_text(root / "a" / "b.json", "{}")
  paths.write_bytes(root / "a" / "c.bin", b"\x00\x01")
  paths.move_dir(root / "a", root / "moved")
  assert not (root / "a").exists()
  assert (root / "moved" / "c.bin").read_bytes() == b"\x00\x01"
  assert sorted(emulator.objects("helpers/moved/")) == ["helpers/moved/b.json",
                                                         "helpers/moved/c.bin"]
  paths.check_reachable(root)  # answers: no error


def test_the_workdir_lease_is_created_only_if_absent_in_the_bucket(emulator):
  from bigbigan_jax import lease  # pylint: disable=g-import-not-at-top
  from bigbigan_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  workdir = f"gs://{BUCKET}/leased"
  held = lease.Lease(workdir)
  held.acquire()
  assert "leased/lease.json" in emulator.objects("leased/")
  with pytest.raises(UserError, match="is in use by another run"):
    lease.Lease(workdir).acquire()
  held.release()
  assert "leased/lease.json" not in emulator.objects("leased/")
  again = lease.Lease(workdir)
  again.acquire()
  again.release()


def test_unreachable_storage_is_a_one_line_error(mnist_data_dir):
  # Nothing listens on this port: the clients retry, the run must not wait for them.
  env = {**env_for(1), **client_env(f"http://127.0.0.1:{free_port()}")}
  start = time.monotonic()
  result = subprocess.run(main_command(f"gs://{BUCKET}/unreachable", mnist_data_dir), env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  took = time.monotonic() - start
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and f"gs://{BUCKET}/unreachable" in lines[-1], lines
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert took < 90, took
