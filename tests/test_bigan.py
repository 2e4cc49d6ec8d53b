"""BiGAN (2017) on permutation-invariant MNIST: the BiGAN row and its baselines (configs/bigan_mnist.py)."""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbigan_jax import evaluators
from bigbigan_jax import inference
from bigbigan_jax import optimizers as optimizers_lib
from bigbigan_jax import sharding
from bigbigan_jax import trainers
from bigbigan_jax import validation
from bigbigan_jax.config_lib import load_sibling_config
from bigbigan_jax.errors import UserError
from bigbigan_jax.trainers import common
from cli_helpers import REPO, env_for

bigan_mnist = load_sibling_config(os.path.join(REPO, "configs", "bigan_mnist.py"), "bigan_mnist")


def _steps(config, num_steps):
  """Runs `num_steps` training steps on random digits; returns the states before and after."""
  mesh, networks, optimizers, step_fn = trainers.setup(config)
  state = common.fresh_state(networks, optimizers, config, mesh)
  first = jax.tree.map(np.asarray, state)
  rng = np.random.default_rng(0)
  history = []
  for _ in range(num_steps):
    images = rng.uniform(-1, 1, (config.optim.d_steps, config.batch_size, 28, 28, 1))
    state, metrics = step_fn(state, sharding.global_images(list(images.astype(np.float32)), mesh))
    history.append(jax.tree.map(np.asarray, metrics))
  return first, jax.tree.map(np.asarray, state), history, networks


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _tiny(variant, **fields):
  config = bigan_mnist.get_config(f"variant={variant},runlocal")
  for key, value in fields.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_the_paper_networks_and_objective():
  config = bigan_mnist.get_config()
  assert (config.model.x_dim, config.model.z_dim, config.model.hidden) == (784, 50, 1024)
  assert (config.model.z_dist, config.loss.form, config.batch_size) == ("uniform", "bce", 128)
  assert (config.optim.g_lr, config.optim.b1, config.optim.weight_decay) == (2e-4, 0.5, 2.5e-5)
  mesh, networks, _, _ = trainers.setup(config)
  del mesh
  assert networks.discriminator.use_z  # the joint D(x, z)
  assert not trainers.setup(bigan_mnist.get_config("variant=latent_regressor"))[1].discriminator.use_z


