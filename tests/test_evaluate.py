"""Evaluation: metric math against references, the hub-like API, and the extract/evaluate CLIs.

  - Fréchet distance == the scipy.linalg.sqrtm formula; Inception score on known outputs;
  - the linear probe recovers a linear labelling and returns its classifier (with which
    `recon_labels` labels reconstructions); k-NN on a hand-checkable case;
  - `load()` of a 2-step run reproduces `encoder.apply` on the restored EMA variables;
  - `extract` writes the documented arrays; `evaluate` prints and logs the documented JSON;
  - GAN mode (no encoder) evaluates without encoder metrics; unknown metric names are errors;
  - `pairing` tells a D that knows E's pairing from one that knows G's; the metrics without
    probes (recon, pairing) need no train features; recon_labels' classifier is trained once.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from bigbigan_jax import checkpoint
from bigbigan_jax import config_lib
from bigbigan_jax import evaluators
from bigbigan_jax import feature_store
from bigbigan_jax import inference
from bigbigan_jax import metrics
from bigbigan_jax import models
from bigbigan_jax import optimizers as optimizers_lib
from bigbigan_jax import sharding
from bigbigan_jax.errors import UserError
from bigbigan_jax.evaluators import pairing
from bigbigan_jax.evaluators import recon_labels
from bigbigan_jax.trainers import common
from cli_helpers import REPO, env_for, free_port, run_main


# ---------------------------------------------------------------------------------------------
# Metric math.

def _reference_frechet(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)


def test_frechet_distance_matches_scipy_reference():
  rng = np.random.default_rng(0)
  for dim in (2, 16, 64):
    a = rng.normal(size=(500, dim))
    b = rng.normal(size=(500, dim)) @ rng.normal(size=(dim, dim)) * 0.5 + 1.0
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2),
                               _reference_frechet(mu1, s1, mu2, s2), rtol=1e-6)
  assert abs(metrics.frechet_distance(mu1, s1, mu1, s1)) < 1e-6
  # Two isotropic Gaussians: |mu1 - mu2|^2 + d (sigma1 - sigma2)^2.
  eye = np.eye(8)
  np.testing.assert_allclose(metrics.frechet_distance(np.zeros(8), 4 * eye, np.ones(8), eye),
                             8 + 8 * (2 - 1) ** 2)


def test_inception_score_known_cases():
  mean, std = metrics.inception_score(np.full((1000, 10), 0.1), splits=10)
  np.testing.assert_allclose([mean, std], [1.0, 0.0], atol=1e-9)
  one_hot = np.eye(7)[np.arange(700) % 7]  # confident and diverse: IS = number of classes
  np.testing.assert_allclose(metrics.inception_score(one_hot, splits=5)[0], 7.0, rtol=1e-9)
  same_class = np.eye(7)[np.zeros(70, int)]  # confident but one class: IS = 1
  np.testing.assert_allclose(metrics.inception_score(same_class, splits=2)[0], 1.0, rtol=1e-9)


def test_linear_probe_recovers_a_linear_labelling():
  rng = np.random.default_rng(0)
  scale = rng.uniform(0.1, 10, size=16)  # badly scaled features: the probe standardises them
  x = rng.normal(size=(3000, 16)) * scale
  y = np.argmax((x / scale) @ rng.normal(size=(16, 4)), axis=1)
  result = metrics.linear_probe(x[:2000], y[:2000], x[2000:2500], y[2000:2500],
                                x[2500:], y[2500:], num_classes=4)
  assert result["val"] > 0.95 and result["test"] > 0.95, result
  assert result["l2"] in metrics.L2_GRID
  # Labels independent of the features: chance level.
  shuffled = metrics.linear_probe(x[:2000], rng.permutation(y[:2000]), None, None, x[2500:],
                                  y[2500:], num_classes=4)
  assert shuffled["test"] < 0.45 and "val" not in shuffled


def test_linear_probe_returns_the_chosen_classifier():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(20, 3))
  x = rng.normal(size=(600, 20)) * rng.uniform(0.01, 1.0, size=20)  # unequal feature scales
  y = np.argmax(x @ w, -1)
  for standardized in (True, False):
    out = metrics.linear_probe(x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:],
                               num_classes=3, standardized=standardized, return_params=True)
    # The classifier sees inputs standardised with the train statistics, or as given.
    test_x = metrics.standardize(x[:400], x[500:])[1] if standardized else x[500:]
    assert metrics.accuracy(out["params"], test_x, y[500:]) == out["test"] > 0.8, out
    assert metrics.accuracy(out["params"], test_x, rng.permutation(y[500:])) < 0.6, out


def test_knn_euclidean_and_cosine():
  bank = np.array([[1.0, 0.0], [10.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 4.0]])
  labels = np.array([0, 0, 1, 1, 1])
  query = np.array([[6.0, 1.0]])  # nearest by distance: (10, 0); by angle: (1, 0) and (10, 0)
  for metric in ("euclidean", "cosine"):
    assert metrics.knn_accuracy(bank, labels, query, [0], ks=(1,), metric=metric)[1] == 1.0
  near_y = metrics.knn_accuracy(bank, labels, [[0.5, 2.0]], [1], ks=(1,), metric="euclidean")
  assert near_y[1] == 1.0
  # k=5 majority is class 1 (3 votes to 2) whatever the metric.
  assert metrics.knn_accuracy(bank, labels, query, [1], ks=(5,), metric="cosine")[5] == 1.0
  # Separated clusters: every query's neighbours share its class.
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(3, 8)) * 5
  y = rng.integers(0, 3, size=600)
  x = centres[y] + rng.normal(size=(600, 8))
  acc = metrics.knn_accuracy(x[:400], y[:400], x[400:], y[400:], ks=(1, 5), chunk=64)
  assert acc[1] > 0.95 and acc[5] > 0.95, acc


def test_metric_names_are_checked():  # fid/is themselves: tests/test_fid.py
  mnist = config_lib.load_sibling_config(os.path.join(REPO, "configs", "x.py"), "mnist")
  config = mnist.get_config("runlocal")
  assert evaluators.parse_names("linear_probe,fid", config) == ("linear_probe", "fid")
  with pytest.raises(UserError, match="unknown metric"):
    evaluators.parse_names("knn,accuracy", config)


# ---------------------------------------------------------------------------------------------
# A real 2-step run, then the API and the command-line tools on it.

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_data_dir):
  workdir = str(tmp_path_factory.mktemp("eval_run"))
  run_main(workdir, mnist_data_dir, "--config.total_steps=2")
  return workdir


@pytest.mark.slow
def test_load_reproduces_encoder_apply_on_ema_variables(run_dir):
  model = inference.load(os.path.join(run_dir, "checkpoints"), batch_size=4)
  assert model.step == 2 and model.z_dim == model.config.model.z_dim
  # The reference: restore the state by hand and apply the encoder to its EMA variables.
  ckpt = checkpoint.Checkpointer(run_dir, read_only=True)
  config = inference.load_config(run_dir)
  networks = models.build(config)
  mesh = sharding.local_mesh()
  abstract = checkpoint.with_shardings(
      common.abstract_state(networks, optimizers_lib.create_optimizers(config), config),
      sharding.replicated(mesh))
  state, _, _ = ckpt.restore(abstract)
  ckpt.close()
  variables = {"params": state["ema"]["encoder"], **state["stats"]["encoder"]}

  rng = np.random.default_rng(0)
  x = model.preprocess(rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8))  # 10: 3 chunks
  assert x.shape == (10, 32, 32, 1) and x.min() >= -1 and x.max() <= 1
  out = model.encode(x)
  reference = networks.encoder.apply(variables, jnp.asarray(x), train=False)
  assert set(out) == set(inference.ENCODER_OUTPUTS)
  width = out["avepool_feat"].shape[1]
  assert out["bn_crelu_feat"].shape == (10, 2 * width)
  for key in ("avepool_feat", "bn_crelu_feat", "z_mean", "z_stdev"):
    assert out[key].shape[0] == 10
    np.testing.assert_allclose(out[key], reference[key], rtol=1e-4, atol=1e-5, err_msg=key)
  # The stochastic encoder samples z ~ N(z_mean, z_stdev), deterministically per seed.
  eps = (out["z_sample"] - out["z_mean"]) / out["z_stdev"]
  assert 0.8 < eps.std() < 1.2 and abs(eps.mean()) < 0.1
  np.testing.assert_array_equal(model.encode(x)["z_sample"], out["z_sample"])

  z = model.sample_z(5)
  images = model.generate(z)
  assert images.shape == (5, 32, 32, 1) and np.abs(images).max() <= 1.0
  assert model.reconstruct(x).shape == (10, 32, 32, 1)
  scores = model.discriminate(images, z)
  assert set(scores) == {"score_x", "score_z", "score_xz"}
  assert all(v.shape == (5,) for v in scores.values())
  # RGB input of another size and aspect is converted to the model's one channel.
  rgb = model.preprocess([rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)])
  assert rgb.shape == (1, 32, 32, 1)
  with pytest.raises(UserError, match="preprocess"):
    model.encode(np.zeros((2, 28, 28, 1), np.float32))

  # E's standing statistics from one batch: E in inference mode = E in training mode on it.
  batch = x[:4]
  standing = model.with_encoder_standing_stats([batch])
  trained_mode, _ = networks.encoder.apply(variables, jnp.asarray(batch), train=True,
                                           mutable=["batch_stats"])
  np.testing.assert_allclose(standing.encode(batch)["avepool_feat"],
                             trained_mode["avepool_feat"], rtol=1e-3, atol=1e-4)
  assert not np.allclose(model.encode(batch)["avepool_feat"], trained_mode["avepool_feat"],
                         atol=1e-3)  # the running statistics of training
  assert standing.variables["encoder"]["params"] is model.variables["encoder"]["params"]


def _run_cli(module, *flags):
  result = subprocess.run([sys.executable, "-m", module, *flags], env=env_for(1), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_extract_cli_writes_shards_and_resumes_a_killed_extraction(run_dir, tmp_path):
  flags = (f"--workdir={run_dir}", "--split=train_val,test", "--batch_size=64",
           "--shard_examples=128")
  _run_cli("bigbigan_jax.extract", *flags, f"--out={tmp_path / 'a'}")
  features = feature_store.load(tmp_path / "a" / "train_val")
  config = inference.load_config(run_dir)
  n = config.data.train_val_size  # 500: not a multiple of 64, so the padding was dropped
  assert set(features) == {"avepool_feat", "bn_crelu_feat", "z_mean", "labels"}
  width = features["avepool_feat"].shape[1]
  assert features["avepool_feat"].shape == (n, width)
  assert features["bn_crelu_feat"].shape == (n, 2 * width)
  assert features["z_mean"].shape == (n, config.model.z_dim)
  assert features["labels"].shape == (n,) and set(np.unique(features["labels"])) == set(range(10))
  assert len(feature_store.read_index(tmp_path / "a" / "test")["shards"]) == 8  # 1000 / 128
  # A kill leaves some shards and no index; the rerun writes only the missing ones.
  test_dir = tmp_path / "a" / "test"
  (test_dir / feature_store.INDEX).unlink()
  kept = {name: (test_dir / name).stat().st_mtime_ns for name in ("shard-00000.npz",
                                                                   "shard-00005.npz")}
  for name in os.listdir(test_dir):
    if name.startswith("shard-") and name not in kept:
      os.remove(test_dir / name)
  result = _run_cli("bigbigan_jax.extract", *flags[:1], "--split=test", *flags[2:],
                    f"--out={tmp_path / 'a'}")
  assert "Resuming: 2 of 8 shards" in result.stdout
  assert all((test_dir / name).stat().st_mtime_ns == t for name, t in kept.items())
  _run_cli("bigbigan_jax.extract", *flags[:1], "--split=test", *flags[2:],
           f"--out={tmp_path / 'b'}")
  resumed, straight = (feature_store.load(tmp_path / d / "test") for d in "ab")
  for key in straight:
    np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
  # Other weights into the same directory: one line, nothing written.
  result = subprocess.run([sys.executable, "-m", "bigbigan_jax.extract", *flags[:1],
                           "--split=test", *flags[2:], "--noema", f"--out={tmp_path / 'b'}"],
                          env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2 and result.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'b' / 'test'} holds features with weights='ema', not 'raw': pass a "
      "new --out, or delete it to start over"]


@pytest.mark.slow
@pytest.mark.alone
def test_extract_on_2_processes_of_4_devices_equals_1_process(run_dir, tmp_path):
  flags = [sys.executable, "-m", "bigbigan_jax.extract", f"--workdir={run_dir}", "--split=test",
           "--batch_size=64", "--shard_examples=128"]
  _run_cli(*flags[2:], f"--out={tmp_path / 'one'}")
  port = free_port()
  procs = [subprocess.Popen(flags + [f"--out={tmp_path / 'two'}",
                                     f"--coordinator_address=127.0.0.1:{port}",
                                     "--num_processes=2", f"--process_id={i}"],
                            env=env_for(4), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  one, two = (feature_store.load(tmp_path / d / "test") for d in ("one", "two"))
  for key in one:
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-5, err_msg=key)
  np.testing.assert_array_equal(two["labels"], one["labels"])


@pytest.mark.slow
def test_probe_cli_on_extracted_shards_matches_evaluate(run_dir, tmp_path):
  _run_cli("bigbigan_jax.extract", f"--workdir={run_dir}", "--split=train,train_val,test",
           f"--out={tmp_path}")
  result = _run_cli("bigbigan_jax.probe", f"--features={tmp_path}")
  probed = json.loads(result.stdout.strip().splitlines()[-1])
  evaluated = json.loads(_run_cli("bigbigan_jax.evaluate", f"--workdir={run_dir}",
                                  "--metrics=linear_probe,knn", "--noencoder_standing_stats"
                                  ).stdout.strip().splitlines()[-1])
  for key in ("nn1_test", "knn5_cosine_test", "nn1_train_val"):
    assert probed[key] == evaluated[key], key
  for key in ("linear_probe_avepool_test", "linear_probe_bn_crelu_test"):
    assert abs(probed[key] - evaluated[key]) < 1e-6, key
  minibatch = json.loads(_run_cli("bigbigan_jax.probe", f"--features={tmp_path}",
                                  "--method=minibatch", "--metrics=linear_probe"
                                  ).stdout.strip().splitlines()[-1])
  # Minibatch SGD against the exact solver, on the weak features of 2 steps: within 20 of the
  # 1,000 test digits.
  for key in ("linear_probe_avepool_test", "linear_probe_bn_crelu_test"):
    assert abs(minibatch[key] - evaluated[key]) <= 0.02, (key, minibatch, evaluated)


@pytest.mark.slow
def test_evaluate_cli_prints_and_logs_the_metrics(run_dir):
  result = _run_cli("bigbigan_jax.evaluate", f"--workdir={run_dir}", "--train_examples=1000",
                    "--metrics=linear_probe,knn,recon,recon_labels")
  record = json.loads(result.stdout.strip().splitlines()[-1])
  required = {"step", "linear_probe_avepool_test", "linear_probe_bn_crelu_test", "nn1_test",
              "linear_probe_avepool_train_val", "linear_probe_bn_crelu_train_val",
              "knn1_euclidean_test", "knn5_euclidean_test", "knn1_cosine_test",
              "knn5_cosine_test", "recon_mse_test", "recon_label_agreement_test",
              "recon_classifier_test"}
  assert required <= set(record), required - set(record)
  assert record["step"] == 2 and record["weights"] == "ema"
  # How long each part took (the budget's other half: eval.train_examples, eval.test_examples).
  assert {"seconds/features", "seconds/linear_probe", "seconds/knn", "seconds/recon",
          "seconds/recon_labels", "eval_seconds"} <= set(record)
  for key in required - {"step", "recon_mse_test"}:
    assert 0.0 <= record[key] <= 1.0, (key, record[key])
  # Even 2 steps of training beat chance (0.1) on 10 digits: the features carry the image.
  assert record["nn1_test"] > 0.2 and record["linear_probe_avepool_test"] > 0.2
  assert record["nn1_test"] == record["knn1_euclidean_test"]
  assert 0.0 < record["recon_mse_test"] < 4.0
  # The pixel classifier reads real digits (~0.9); a 2-step G does not draw them.
  assert record["recon_classifier_test"] > 0.8 and record["recon_label_agreement_test"] < 0.5
  with open(os.path.join(run_dir, "eval.jsonl")) as f:
    assert json.loads(f.readlines()[-1]) == record


# ---------------------------------------------------------------------------------------------
# In-process evaluators: GAN mode and the raw-pixel baseline.

def _runlocal_config(variant, data_dir):
  mnist = config_lib.load_sibling_config(os.path.join(REPO, "configs", "x.py"), "mnist")
  config = mnist.get_config(f"variant={variant},runlocal")
  config.data.data_dir = data_dir
  return config


def _evaluate_in_training(config, networks, state, names=None):
  """What the training loop's evaluation returns for `state` (EMA weights)."""
  model = inference.BigBiGAN(config, networks, sharding.make_mesh(),
                             batch_size=config.eval.batch_size)
  return evaluators.from_config(config, names)(model.with_state(state, use_ema=True))


