"""The FID Inception-v3 in Flax; its weights read from pytorch-fid's file without torch (docs/design.md#evaluation).

The network is the TF-slim Inception-v3 graph of 2015-12-05 (`inception-2015-12-05.tgz`) that the
reference FID (TTUR) and Inception-score (improved-gan) code use, in the form pytorch-fid ports
it: torchvision's `Inception3` with its `FIDInceptionA/C/E_1/E_2` blocks (average pools that do
not count the padding, a max pool in the last block), 1008 classes and no auxiliary head.

  net = inception.load("pt_inception-2015-12-05-6726825d.pth")   # or an .npz, see load_weights
  out = net.apply(images)        # [N, H, W, 1 or 3] in [-1, 1], any H, W
  out["pool"]                    # [N, 2048] pool3 features (FID)
  out["probs"]                   # [N, 1008] softmax of pool3 @ fc.weight^T (Inception score)

Inputs: images in [-1, 1] (pytorch-fid's `2 * x - 1` of [0, 1] inputs), resized to 299x299
bilinearly with half-pixel centres and no antialiasing (`F.interpolate(..., mode='bilinear',
align_corners=False)`), grayscale repeated to 3 channels. Batch norm runs in inference mode with
eps 1e-3, as in the FID weights.

Inception score: the reference code (improved-gan's `inception_score.py`, followed by
torch-fidelity's `logits_unbiased`) takes the softmax over all 1008 outputs of pool3 times the
final layer's weights *without its bias*; `probs` is exactly that. `logits` (with the bias) is
returned too. Classes 1000-1007 are unused by the 2015 graph and get near-zero probability.

Weights: `load_weights` reads pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` with a small
restricted unpickler (no torch, no arbitrary code: only tensors, storages and OrderedDict are
accepted), in both torch.save formats (the zip archive of torch >= 1.6 and the older single
stream), or an .npz holding the same PyTorch names (`Conv2d_1a_3x3.conv.weight`, ...,
`fc.weight`, `fc.bias`). Convert with torch, where available:
  np.savez("fid_inception.npz", **{k: v.numpy() for k, v in torch.load(PTH).items()})
Nothing is ever downloaded.
"""

import collections
import hashlib
import io
import logging
import os
import pickle
import re
import struct
import tarfile
import zipfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigbigan_jax.errors import UserError

INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL_DIM = 2048
BN_EPS = 1e-3
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


# ---------------------------------------------------------------------------------------------
# The network. Submodule names are the PyTorch attribute names, so `Mixed_5b.branch1x1.conv.weight`
# is params['Mixed_5b']['branch1x1']['conv']['kernel'] (transposed OIHW -> HWIO).

def _pair(value):
  return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BN (inference, eps 1e-3) -> ReLU, with PyTorch's symmetric padding."""
  features: int
  kernel_size: Any = 1
  strides: int = 1
  padding: Any = 0
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), (self.strides, self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  # TensorFlow's average pool (and FIDInceptionA/C/E_1) does not count the zero padding.
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, strides=1):
  padding = ((1, 1), (1, 1)) if strides == 1 else "VALID"
  return nn.max_pool(x, (3, 3), (strides, strides), padding=padding)


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d (FIDInceptionA): 64 + 64 + 96 + pool_features channels."""
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b1 = conv(64, 1, name="branch1x1")(x)
    b5 = conv(48, 1, name="branch5x5_1")(x)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = conv(64, 1, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 384 + 96 + in channels, stride 2."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b3 = conv(384, 3, strides=2, name="branch3x3")(x)
    bd = conv(64, 1, name="branch3x3dbl_1")(x)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, strides=2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (FIDInceptionC): 4 x 192 channels, factorised 7x7 convolutions."""
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    c = self.channels_7x7
    b1 = conv(192, 1, name="branch1x1")(x)
    b7 = conv(c, 1, name="branch7x7_1")(x)
    b7 = conv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c, 1, name="branch7x7dbl_1")(x)
    bd = conv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 320 + 192 + in channels, stride 2."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b3 = conv(192, 1, name="branch3x3_1")(x)
    b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, 1, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, strides=2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1, average pool) and Mixed_7c (FIDInceptionE_2, max pool): 2048."""
  pool: str = "avg"
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b1 = conv(320, 1, name="branch1x1")(x)
    b3 = conv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, 1, name="branch3x3dbl_1")(x)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
    bp = conv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(images, size: int = INPUT_SIZE):
  """[N, H, W, C] -> [N, size, size, C] like PyTorch's bilinear `align_corners=False`."""
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  return jax.image.resize(images, (n, size, size, c), "bilinear", antialias=False)


