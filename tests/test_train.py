"""End-to-end training invariants, through the real CLI on the shipped MNIST digits.

  - a short main run writes checkpoints, metrics.jsonl and PNG grids;
  - 1 device vs 8 devices: same losses and parameters after 2 steps;
  - 4 straight steps == 2 steps, stop, resume to 4 (bitwise on CPU);
  - 2 processes x 4 devices on loopback == 1 process x 8 devices.
"""

import os
import subprocess

import numpy as np
import pytest

from cli_helpers import (REPO, env_for, free_port, main_command, metrics, run_main,
                         state_arrays)


def test_main_run_writes_checkpoints_metrics_and_images(straight_run):
  lines = metrics(straight_run)
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  for line in lines:
    assert np.isfinite(line["d_loss"]) and np.isfinite(line["eg_loss"])
    assert {"s_x_enc", "s_x_gen", "s_z_enc", "s_xz_gen", "steps_per_s", "img_per_s",
            "eta_s", "elapsed_s"} <= set(line)
  assert sorted(os.listdir(os.path.join(straight_run, "checkpoints")), key=int)[-1] == "4"
  pngs = sorted(os.listdir(os.path.join(straight_run, "images")))
  assert "samples_0000004.png" in pngs and "reconstructions_0000004.png" in pngs
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(straight_run))
  state = state_arrays(straight_run, 4)
  assert int(state["['step']"]) == 4


@pytest.mark.slow
def test_resume_equals_straight_run_bitwise(straight_run, tmp_path, mnist_data_dir):
  workdir = str(tmp_path)
  run_main(workdir, mnist_data_dir, "--config.total_steps=2")
  result = run_main(workdir, mnist_data_dir)  # the same command again: resumes to total_steps=4
  assert "Resumed from the checkpoint at step 2" in result.stdout
  assert [l["step"] for l in metrics(workdir)] == [1, 2, 3, 4]
  elapsed = [l["elapsed_s"] for l in metrics(workdir)]  # the clock goes on across the restart
  assert elapsed == sorted(elapsed) and elapsed[2] > elapsed[1]
  resumed, straight = state_arrays(workdir, 4), state_arrays(straight_run, 4)
  assert resumed.keys() == straight.keys()
  for key in straight:
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
  for a, b in zip(metrics(workdir), metrics(straight_run)):
    assert a["d_loss"] == b["d_loss"] and a["eg_loss"] == b["eg_loss"]


def _assert_same_run(workdir_a, workdir_b):
  # Losses: 1e-5. Any real difference between the layouts (per-replica batch-norm statistics, a
  # batch split or reduced differently) moves them by far more.
  for a, b in zip(metrics(workdir_a), metrics(workdir_b)):
    np.testing.assert_allclose(a["d_loss"], b["d_loss"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a["eg_loss"], b["eg_loss"], rtol=1e-5, atol=1e-5)
  # Parameters: Adam's update g / (|g| + eps) amplifies rounding-level gradient differences (the
  # order of the cross-device sums) up to lr / eps times; over two steps one of the tiny model's
  # weights can end 1.2e-5 apart, so they are compared at 1e-4, half of lr.
  sa, sb = state_arrays(workdir_a, 2), state_arrays(workdir_b, 2)
  for key in sa:
    if "['params']" in key:
      np.testing.assert_allclose(sa[key], sb[key], rtol=1e-4, atol=1e-4, err_msg=key)


# A larger Adam eps than the default keeps the update continuous in g (see above).
TWO_STEPS = ("--config.total_steps=2", "--config.optim.eps=1e-3")


@pytest.fixture(scope="module")
def eight_device_run(tmp_path_factory, mnist_data_dir):
  workdir = str(tmp_path_factory.mktemp("eight"))
  run_main(workdir, mnist_data_dir, *TWO_STEPS, devices=8)
  return workdir


@pytest.mark.slow
def test_one_device_equals_eight_devices(tmp_path, mnist_data_dir, eight_device_run):
  one = str(tmp_path)
  run_main(one, mnist_data_dir, *TWO_STEPS, devices=1)
  _assert_same_run(one, eight_device_run)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, mnist_data_dir, eight_device_run):
  workdir = str(tmp_path)
  port = free_port()
  procs = [subprocess.Popen(
      main_command(workdir, mnist_data_dir, *TWO_STEPS,
                    f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}"),
      env=env_for(4), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  _assert_same_run(workdir, eight_device_run)


def test_prefetched_images_carry_the_input_state_and_raise_input_errors():
  """The loop's device prefetch: each step's images in order, `state` that of the batches handed
  out (what a checkpoint records, not the prefetched ones), an input error raised in order."""
  import jax  # pylint: disable=g-import-not-at-top
  from bigbigan_jax import loop, sharding  # pylint: disable=g-import-not-at-top
  from bigbigan_jax.errors import UserError  # pylint: disable=g-import-not-at-top

  class Batches:
    def __init__(self):
      self.count = 0

    def __next__(self):
      if self.count == 5:
        raise UserError("cannot decode image 41")
      self.count += 1
      return {"image": np.full((8, 4, 4, 1), self.count, np.uint8)}

    def get_state(self):
      return {"next_index": 8 * self.count}

  inputs = loop.DevicePrefetch(Batches(), d_steps=2, mesh=sharding.make_mesh())
  try:
    assert inputs.state == {"next_index": 0}
    for step in (1, 2):
      images = next(inputs)
      assert images.shape == (2, 8, 4, 4, 1) and images.dtype == np.uint8
      assert isinstance(images, jax.Array) and len(images.sharding.device_set) == jax.device_count()
      np.testing.assert_array_equal(np.asarray(images)[:, 0, 0, 0, 0], [2 * step - 1, 2 * step])
      assert inputs.state == {"next_index": 16 * step}
    with pytest.raises(UserError, match="image 41"):
      next(inputs)
  finally:
    inputs.close()