def test_gan_mode_evaluator_skips_encoder_metrics(mnist_data_dir):
  config = _runlocal_config("no_e_gan", mnist_data_dir)
  networks = models.build(config)
  mesh = sharding.make_mesh()
  # Zeros in the state's shapes: cheaper than compiling the initialisers, and enough here.
  abstract = common.abstract_state(networks, optimizers_lib.create_optimizers(config), config)
  state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
  assert "encoder" not in state["params"]
  del mesh
  result = _evaluate_in_training(config, networks, state)
  assert result["step"] == 0 and "no encoder" in result["skipped"]
  assert not any(k.startswith(("linear_probe", "knn", "nn1", "recon")) for k in result)


@pytest.mark.slow
def test_raw_pixel_baseline(mnist_data_dir):
  config = _runlocal_config("base", mnist_data_dir)
  model = inference.BigBiGAN(config, models.build(config), sharding.local_mesh(), batch_size=256)
  suite = evaluators.from_config(config, ("knn", "linear_probe"), train_examples=1000)
  result = suite.raw_pixels(model)
  # Pixel 1-NN on MNIST with 1,000 references is far above chance (~0.85-0.9).
  assert result["nn1_test"] > 0.75, result
  assert result["linear_probe_pixels_test"] > 0.7, result
  assert "linear_probe_pixels_train_val" in result