class FIDInceptionV3(nn.Module):
  """The FID Inception-v3: images in [-1, 1] -> {'pool': [N, 2048], 'logits': [N, 1008],
  'logits_unbiased': [N, 1008]}.

  `resize=False` skips the resize to 299x299 (any size >= 75 works: the tests use it).
  `precision`: of the convolutions and the final layer (HIGHEST: full float32 on GPU/TPU too).
  """
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images, resize: bool = True):
    x = jnp.asarray(images, jnp.float32)
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    if x.shape[-1] != 3:
      raise ValueError(f"expected [N, H, W, 1 or 3] images, got shape {x.shape}")
    if resize:
      x = resize_bilinear(x)
    p = dict(precision=self.precision)
    x = BasicConv2d(32, 3, strides=2, name="Conv2d_1a_3x3", **p)(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3", **p)(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3", **p)(x)
    x = nn.max_pool(x, (3, 3), (2, 2))
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1", **p)(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3", **p)(x)
    x = nn.max_pool(x, (3, 3), (2, 2))
    x = InceptionA(32, name="Mixed_5b", **p)(x)
    x = InceptionA(64, name="Mixed_5c", **p)(x)
    x = InceptionA(64, name="Mixed_5d", **p)(x)
    x = InceptionB(name="Mixed_6a", **p)(x)
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                           ("Mixed_6e", 192)):
      x = InceptionC(channels, name=name, **p)(x)
    x = InceptionD(name="Mixed_7a", **p)(x)
    x = InceptionE("avg", name="Mixed_7b", **p)(x)
    x = InceptionE("max", name="Mixed_7c", **p)(x)
    pool = jnp.mean(x, axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, precision=self.precision, name="fc")
    logits = fc(pool)
    unbiased = jnp.dot(pool, fc.variables["params"]["kernel"], precision=self.precision)
    return {"pool": pool, "logits": logits, "logits_unbiased": unbiased}


def abstract_variables(module=None) -> dict:
  """{'params': ..., 'batch_stats': ...} as ShapeDtypeStructs (nothing is computed)."""
  module = module or FIDInceptionV3()
  return jax.eval_shape(lambda: module.init(jax.random.key(0),
                                            jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))


# ---------------------------------------------------------------------------------------------
# Reading torch.save files without torch.

_TORCH_MAGIC = 0x1950a86a20f9469cfc6c  # the legacy (pre-zip) format's first pickle
_TORCH_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _with_byteorder(dtype, order: str) -> np.dtype:
  """`dtype` read as `order` ('<', '>' or '=') where byte order applies (not bool, bfloat16)."""
  dtype = np.dtype(dtype)
  return dtype.newbyteorder(order) if dtype.kind in "fiu" and dtype.itemsize > 1 else dtype


class _StorageType:
  def __init__(self, name):
    self.name, self.dtype = name, _with_byteorder(_STORAGE_DTYPES[name], "<")


class _StorageRef:
  """One storage of the file: dtype, key (its record), size and an optional legacy view."""

  def __init__(self, dtype, key, numel, view=None):
    self.dtype, self.key, self.numel, self.view = dtype, key, numel, view


class _TensorRef:
  """A tensor to build once the storages are read: (storage, offset, size, stride)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args, **unused_kwargs):
  # torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])
  # and the older _rebuild_tensor(storage, offset, size, stride).
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused_args):
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles torch.save streams into _TensorRefs; refuses every other global."""

  _GLOBALS = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }

  def __init__(self, file, storages):
    super().__init__(file, encoding="utf-8")
    self.storages = storages  # key -> _StorageRef, shared by the streams of one file

  def find_class(self, module, name):
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[module, name]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(
        f"{module}.{name} is not allowed in an Inception weights file (only tensors and dicts)")

  def persistent_load(self, pid):
    typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if typename != "storage" or not isinstance(pid[1], _StorageType):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid[:2]!r}")
    # zip: ('storage', type, key, location, numel); legacy: ... numel, view_metadata)
    storage_type, key, _, numel = pid[1:5]
    view = pid[5] if len(pid) > 5 else None
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _StorageRef(storage_type.dtype, key, int(numel))
    root = self.storages[key]
    if view is None:
      return root
    view_key, offset, view_numel = view  # a legacy view into the root storage
    return _StorageRef(root.dtype, key, int(view_numel), view=(str(view_key), int(offset)))


