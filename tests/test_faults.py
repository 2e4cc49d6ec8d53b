"""Injected faults: damaged checkpoints, two runs on one workdir, stale leases, a lost peer.

(Preemption, divergence, unreadable steps, bad flags and a changed architecture on resume are in
tests/test_reliability.py; an unreachable bucket in tests/test_cloud_storage.py.)
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bigbigan_jax import checkpoint
from bigbigan_jax import inference
from bigbigan_jax import lease
from bigbigan_jax import peers
from bigbigan_jax.errors import UserError
from cli_helpers import (REPO, env_for, free_port, main_command, metrics, run_main,
                         state_arrays)


def _flip_a_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01  # same size, one bit different
  path.write_bytes(bytes(data))


def _array_files(step_dir):
  return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d")


@pytest.mark.slow
def test_every_save_records_checksums_and_they_catch_one_flipped_bit(straight_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(straight_run, run)
  step_dir = run / "checkpoints" / "4"
  record = json.loads((step_dir / checkpoint.CHECKSUMS).read_text())["sha256"]
  assert any(name.startswith("state/") for name in record) and "config/metadata" in record
  assert checkpoint.verify(step_dir) == []
  victims = _array_files(step_dir)[:2]
  for victim in victims:
    _flip_a_byte(victim)
  bad = checkpoint.verify(step_dir)
  assert bad == sorted(str(v.relative_to(step_dir)) for v in victims)


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_never_used(straight_run, tmp_path, mnist_data_dir):
  run = tmp_path / "run"
  shutil.copytree(straight_run, run)
  os.remove(run / "DONE")
  _flip_a_byte(_array_files(run / "checkpoints" / "4")[0])
  # load (and so evaluate and extract) falls back to step 2 with one warning line...
  model = inference.load(str(run))
  assert model.step == 2
  # ...and training sets step 4 aside, resumes from step 2 and ends as the straight run did.
  result = run_main(str(run), mnist_data_dir)
  assert "checksums differ for state/" in result.stdout and "resumed from step 2" in result.stdout
  assert len(os.listdir(run / "checkpoints_unreadable")) == 1
  resumed, straight = state_arrays(str(run), 4), state_arrays(straight_run, 4)
  for key in straight:
    assert (resumed[key] == straight[key]).all(), key


def test_an_unreadable_run_config_is_an_error_naming_the_step(tmp_path):
  run = tmp_path / "run"
  shutil.copytree(os.path.join(REPO, "tests", "data", "old_checkpoints", "bigbigan"), run)
  (run / "checkpoints" / "4" / "config" / "metadata").write_text("{not json")
  with pytest.raises(UserError, match=r"no readable checkpoint config .*\(step 4: .*\); pass"):
    checkpoint.Checkpointer(str(run), read_only=True).restore_config()


@pytest.mark.slow
def test_a_second_run_on_a_live_workdir_stops_and_the_first_goes_on(tmp_path, mnist_data_dir):
  workdir = str(tmp_path / "run")
  first = subprocess.Popen(main_command(workdir, mnist_data_dir, "--config.total_steps=100000"),
                           env=env_for(1), cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(workdir, lease.NAME)):
      assert first.poll() is None and time.time() < deadline, "the first run never started"
      time.sleep(0.05)
    second = subprocess.run(main_command(workdir, mnist_data_dir), env=env_for(1), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
    assert f"is in use by another run (pid {first.pid} on" in lines[0]
    assert first.poll() is None  # untouched
  finally:
    first.kill()
    first.wait(timeout=60)
  # Killed, its lease names a process that is gone: the next run takes it over.
  result = run_main(workdir, mnist_data_dir, "--config.total_steps=2")
  assert "took over the lease" in result.stdout and "(its process is gone)" in result.stdout
  assert not os.path.exists(os.path.join(workdir, lease.NAME))  # released at the end


def test_leases_refuse_a_live_holder_and_take_over_a_stale_one(tmp_path):
  held = lease.Lease(tmp_path)
  held.acquire()
  with pytest.raises(UserError, match="is in use by another run"):
    lease.Lease(tmp_path).acquire()
  held.release()
  assert not (tmp_path / lease.NAME).exists()
  lease.Lease(tmp_path).acquire()  # free again
  # A holder on another machine that stopped beating.
  (tmp_path / lease.NAME).write_text(json.dumps(
      {"holder": "x", "host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time() - 600}))
  late = lease.Lease(tmp_path)
  late.acquire()
  assert json.loads((tmp_path / lease.NAME).read_text())["holder"] == late.record["holder"]
  late.release()


def test_only_one_of_two_starters_takes_a_stale_lease_over(tmp_path):
  stale = {"holder": "x", "host": "elsewhere", "pid": 1, "started": 0,
           "heartbeat": time.time() - 600}
  (tmp_path / lease.NAME).write_text(json.dumps(stale))
  # Another starter is taking it over (its marker is fresh): this one stops.
  (tmp_path / f"{lease.NAME}.takeover").write_text("")
  with pytest.raises(UserError, match="another run is starting on the same --workdir"):
    lease.Lease(tmp_path).acquire()
  assert json.loads((tmp_path / lease.NAME).read_text()) == stale  # untouched
  # A starter that changed the lease after this one read it wins; this one does not overwrite.
  (tmp_path / f"{lease.NAME}.takeover").unlink()
  late = lease.Lease(tmp_path)
  text = (tmp_path / lease.NAME).read_text()
  (tmp_path / lease.NAME).write_text(json.dumps({**stale, "holder": "winner"}))
  assert not late._take_over_local(json.dumps(late.record), text)  # pylint: disable=protected-access
  assert json.loads((tmp_path / lease.NAME).read_text())["holder"] == "winner"
  assert not (tmp_path / f"{lease.NAME}.takeover").exists()
  # A marker left by a starter that died mid-takeover is cleared once it is stale.
  os.close(os.open(tmp_path / f"{lease.NAME}.takeover", os.O_CREAT | os.O_WRONLY))
  os.utime(tmp_path / f"{lease.NAME}.takeover", (0, 0))
  (tmp_path / lease.NAME).write_text(json.dumps(stale))
  late.acquire()
  assert json.loads((tmp_path / lease.NAME).read_text())["holder"] == late.record["holder"]
  late.release()


def test_the_heartbeat_refreshes_the_lease_and_notices_a_takeover(tmp_path):
  held = lease.Lease(tmp_path, heartbeat_s=0.05)
  held.acquire()
  first = json.loads((tmp_path / lease.NAME).read_text())["heartbeat"]
  time.sleep(0.5)
  assert json.loads((tmp_path / lease.NAME).read_text())["heartbeat"] > first
  held.check()  # still ours
  # Another run took it over (this one was thought dead): the next save must not happen.
  (tmp_path / lease.NAME).write_text(json.dumps(
      {"holder": "other", "host": "elsewhere", "pid": 7, "started": 0, "heartbeat": time.time()}))
  time.sleep(0.5)
  with pytest.raises(UserError, match="another run took over the lease .*pid 7 on elsewhere"):
    held.check()
  held.release()
  assert (tmp_path / lease.NAME).exists()  # the new holder's lease stays


# What JAX prints when its coordination service or a failed check aborts a process.
_ABORT_SIGNS = re.compile(r"Aborted|SIGABRT|Fatal Python error|Traceback|terminate called|"
                          r"^[FE]\d{4} ", re.MULTILINE)


def test_the_stderr_filter_passes_progress_bars_and_replaces_the_runtime_abort():
  """What a multi-host process writes to stderr: a progress bar's redraws pass at once (cut at
  carriage returns), and JAX's report of a lost peer, with all that follows but `error:` lines,
  becomes the one lost-contact line."""
  stream = (b"encoding 1/3\rencoding 2/3\rdone\n"
            b"E1206 00:00:00.1 1 coordination_service.cc:1] fatal: task 0 is gone\n"
            b"*** Check failure stack trace: ***\n    @ 0x7f abc\n")
  result = subprocess.run([sys.executable, "-m", "bigbigan_jax.peers", "1", "2", ""], input=stream,
                          capture_output=True, env=env_for(1), cwd=REPO, timeout=60)
  out = result.stdout.decode()
  assert out.startswith("encoding 1/3\rencoding 2/3\rdone\n"), out
  rest = out.strip().split("\n")[1:]
  assert len(rest) == 1 and rest[0].startswith("error: process 1 of 2 lost contact"), out
  assert "task 0 is gone" in rest[0] and "Check failure" not in out


@pytest.mark.slow
@pytest.mark.parametrize("fault, victim", [(signal.SIGKILL, 0), (signal.SIGSTOP, 1)],
                         ids=["SIGKILL-process-0", "SIGSTOP-process-1"])
def test_a_dead_or_frozen_peer_ends_the_other_in_one_line(fault, victim, tmp_path,
                                                          mnist_data_dir):
  """2 processes x 2 CPU devices on 127.0.0.1 train; once they do, one is killed (SIGKILL of
  process 0, which holds the coordination service) or frozen (SIGSTOP of process 1). The other
  must print one `error: process i of 2 lost contact` line, no abort dump, and exit non-zero
  within 30 s (the default --heartbeat_timeout_s, 20 s, plus slack for a busy machine)."""
  workdir = str(tmp_path / "run")
  port = free_port()
  # Both compile cold: with a warm cache only one might skip compilation and wait past gloo's
  # fixed 30 s rendezvous for the other.
  env = {**env_for(2), "JAX_ENABLE_COMPILATION_CACHE": "false"}
  logs = [open(tmp_path / f"process{i}.err", "w+") for i in range(2)]
  procs = [subprocess.Popen(
      main_command(workdir, mnist_data_dir, "--config.total_steps=100000",
                   "--config.image_every=100000", "--config.checkpoint_every=100000",
                   f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                   f"--process_id={i}"),
      env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(2)]
  survivor = procs[1 - victim]
  try:
    deadline = time.time() + 900  # cold compilation of two processes on a busy 2-core machine
    while not (os.path.exists(workdir + "/metrics.jsonl") and len(metrics(workdir)) >= 3):
      assert all(p.poll() is None for p in procs) and time.time() < deadline, "did not train"
      time.sleep(0.1)
    procs[victim].send_signal(fault)
    struck = time.time()
    returncode = survivor.wait(timeout=120)
    took = time.time() - struck
    err = ""
    while "error:" not in err and time.time() < struck + took + 10:  # from its stderr filter
      time.sleep(0.2)
      logs[1 - victim].seek(0)
      err = logs[1 - victim].read()
  finally:
    for p in procs:
      p.kill()
      p.wait()
  print(f"process {1 - victim} exited {took:.2f} s after {fault.name} of process {victim}")
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  # Status 1 from this package; JAX's runtime, where it ends the process first, aborts it.
  assert returncode in (1, -signal.SIGABRT) and len(lines) == 1, err[-3000:]
  assert not _ABORT_SIGNS.search(err), err[-3000:]
  assert f"process {1 - victim} of 2 lost contact with another process of this run" in lines[0]
  assert "rerun the same command on all hosts to resume from the last complete checkpoint" \
      in lines[0], lines[0]
  assert took < 30 and peers.HEARTBEAT_TIMEOUT_S < 30, f"took {took:.1f} s"


@pytest.mark.slow
def test_a_full_disk_stops_in_one_line_and_a_rerun_resumes(tmp_path, mnist_data_dir):
  """A 6 MB disk holds the saves of steps 2 and 4 (about 2 MB each), not more. The run stops
  with one line naming the workdir and the space a save needs; the complete saves stay
  verifiable; once there is room, the same command resumes with one warning line, and of the
  interrupted saves set aside only the newest is kept."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6M", "tmpfs", str(disk)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here (it needs root): {mounted.stderr.strip()}")
  try:
    workdir = disk / "run"
    flags = ("--config.total_steps=10", "--config.checkpoint_every=2",
             "--config.image_every=1000")
    full = subprocess.run(main_command(str(workdir), mnist_data_dir, *flags), env=env_for(1),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 2 and len(lines) == 1, full.stderr[-3000:]
    assert lines[0].startswith(f"error: no space left on the disk of {workdir}, "), lines[0]
    assert re.search(r"a checkpoint needs about [1-9][\d.]* MB", lines[0]), lines[0]
    resume = int(lines[0].rsplit(" ", 1)[1])
    complete = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                      if p.name.isdigit())
    assert resume == complete[-1] >= 2
    for step in complete:
      assert checkpoint.verify(workdir / "checkpoints" / str(step)) == [], step
    # An interrupted save set aside by an earlier rerun: only the newest one is kept.
    older = workdir / "checkpoints_unreadable" / "2.orbax-checkpoint-tmp-7-1000"
    older.mkdir(parents=True)
    subprocess.run(["mount", "-o", "remount,size=64M", str(disk)], check=True)  # room again
    result = run_main(str(workdir), mnist_data_dir, *flags)
    warnings = [l for l in result.stdout.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and f"resuming from step {resume}" in warnings[0], result.stdout
    assert not result.stderr.strip(), result.stderr[-3000:]
    aside = os.listdir(workdir / "checkpoints_unreadable")
    assert len(aside) == 1 and aside[0].startswith(f"{resume + 2}.orbax-checkpoint-tmp"), aside
    assert (workdir / "DONE").exists()
  finally:
    subprocess.run(["umount", "-l", str(disk)], check=False)