@pytest.mark.slow
def test_recon_label_classifier_is_trained_once(mnist_data_dir, monkeypatch):
  config = _runlocal_config("base", mnist_data_dir)
  model = inference.BigBiGAN(config, models.build(config), sharding.local_mesh(), batch_size=256)
  data = evaluators.common.Data(config.data, train_examples=1000)
  fits = []
  probe = metrics.linear_probe
  monkeypatch.setattr(metrics, "linear_probe", lambda *a, **k: fits.append(1) or probe(*a, **k))
  test = data.pixels(model, "test", as_generated=True)
  real = test["pixels"]  # flattened; label_agreement flattens its input itself
  first = recon_labels.label_agreement(model, data, real, test["labels"])
  again = recon_labels.label_agreement(model, data, real[::-1], test["labels"][::-1])
  assert len(fits) == 1
  # Real test digits as "reconstructions": agreement is the classifier's own test top-1.
  assert first["recon_label_agreement_test"] == first["recon_classifier_test"] > 0.8, first
  assert again == first


class _PairingStub:
  """A model whose G writes z into the image's first pixels and E reads them back; its D scores
  a pair by how well z matches those pixels (`sign=-1`: "matched is real", the knowledge of E's
  pairing) or by how badly (`sign=+1`: "matched is fake", the knowledge of G's pairing)."""
  z_dim = 4

  def __init__(self, sign):
    self.sign = sign

  def gather(self, rows):
    return np.asarray(rows)

  def encode(self, images, seed=0):
    return {"z_sample": images.reshape(len(images), -1)[:, :self.z_dim]}

  def sample_z(self, n, seed=0):
    return np.random.default_rng(seed + 1).normal(size=(n, self.z_dim))

  def generate(self, z):
    return np.pad(z, ((0, 0), (0, 12))).reshape(len(z), 4, 4, 1)

  def discriminate(self, images, z):
    distance = np.sum((images.reshape(len(images), -1)[:, :self.z_dim] - z) ** 2, axis=1)
    return {"score_x": None, "score_z": None, "score_xz": self.sign * distance}


