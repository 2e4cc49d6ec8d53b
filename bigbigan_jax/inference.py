"""A trained checkpoint as a Python object, mirroring the released BigBiGAN hub modules.

  import bigbigan_jax
  model = bigbigan_jax.load("runs/mnist")                  # newest checkpoint, EMA weights
  x = model.preprocess(uint8_images)                       # any size, gray or RGB -> [-1, 1]
  features = model.encode(x)            # {avepool_feat, bn_crelu_feat, z_mean, z_stdev, z_sample}
  images = model.generate(model.sample_z(16))              # [16, H, W, C] in [-1, 1]
  scores = model.discriminate(images, z)                   # {score_x, score_z, score_xz}

Every method takes and returns host (NumPy) arrays of any batch size N: inputs are cut into
chunks of a fixed `batch_size` (the last one zero-padded) so that each function compiles once.
"""

import copy
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigbigan_jax import checkpoint
from bigbigan_jax import config_lib
from bigbigan_jax import input_pipeline
from bigbigan_jax import models
from bigbigan_jax import paths
from bigbigan_jax import sharding
from bigbigan_jax.errors import UserError

ENCODER_OUTPUTS = ("avepool_feat", "bn_crelu_feat", "z_mean", "z_stdev", "z_sample")


# ---------------------------------------------------------------------------------------------
# Restoring a checkpoint.

def _lists_to_tuples(value):
  """The config is saved as JSON, which turns tuples (e.g. encoder.units) into lists."""
  if isinstance(value, ml_collections.ConfigDict):
    return ml_collections.ConfigDict({k: _lists_to_tuples(v) for k, v in value.items()})
  if isinstance(value, (list, tuple)):
    return tuple(_lists_to_tuples(v) for v in value)
  return value


def workdir_of(path):
  """Accepts a training --workdir or its checkpoints/ directory (local or gs://); returns the
  workdir as an epath.Path."""
  path = paths.path(path)
  if path.name == "checkpoints" and not (path / "checkpoints").is_dir():
    return path.parent
  return path


def restore(path: str, step=None, mesh=None):
  """Restores (config, networks, state, step) of a training run, replicated over `mesh`.

  Args:
    path: a training --workdir or its checkpoints/ directory.
    step: a saved step, or None for the newest readable one.
    mesh: defaults to `sharding.local_mesh()`.
  """
  mesh = mesh or sharding.local_mesh()
  ckpt = checkpoint.Checkpointer(workdir_of(path), read_only=True)
  try:
    steps = ckpt.all_steps()
    if step is not None and step not in steps:
      raise UserError(f"no checkpoint at step {step} in {ckpt.directory} (saved steps: "
                      f"{sorted(steps)}); pass one of them or leave the step out for the newest")
    config = config_lib.upgrade_saved(_lists_to_tuples(ckpt.restore_config(step)))
    networks = models.build(config)
    state, step = ckpt.restore_weights(sharding.replicated(mesh), step)
  finally:
    ckpt.close()
  return config, networks, state, step


def load_config(path: str, step=None) -> ml_collections.ConfigDict:
  """The training config saved with a checkpoint (newest step by default)."""
  ckpt = checkpoint.Checkpointer(workdir_of(path), read_only=True)
  try:
    return config_lib.upgrade_saved(_lists_to_tuples(ckpt.restore_config(step)))
  finally:
    ckpt.close()


def variables_of(state, use_ema: bool = True) -> dict:
  """{net: variables for `apply`} from a training state; EMA weights of G and E if `use_ema`."""
  out = {}
  for net in state["params"]:
    params = state["ema"][net] if use_ema and net in state["ema"] else state["params"][net]
    out[net] = {"params": params, **state["stats"][net]}
  return out


def load(path: str, step=None, use_ema: bool = True, batch_size: int = 64) -> "BigBiGAN":
  """Loads a training checkpoint for inference on this process's devices.

  Args:
    path: a training --workdir or its checkpoints/ directory.
    step: a saved step, or None for the newest readable one.
    use_ema: use the EMA weights of G and E (what the paper evaluates); D has no EMA.
    batch_size: the fixed chunk every method is compiled for.
  """
  mesh = sharding.local_mesh()
  config, networks, state, step = restore(path, step, mesh)
  return BigBiGAN(config, networks, mesh, batch_size=batch_size).with_state(state, use_ema, step)


# ---------------------------------------------------------------------------------------------
# The model.