def _materialise(tensor: _TensorRef, buffers) -> np.ndarray:
  storage = tensor.storage
  flat = buffers[storage.key]
  if storage.view is not None:
    flat = flat[storage.view[1]:storage.view[1] + storage.numel]
  if not tensor.size:
    return np.array(flat[tensor.offset])
  last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
  if min(tensor.size) > 0 and last >= len(flat):
    raise UserError(f"corrupt weights file: a tensor of shape {tensor.size} reaches element "
                    f"{last} of a storage of {len(flat)}")
  strides = tuple(s * flat.itemsize for s in tensor.stride)
  view = np.lib.stride_tricks.as_strided(flat[tensor.offset:], tensor.size, strides)
  return np.array(view, dtype=_with_byteorder(flat.dtype, "="))


def _state_dict(obj, buffers) -> dict:
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise UserError(f"the weights file holds a {type(obj).__name__}, not a state dict")
  return {k: _materialise(v, buffers) for k, v in obj.items() if isinstance(v, _TensorRef)}


def _read_zip(path) -> dict:
  with zipfile.ZipFile(path) as archive:
    pickles = sorted((n for n in archive.namelist() if n.endswith("data.pkl")), key=len)
    if not pickles:
      raise UserError(f"{path} is a zip archive without data.pkl: not a torch.save file")
    prefix = pickles[0][:-len("data.pkl")]
    names = set(archive.namelist())
    byteorder = (archive.read(prefix + "byteorder").decode().strip()
                 if prefix + "byteorder" in names else "little")
    storages = {}
    obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
    buffers = {}
    for key, ref in storages.items():
      record = f"{prefix}data/{key}"
      if record not in names:
        raise UserError(f"{path} lacks the record {record}: the file is incomplete")
      dtype = _with_byteorder(ref.dtype, ">" if byteorder == "big" else "<")
      buffers[key] = np.frombuffer(archive.read(record), dtype)
  return _state_dict(obj, buffers)


def _read_legacy(path) -> dict:
  with open(path, "rb") as f:
    storages = {}
    load = lambda: _RestrictedUnpickler(f, storages).load()
    if load() != _TORCH_MAGIC:
      raise UserError(f"{path} is neither a zip nor a legacy torch.save file (bad magic number)")
    if load() != _TORCH_PROTOCOL:
      raise UserError(f"{path}: unsupported torch.save protocol version")
    sys_info = load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
      raise UserError(f"{path} was saved on a big-endian machine: convert it to .npz")
    obj = load()
    buffers = {}
    for key in load():  # the storage keys, in the order of the raw data that follows
      ref = storages[str(key)]
      header = f.read(8)
      if len(header) != 8:
        raise UserError(f"{path} is truncated (storage {key} missing)")
      (numel,) = struct.unpack("<q", header)
      data = f.read(numel * ref.dtype.itemsize)
      if numel != ref.numel or len(data) != numel * ref.dtype.itemsize:
        raise UserError(f"{path} is truncated or corrupt (storage {key})")
      buffers[str(key)] = np.frombuffer(data, ref.dtype)
  return _state_dict(obj, buffers)