def test_pairing_metric_tells_which_pairing_d_knows():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(64, 4, 4, 1))
  knows_e = pairing.pairing_metrics(_PairingStub(sign=-1), images)
  knows_g = pairing.pairing_metrics(_PairingStub(sign=+1), images)
  # A few of the 64 shuffled pairs keep their own z (ties count as not telling them apart).
  assert knows_e["pairing_encoder_test"] > 0.9 and knows_e["pairing_generator"] == 0.0, knows_e
  assert knows_g["pairing_encoder_test"] == 0.0 and knows_g["pairing_generator"] > 0.9, knows_g
  blind = _PairingStub(sign=0)
  assert pairing.pairing_metrics(blind, images) == {"pairing_encoder_test": 0.0,
                                              "pairing_generator": 0.0}


@pytest.mark.slow
def test_evaluator_without_probes_needs_no_train_features(mnist_data_dir):
  # `recon` and `pairing` read the test split only: no train features are computed for them.
  config = _runlocal_config("base", mnist_data_dir)
  networks = models.build(config)
  abstract = common.abstract_state(networks, optimizers_lib.create_optimizers(config), config)
  state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
  result = _evaluate_in_training(config, networks, state, ("recon", "pairing"))
  assert {"recon_mse_test", "pairing_encoder_test", "pairing_generator"} <= set(result), result
  assert not any(k.startswith(("linear_probe", "knn", "nn1")) for k in result), result