class BigBiGAN:
  """G, E and D of one configuration with jitted, batched NumPy-in, NumPy-out methods.

  Build it once per (config, mesh) and bind weights with `with_state`: copies share the compiled
  functions, so an evaluator can rebind every few thousand steps without recompiling.

  Attributes:
    config, networks, mesh, step (of the bound weights), z_dim, image_size (E's input
    resolution; G's when there is no encoder), generator_resolution, image_channels, has_encoder,
    has_features (an encoder, or a D whose hidden layer is the representation, see
    `models.Networks.features_from`), feature_keys (the features `encode` provides).
  """

  def __init__(self, config, networks, mesh, batch_size: int = 64):
    self.config, self.networks, self.mesh = config, networks, mesh
    self.z_dim, self.z_dist = config.model.z_dim, config.model.z_dist
    self.image_channels = networks.image_channels
    self.image_size = networks.image_size
    self.generator_resolution = networks.generator_resolution
    self.has_encoder = networks.encoder is not None
    self.features_from_d = networks.features_from == "discriminator"
    self.has_features = networks.features_from is not None
    self.feature_keys = networks.feature_keys
    # Every chunk is split evenly over the mesh.
    self.batch_size = -(-batch_size // mesh.size) * mesh.size
    self.variables, self.step = None, None
    self.replicated = sharding.replicated(mesh)
    self.multihost = sharding.is_multihost(mesh)
    self._jitted = {}  # shared by the `with_state` copies
    jit = lambda f: jax.jit(f, out_shardings=self.replicated)
    self._encode = jit(self.apply_encoder)
    self._generate = jit(self.apply_generator)
    self._reconstruct = jit(self.apply_reconstruct)
    self._discriminate = jit(self.apply_discriminator)

  def with_state(self, state, use_ema: bool = True, step=None) -> "BigBiGAN":
    """A copy bound to the weights of a training state (sharing the compiled functions)."""
    bound = copy.copy(self)
    bound.variables = variables_of(state, use_ema)
    bound.step = int(np.asarray(state["step"].addressable_data(0)) if step is None else step)
    return bound

  def with_random_init(self) -> "BigBiGAN":
    """A copy bound to freshly initialised weights (from `config.seed`, as training starts):
    the untrained twin that shows what training added."""
    init = functools.partial(models.init_variables, self.networks, self.config,
                             jax.random.key(self.config.seed))
    bound = copy.copy(self)
    bound.variables = jax.jit(init, out_shardings=self.replicated)()
    bound.step = 0
    return bound

  def with_standing_stats(self, num_batches: int = 16, seed: int = 1) -> "BigBiGAN":
    """A copy whose G uses "standing statistics" (BigGAN, Brock et al. 2019) in its batch norms.

    G runs in training mode on `num_batches` batches of `batch_size` latents from the prior
    (drawn from `seed`); every BN layer's mean and variance become the plain average of its
    per-batch moments over those batches, not a momentum average, and replace the running
    statistics of the bound weights. Only G's `batch_stats` change; the spectral-norm state is
    read, not updated; E and D are untouched.

    The per-batch moments are recovered without knowing each layer's momentum m: one pass from
    all-zero statistics stores (1 - m) * moment, one more pass (the first batch, from statistics
    all equal to S = 2^20) stores m S + (1 - m) * moment, and the difference of the two is m S
    (a large S keeps m exact to float32 precision whatever the size of the moments).
    """
    if num_batches < 1:
      return self
    z = self.sample_z(num_batches * self.batch_size, seed).reshape(
        num_batches, self.batch_size, self.z_dim)
    return self._with_standing_stats("generator", [self._local_rows(chunk) for chunk in z])

  def with_encoder_standing_stats(self, local_batches) -> "BigBiGAN":
    """A copy whose E normalises with the average batch moments of `local_batches` (this
    process's rows of global image batches in [-1, 1], e.g. from `evaluators.common.split_batches`), as
    `with_standing_stats` does for G. A freshly initialised E needs it: its BN statistics are
    the initial (mean 0, variance 1), so in inference mode its BN layers are the identity, a
    different function from the normalised one that training sees. For the BiGAN "D features"
    baseline the feature network is D, whose statistics are re-estimated instead."""
    net = "discriminator" if self.features_from_d else "encoder"
    return self._with_standing_stats(net, list(local_batches))

  def _with_standing_stats(self, net: str, local_batches) -> "BigBiGAN":
    """`net`'s `batch_stats` replaced by the plain average of its per-batch moments over
    `local_batches` (its inputs, run in training mode); see `with_standing_stats`."""
    if self.variables is None:
      raise UserError("no weights bound: use bigbigan_jax.load(workdir) or model.with_state(state)")
    if net not in self.variables or "batch_stats" not in self.variables[net] or not local_batches:
      return self
    module = getattr(self.networks, net)
    prepare = (lambda z: z) if net == "generator" else self.networks.to_model_space

    def updated_stats(variables, inputs, start):
      v = variables[net]
      stats = jax.tree.map(lambda s: jnp.full_like(s, start), v["batch_stats"])
      _, new = module.apply({**v, "batch_stats": stats}, prepare(inputs), train=True,
                            mutable=True)
      return new["batch_stats"]

    fn = self.cached_jit(("standing_stats", net), updated_stats)
    total = None
    for k, rows in enumerate(local_batches):
      scaled = fn(self.variables, self.to_device(rows), jnp.float32(0.0))
      total = scaled if total is None else jax.tree.map(jnp.add, total, scaled)
      if k == 0:
        probe = 2.0 ** 20
        from_probe = fn(self.variables, self.to_device(rows), jnp.float32(probe))
        one_minus_m = jax.tree.map(lambda a, b: 1.0 - (b - a) / probe, scaled, from_probe)
    stats = jax.tree.map(lambda t, w: t / (w * len(local_batches)), total, one_minus_m)
    bound = copy.copy(self)
    bound.variables = {**self.variables, net: {**self.variables[net], "batch_stats": stats}}
    return bound

  def cached_jit(self, key, fn):
    """`jax.jit(fn)` with replicated outputs, compiled once per `key` for this model and its
    `with_state` copies (for the per-batch functions of the evaluators)."""
    if key not in self._jitted:
      self._jitted[key] = jax.jit(fn, out_shardings=self.replicated)
    return self._jitted[key]

  # -- Pure functions of (variables, global arrays): for jit, and for the evaluators. -----------

  def apply_encoder(self, variables, images, rng=None) -> dict:
    """E(x) in inference mode; images in [-1, 1] NHWC at `image_size`. No rng: z_sample = z_mean."""
    x = self.networks.to_model_space(images)
    if self.features_from_d:  # e.g. BiGAN's "D features" baseline: D's last hidden layer
      h = self.networks.discriminator.apply(variables["discriminator"], x, None,
                                            train=False)["features"]
      return {"avepool_feat": h, "bn_crelu_feat": jnp.concatenate([jnp.maximum(h, 0),
                                                                   jnp.maximum(-h, 0)], -1)}
    return self.networks.encoder.apply(variables["encoder"], x, train=False,
                                       rngs=None if rng is None else {"sample": rng})

  def apply_generator(self, variables, z):
    """G(z) as [N, H, W, C] images in [-1, 1] (the BiGAN MLP's flat [0, 1] vectors reshaped)."""
    return self.networks.to_images(
        self.networks.generator.apply(variables["generator"], z, train=False))

  def apply_reconstruct(self, variables, images):
    """G(E(x)) from the posterior mean, at G's resolution."""
    return self.apply_generator(variables, self.apply_encoder(variables, images)["z_mean"])

  def d_view(self, images):
    """Images as D and G see them: E-resolution inputs average-pooled to G's resolution."""
    return self.networks.d_view(images)

  def apply_discriminator(self, variables, images, z) -> dict:
    """D's scores {score_x, score_z, score_xz} (None where the config has no such term)."""
    x = self.networks.to_model_space(self.d_view(images))
    s = self.networks.discriminator.apply(variables["discriminator"], x, z, train=False)
    return {"score_x": s["s_x"], "score_z": s["s_z"], "score_xz": s["s_xz"]}

  # -- Host helpers. ----------------------------------------------------------------------------

  def to_device(self, local_rows):
    """This process's rows of a global batch -> a global array sharded along 'data'."""
    return sharding.to_device_rows(local_rows, self.mesh)

  def gather(self, local_rows) -> np.ndarray:
    """This process's rows of a global batch -> the whole global batch, on every process."""
    return sharding.gather_rows(local_rows, self.mesh)

  def _local_rows(self, chunk):
    if not self.multihost:
      return chunk
    rows = len(chunk) // jax.process_count()
    return chunk[jax.process_index() * rows:(jax.process_index() + 1) * rows]

  def batched(self, fn, *arrays, rng=None):
    """Runs fn(variables, *chunks[, key]) over fixed-size chunks; returns host arrays of N rows."""
    if self.variables is None:
      raise UserError("no weights bound: use bigbigan_jax.load(workdir) or model.with_state(state)")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
      raise UserError(f"inputs have different batch sizes {[len(a) for a in arrays]}: pass one "
                      "z per image")
    outputs = []
    for index, start in enumerate(range(0, n, self.batch_size)):
      chunks = []
      for a in arrays:
        chunk = np.asarray(a[start:start + self.batch_size], np.float32)
        pad = self.batch_size - len(chunk)
        chunk = np.pad(chunk, [(0, pad)] + [(0, 0)] * (chunk.ndim - 1))
        chunks.append(self.to_device(self._local_rows(chunk)))
      extra = () if rng is None else (jax.random.fold_in(rng, index),)
      out = fn(self.variables, *chunks, *extra)
      outputs.append(jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), out))
    if not outputs:
      raise UserError("empty input: pass at least one example")
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outputs)

  def _check_images(self, images, resolutions, what):
    images = np.asarray(images)
    if (images.ndim != 4 or images.shape[1] != images.shape[2]
        or images.shape[1] not in resolutions or images.shape[3] != self.image_channels):
      raise UserError(f"{what} expects float images [N, S, S, {self.image_channels}] in [-1, 1] "
                      f"with S in {sorted(set(resolutions))}, got shape {images.shape}; use "
                      "model.preprocess(uint8_images) first")
    return images

  def require_encoder(self, features_only: bool = False):
    """Raises a UserError in GAN mode (no encoder; `features_only`: unless D gives features)."""
    if not (self.has_features if features_only else self.has_encoder):
      raise UserError("this checkpoint has no encoder (GAN mode, model.encoder.enabled=False): "
                      "only generate() and discriminate() are available")

  # -- The hub-module interface. ----------------------------------------------------------------

  def encode(self, images, seed: int = 0) -> dict:
    """E(x): {avepool_feat, bn_crelu_feat, z_mean, z_stdev, z_sample} for [N, S, S, C] in [-1, 1].

    z_sample = z_mean + z_stdev * eps with eps drawn from `seed` (deterministic per call).
    """
    self.require_encoder(features_only=True)
    images = self._check_images(images, (self.image_size,), "encode")
    return self.batched(self._encode, images, rng=jax.random.key(seed))

  def generate(self, z, upsampled: bool = False) -> np.ndarray:
    """G(z): [N, z_dim] latents -> [N, H, W, C] images in [-1, 1] at G's resolution.

    `upsampled=True`: at twice G's resolution, every pixel repeated 2 x 2 (nearest neighbour),
    as the hub modules' `upsampled` output (256 px for the 128 px generator).
    """
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != self.z_dim:
      raise UserError(f"generate expects z of shape [N, {self.z_dim}], got {z.shape}")
    images = self.batched(self._generate, z)
    return images.repeat(2, axis=1).repeat(2, axis=2) if upsampled else images

  def reconstruct(self, images) -> np.ndarray:
    """G(E(x)) from z_mean, at G's resolution."""
    self.require_encoder()
    images = self._check_images(images, (self.image_size,), "reconstruct")
    return self.batched(self._reconstruct, images)

  def discriminate(self, images, z) -> dict:
    """D(x, z): {score_x, score_z, score_xz}, each [N] (None where the config lacks the term).

    Images at G's resolution, or at E's (average-pooled for D as in training).
    """
    images = self._check_images(images, (self.generator_resolution, self.image_size),
                                "discriminate")
    z = np.asarray(z, np.float32)
    if z.shape != (len(images), self.z_dim):
      raise UserError(f"discriminate expects z of shape [{len(images)}, {self.z_dim}], "
                      f"got {z.shape}")
    return self.batched(self._discriminate, images, z)

  def sample_z(self, n: int, seed: int = 0) -> np.ndarray:
    """n latents from the prior P_z the model was trained with."""
    return np.asarray(models.sample_z(jax.random.key(seed), (n, self.z_dim), self.z_dist))

  def preprocess(self, images) -> np.ndarray:
    """uint8 images of any size -> float32 [N, S, S, C] in [-1, 1] at E's resolution.

    Central square crop and bicubic resize (as the evaluation pipeline). Accepts a batch
    [N, H, W, C] or [N, H, W] (grayscale), or a list of [H, W, C] / [H, W] images of any sizes;
    converts gray <-> RGB (ITU-R 601 luma) to the model's channels and drops an alpha channel.
    """
    if isinstance(images, np.ndarray) and images.ndim in (3, 4):
      images = list(images)
    out = []
    for image in images:
      image = input_pipeline.to_channels(image, self.image_channels)
      out.append(input_pipeline.preprocess(image, self.image_size, "center", None))
    return np.stack(out)