def test_schedule_is_constant_then_decays_to_one_percent():
  config = bigan_mnist.get_config()
  lr = optimizers_lib.learning_rate(config, 2e-4)
  total, start = config.total_steps, int(config.optim.decay_start * config.total_steps)
  np.testing.assert_allclose([lr(0), lr(start)], [2e-4, 2e-4], rtol=1e-6)
  np.testing.assert_allclose(lr(total), 2e-6, rtol=1e-4)
  assert 2e-6 < lr((start + total) // 2) < 2e-4


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bigan", "d_features", "joint_latent_regressor"])
def test_adversarial_rows_train_the_right_networks(variant):
  config = _tiny(variant)
  first, last, history, _ = _steps(config, 2)
  assert all(bool(m["all_finite"]) for m in history)
  assert _changed(first["params"]["discriminator"], last["params"]["discriminator"])
  assert _changed(first["params"]["generator"], last["params"]["generator"])
  if variant == "d_features":
    assert "encoder" not in last["params"]
  else:
    assert _changed(first["params"]["encoder"], last["params"]["encoder"])
  if variant == "joint_latent_regressor":
    assert {"d_loss", "eg_loss", "e_loss_latent"} <= set(history[-1])


@pytest.mark.slow
def test_latent_regressor_fits_e_only_after_the_gan_phase():
  config = _tiny("latent_regressor", **{"baseline.gan_steps": 2, "total_steps": 4})
  mesh, networks, optimizers, step_fn = trainers.setup(config)
  state = common.fresh_state(networks, optimizers, config, mesh)
  snapshots = [jax.tree.map(np.asarray, state["params"])]
  images = np.random.default_rng(0).uniform(-1, 1, (1, config.batch_size, 28, 28, 1))
  for _ in range(4):
    state, _ = step_fn(state, sharding.global_images(list(images.astype(np.float32)), mesh))
    snapshots.append(jax.tree.map(np.asarray, state["params"]))
  # Steps 1-2: GAN only. Steps 3-4: E only, with G and D frozen.
  for before, after in zip(snapshots[:2], snapshots[1:3]):
    assert _changed(before["generator"], after["generator"])
    assert not _changed(before["encoder"], after["encoder"])
  for before, after in zip(snapshots[2:4], snapshots[3:5]):
    assert not _changed(before["generator"], after["generator"])
    assert not _changed(before["discriminator"], after["discriminator"])
    assert _changed(before["encoder"], after["encoder"])


def test_autoencoder_lowers_its_reconstruction_error_and_leaves_d_alone():
  config = _tiny("autoencoder_l2", **{"optim.g_lr": 1e-3})
  first, last, history, _ = _steps(config, 6)
  losses = [float(m["recon_loss"]) for m in history]
  assert losses[-1] < losses[0]
  assert not _changed(first["params"]["discriminator"], last["params"]["discriminator"])


def test_d_features_are_the_encoding_of_the_gan_baseline():
  config = _tiny("d_features")
  _, last, _, networks = _steps(config, 1)
  state = jax.tree.map(jnp.asarray, last)
  model = inference.BigBiGAN(config, networks, sharding.local_mesh(), batch_size=4).with_state(state)
  assert model.has_features and not model.has_encoder
  out = model.encode(np.zeros((3, 28, 28, 1), np.float32))
  assert set(out) == {"avepool_feat", "bn_crelu_feat"}
  assert out["avepool_feat"].shape == (3, config.model.hidden)
  with pytest.raises(UserError, match="no encoder"):
    model.reconstruct(np.zeros((3, 28, 28, 1), np.float32))


def test_bad_method_and_mismatched_encoder_are_one_line_errors():
  config = _tiny("bigan", method="vae")
  with pytest.raises(UserError, match="config.method='vae'"):
    validation.validate(config)
  config = _tiny("d_features", **{"model.encoder.enabled": True})
  with pytest.raises(UserError, match="encoder.enabled=False"):
    validation.validate(config)


@pytest.mark.slow
def test_bigan_run_reports_the_papers_1nn_next_to_raw_pixels(tmp_path, mnist_data_dir):
  workdir = str(tmp_path)
  command = [sys.executable, "-m", "bigbigan_jax.main",
             f"--config={os.path.join(REPO, 'configs', 'bigan_mnist.py')}:runlocal",
             f"--workdir={workdir}", f"--config.data.data_dir={mnist_data_dir}",
             "--config.eval_every=3", "--config.evals.pairing.every=3"]
  result = subprocess.run(command, env=env_for(1), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "eval.jsonl")) as f:
    record = json.loads(f.readlines()[-1])
  assert record["step"] == 6
  # `pairing` works on the BiGAN D's single (joint) score too.
  for key in ("pairing_encoder_test", "pairing_generator"):
    assert 0.0 <= record[key] <= 1.0, (key, record)
  # E's BN statistics re-estimated first on the 3,500 training digits: 7 full batches of 500.
  assert record["encoder_stats_batches"] == 7
  assert record["weights"] == "ema+encoder_standing_stats"
  for key in ("nn1_test", "nn1_z_test", "nn1_pixels_test"):
    assert 0.1 < record[key] <= 1.0, (key, record)
  assert os.path.exists(os.path.join(workdir, "images", "samples_0000006.png"))
  # WORKDIR/best/ holds the checkpoint with the highest eval.best_metric, as best.json says.
  with open(os.path.join(workdir, "eval.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [3, 6]
  # The config's selection metric: 1-NN of the held-out train_val digits (the test split stays
  # unseen until the selected checkpoint is reported).
  top = max(records, key=lambda r: (r["nn1_train_val"], -r["step"]))  # ties keep the earlier one
  with open(os.path.join(workdir, "best", "best.json")) as f:
    assert json.load(f) == {"step": top["step"], "metric": "nn1_train_val",
                            "value": top["nn1_train_val"]}
  assert inference.load(os.path.join(workdir, "best")).step == top["step"]


def test_the_bigan_code_layers_have_no_bias_and_small_gaussian_weights():
  config = bigan_mnist.get_config()
  assert (config.model.use_bias, config.model.init_stddev) == (False, 0.02)
  _, networks, _, _ = trainers.setup(config)
  variables = jax.jit(lambda: networks.discriminator.init(
      jax.random.key(0), jnp.zeros((2, 784)), jnp.zeros((2, 50)), train=True))()
  leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
  assert not [p for p, _ in leaves if "bias" in jax.tree_util.keystr(p)]
  kernel = variables["params"]["Dense_0"]["kernel"]
  assert kernel.shape == (784, 1024)
  np.testing.assert_allclose(np.std(kernel), 0.02, rtol=0.02)


def test_separate_d_batches_normalise_each_pair_type_on_its_own():
  """With model.separate_d_batches, D's batch norm sees the encoder pairs alone: their scores
  equal D applied to them without the generator pairs, and differ from one joint call's."""
  rng = np.random.default_rng(0)
  n = 8
  x, x_fake = (jnp.asarray(rng.uniform(0, 1, (n, 784)), jnp.float32) for _ in range(2))
  z_hat, z = (jnp.asarray(rng.uniform(-1, 1, (n, 50)), jnp.float32) for _ in range(2))
  scores = {}
  for separate in (True, False):
    config = _tiny("bigan", **{"model.separate_d_batches": separate})
    mesh, networks, optimizers, _ = trainers.setup(config)
    state = common.fresh_state(networks, optimizers, config, mesh)
    step = trainers.get_trainer(config.trainer).make_step(networks, optimizers, config, mesh)
    params, stats = state["params"]["discriminator"], state["stats"]["discriminator"]
    enc, gen, _ = step.discriminate(params, stats, x, z_hat, x_fake, z)
    scores[separate] = np.asarray(enc["s_xz"])
    alone, _ = networks.discriminator.apply({"params": params, **stats}, x, z_hat, train=True,
                                            mutable=list(stats))
  np.testing.assert_allclose(scores[True], np.asarray(alone["s_xz"]), rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(scores[True] - scores[False])) > 1e-3


@pytest.mark.slow
def test_evaluator_reestimates_the_encoder_bn_statistics_on_full_train_batches(mnist_data_dir):
  config = _tiny("bigan", **{"data.data_dir": mnist_data_dir})
  _, last, _, networks = _steps(config, 2)
  model = inference.BigBiGAN(config, networks, sharding.local_mesh(), batch_size=1000).with_state(
      jax.tree.map(jnp.asarray, last))
  standing, used = evaluators.common.Data(config.data).with_encoder_standing_stats(model, 5)
  # 3,500 training digits: three full batches of 1,000; the padded fourth never counts.
  assert used == 3
  batches = itertools.islice(evaluators.common.split_batches(model, config.data, "train"), 3)
  expected = model.with_encoder_standing_stats([b["image"] for b in batches])
  got, want = (m.variables["encoder"]["batch_stats"] for m in (standing, expected))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  assert _changed(got, model.variables["encoder"]["batch_stats"])  # not the running statistics