# ---------------------------------------------------------------------------------------------
# Checkpoints written by version 0.1 (train.py layout, eval.metrics, no config.trainer).

OLD_CHECKPOINTS = os.path.join(REPO, "tests", "data", "old_checkpoints")


@pytest.mark.parametrize("run, trainer, evaluations", [
    ("bigbigan", "bigbigan", ("linear_probe", "knn", "recon", "recon_labels")),
    # This BiGAN run was trained with --config.eval.metrics=knn,pairing.
    ("bigan", "bigan", ("knn", "pairing", "bigan_nn1"))])
def test_checkpoints_of_the_previous_layout_still_load(run, trainer, evaluations):
  model = inference.load(os.path.join(OLD_CHECKPOINTS, run), batch_size=2)
  assert model.config.trainer == trainer
  assert set(evaluators.enabled(model.config)) == set(evaluations)
  x = np.zeros((3, model.image_size, model.image_size, model.image_channels), np.float32)
  features = model.encode(x)
  assert features["avepool_feat"].shape[0] == 3 and np.all(np.isfinite(features["z_mean"]))
  images = model.generate(model.sample_z(3))
  assert images.shape == (3, model.generator_resolution, model.generator_resolution,
                          model.image_channels)
  assert np.all(np.abs(images) <= 1.0)
  # The hub modules' `upsampled` output: twice G's resolution, each pixel 2 x 2.
  upsampled = model.generate(model.sample_z(3), upsampled=True)
  assert upsampled.shape == (3, 2 * images.shape[1], 2 * images.shape[2], images.shape[3])
  np.testing.assert_array_equal(upsampled[:, ::2, 1::2], images)