def read_state_dict(path: str) -> dict:
  """{PyTorch name: np.ndarray} from a torch.save file (zip or legacy) or an .npz, without torch."""
  if not os.path.isfile(path):
    raise UserError(f"no Inception weights at {path}: pass --inception_weights=PATH to "
                    f"pytorch-fid's {WEIGHTS_FILE} (or an .npz of it); nothing is downloaded")
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
      if any(n.endswith("data.pkl") for n in names):
        return _read_zip(path)
      if names and all(n.endswith(".npy") for n in names):
        with np.load(path, allow_pickle=False) as data:
          return {k: np.asarray(data[k]) for k in data.files}
      raise UserError(f"{path} is a zip archive but neither a torch.save file nor an .npz")
    if tarfile.is_tarfile(path):
      raise UserError(f"{path} is a torch file of the pre-1.0 tar format: re-save it with a "
                      "newer torch or convert it to .npz")
    return _read_legacy(path)
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
    raise UserError(f"cannot read Inception weights from {path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# PyTorch names -> Flax variables.

def _flax_location(name: str):
  """'Mixed_5b.branch1x1.conv.weight' -> ('params', ('Mixed_5b', 'branch1x1', 'conv', 'kernel'),
  transpose) or None for entries without a Flax counterpart (BN's num_batches_tracked)."""
  *module, leaf = name.split(".")
  if leaf == "num_batches_tracked":
    return None
  last = module[-1] if module else ""
  if last == "conv" and leaf == "weight":
    return "params", (*module, "kernel"), (2, 3, 1, 0)  # OIHW -> HWIO
  if last == "bn":
    return {"weight": ("params", (*module, "scale"), None),
            "bias": ("params", (*module, "bias"), None),
            "running_mean": ("batch_stats", (*module, "mean"), None),
            "running_var": ("batch_stats", (*module, "var"), None)}.get(leaf)
  if module == ["fc"]:
    return {"weight": ("params", ("fc", "kernel"), (1, 0)),
            "bias": ("params", ("fc", "bias"), None)}.get(leaf)
  return None


def _torch_name(collection: str, path) -> str:
  """The inverse of _flax_location: ('batch_stats', (.., 'bn', 'mean')) -> '..bn.running_mean'."""
  *module, leaf = path
  names = {("params", "kernel"): "weight", ("params", "scale"): "weight",
           ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}
  return ".".join([*module, names.get((collection, leaf), leaf)])


def _flat(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def state_dict_to_variables(state_dict: dict) -> dict:
  """PyTorch-named arrays -> {'params', 'batch_stats'} of FIDInceptionV3, checked name by name."""
  expected = {(c,) + path: s.shape for c, tree in abstract_variables().items()
              for path, s in _flat(tree)}
  variables = {"params": {}, "batch_stats": {}}
  unexpected, mismatched, seen = [], [], set()
  for name, value in state_dict.items():
    location = _flax_location(name)
    if location is None:
      if not name.endswith("num_batches_tracked"):
        unexpected.append(name)
      continue
    collection, path, transpose = location
    value = np.asarray(value, np.float32)
    if transpose is not None and value.ndim == len(transpose):
      value = value.transpose(transpose)
    key = (collection,) + path
    if key not in expected:
      unexpected.append(name)
      continue
    if value.shape != expected[key]:
      mismatched.append(f"{name} {value.shape} (expected {expected[key]})")
      continue
    seen.add(key)
    node = variables[collection]
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.ascontiguousarray(value)
  missing = sorted(_torch_name(k[0], k[1:]) for k in expected if k not in seen)
  if unexpected or mismatched or missing:
    def show(items):
      return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
    problems = [f"{label}: {show(items)}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
                if items]
    raise UserError("these are not the FID Inception-v3 weights (pytorch-fid's "
                    f"{WEIGHTS_FILE}): " + "; ".join(problems))
  return variables


def _check_hash_in_name(path: str):
  """torch.hub names files NAME-<sha256 prefix>.ext; warn when the content does not match."""
  match = re.search(r"-([a-f0-9]{8,})\.[a-z]+$", os.path.basename(path))
  if not match:
    return
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  if not digest.hexdigest().startswith(match.group(1)):
    logging.warning("%s: its SHA-256 does not start with %s as its name says; FID/IS may not be "
                    "comparable with published numbers", path, match.group(1))


def load_weights(path: str) -> dict:
  """The Flax variables {'params', 'batch_stats'} (NumPy) from pytorch-fid's .pth or an .npz."""
  variables = state_dict_to_variables(read_state_dict(path))
  if path.endswith(".pth"):
    _check_hash_in_name(path)
  return variables


def fingerprint(variables) -> str:
  """A short hash of the weights (the FID reference cache is tied to it)."""
  digest = hashlib.sha256()
  for path, value in sorted(_flat(variables)):
    digest.update("/".join(path).encode())
    digest.update(np.ascontiguousarray(value, np.float32).tobytes())
  return digest.hexdigest()[:16]


class Inception:
  """The FID Inception-v3 with its weights.

  `features(variables, images)` is a pure function (jit it, or call it inside another jitted
  function, with `variables` placed where it runs) returning {'pool': [N, 2048] pool3 features,
  'probs': [N, 1008] the Inception-score softmax}. `apply(images)` runs it jitted on host arrays
  and also returns the module's 'logits' and 'logits_unbiased'.
  """

  def __init__(self, variables, module=None):
    self.module = module or FIDInceptionV3()
    self.variables = variables
    self.fingerprint = fingerprint(variables)
    self._apply = jax.jit(lambda v, x: self.features(v, x, everything=True))

  def features(self, variables, images, everything: bool = False) -> dict:
    out = self.module.apply(variables, images)
    probs = jax.nn.softmax(out["logits_unbiased"], axis=-1)
    return {**out, "probs": probs} if everything else {"pool": out["pool"], "probs": probs}

  def apply(self, images) -> dict:
    return jax.tree.map(np.asarray, self._apply(self.variables, jnp.asarray(images)))


def load(path: str) -> Inception:
  """`Inception` with the weights at `path` (pytorch-fid's .pth, or an .npz of the same names)."""
  return Inception(load_weights(path))
