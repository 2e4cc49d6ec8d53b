"""Evaluation math on arrays: Fréchet distance, Inception score, linear probe, k-NN (docs/design.md#evaluation).

Pure functions of NumPy/JAX arrays: no models, no data pipeline (see evaluators/ for those).
"""

import functools
import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
import optax

from bigbigan_jax import feature_store
from bigbigan_jax import sharding
from bigbigan_jax.errors import UserError

# ---------------------------------------------------------------------------------------------
# FID and IS.


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID on Inception statistics).

  d² = |mu1 - mu2|² + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^½). The trace of the square root is
  taken as tr((s1^½ s2 s1^½)^½), of a symmetric PSD matrix with the eigenvalues of s1 s2:
  unlike `scipy.linalg.sqrtm(s1 @ s2)` it never has complex parts for nearly singular covariances.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  root1 = _psd_sqrt((sigma1 + sigma1.T) / 2)
  middle = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def inception_score(softmax_probs, splits: int = 10) -> tuple[float, float]:
  """Inception score exp(E_x KL(p(y|x) || p(y))): mean and std over `splits` equal parts.

  Args:
    softmax_probs: [N, classes] class probabilities of generated images.
    splits: the standard protocol uses 10 splits of 50k samples.
  """
  probs = np.asarray(softmax_probs, np.float64)
  if probs.ndim != 2 or len(probs) < splits:
    raise ValueError(f"need [N >= splits={splits}, classes] probabilities, got {probs.shape}")
  scores = []
  for part in np.array_split(probs, splits):
    marginal = part.mean(axis=0, keepdims=True)
    # 0 log 0 = 0: where p(y|x) is 0 the term vanishes whatever p(y) is.
    kl = np.where(part > 0, part * (np.log(np.where(part > 0, part, 1.0)) -
                                    np.log(np.where(marginal > 0, marginal, 1.0))), 0.0)
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------
# Linear probe: multinomial logistic regression on standardised frozen features.

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def standardize(train, *others):
  """Scales every feature to zero mean and unit variance using the statistics of `train`."""
  train = np.asarray(train, np.float32)
  mean, std = train.mean(axis=0), train.std(axis=0)
  std = np.where(std > 1e-6, std, 1.0)  # constant features (dead ReLUs) stay 0, not inf
  return [(np.asarray(x, np.float32) - mean) / std for x in (train, *others)]


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def fit_logistic_regression(features, labels, l2, init=None, *, num_classes: int,
                            max_steps: int = 200, tolerance: float = 1e-4):
  """Full-batch L-BFGS on mean softmax cross-entropy + l2/2 |W|² (bias not penalised).

  Stops when the gradient norm falls below `tolerance` or after `max_steps`. The problem is
  convex, so the result does not depend on `init` ({'w': [D, C], 'b': [C]}, zeros if None) except
  through how fast it gets there: `linear_probe` warm-starts along the regularisation path.
  Returns params {'w', 'b'}; one compilation serves every l2 (it is traced).
  """
  features = jnp.asarray(features, jnp.float32)
  onehot = jax.nn.one_hot(labels, num_classes)
  if init is None:
    init = {"w": jnp.zeros((features.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}

  def loss_fn(p):
    logits = features @ p["w"] + p["b"]
    return optax.softmax_cross_entropy(logits, onehot).mean() + 0.5 * l2 * jnp.sum(p["w"] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss_fn)

  def step(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss_fn)
    return optax.apply_updates(p, updates), state

  def keep_going(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, "count")
    grad_norm = optax.tree_utils.tree_norm(optax.tree_utils.tree_get(state, "grad"))
    return (count == 0) | ((count < max_steps) & (grad_norm >= tolerance))

  params, _ = jax.lax.while_loop(keep_going, step, (init, opt.init(init)))
  return params


def accuracy(params, features, labels) -> float:
  """Top-1 of the softmax classifier `params` ({'w', 'b'}) on `features` [N, D]."""
  logits = jnp.asarray(features) @ params["w"] + params["b"]
  return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(labels)))


def linear_probe(train_x, train_y, val_x, val_y, test_x=None, test_y=None, *,
                 num_classes: int, l2_grid: Sequence[float] = L2_GRID,
                 max_steps: int = 200, standardized: bool = True,
                 return_params: bool = False) -> dict:
  """Top-1 of a softmax classifier on frozen features, l2 chosen on the validation set.

  Features are standardised with the training statistics. With an empty validation set the
  middle of the grid is used and 'val' is left out. `standardized=False` keeps the inputs as they
  are (pixels, where a nearly constant border pixel would otherwise be scaled up a hundredfold).
  `return_params`: also return the chosen classifier as out['params'] (for `accuracy`, on
  inputs standardised like `standardize(train_x, x)[1]`, or as given with `standardized=False`).

  Returns:
    {'val': top-1 on val_x (the selection set), 'test': top-1 on test_x, 'l2': chosen l2}.
  """
  has_val = val_x is not None and len(val_x) > 0
  has_test = test_x is not None and len(test_x) > 0
  sets = [train_x, *([val_x] if has_val else []), *([test_x] if has_test else [])]
  sets = standardize(*sets) if standardized else [np.asarray(x, np.float32) for x in sets]
  train_x = sets.pop(0)
  val_x = sets.pop(0) if has_val else None
  test_x = sets.pop(0) if has_test else None
  train_y = np.asarray(train_y, np.int32)
  grid = sorted(l2_grid, reverse=True) if has_val else [sorted(l2_grid)[len(l2_grid) // 2]]
  best = None
  params = {"w": jnp.zeros((train_x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  for l2 in grid:  # strongest first: each fit starts from the previous optimum, close to its own
    params = fit_logistic_regression(train_x, train_y, jnp.float32(l2), params,
                                     num_classes=num_classes, max_steps=max_steps)
    score = accuracy(params, val_x, val_y) if has_val else 0.0
    if best is None or score >= best[0]:  # ties go to the weaker regulariser
      best = (score, l2, params)
  score, l2, params = best
  out = {"l2": float(l2)}
  if has_val:
    out["val"] = score
  if has_test:
    out["test"] = accuracy(params, test_x, test_y)
  if return_params:
    out["params"] = params
  return out


# ---------------------------------------------------------------------------------------------
# k-nearest neighbours: the bank sharded over the devices, queries in chunks, top-k merged.


@functools.lru_cache(maxsize=64)
def _knn_fn(mesh, k, metric, num_classes):
  """Predictions for a replicated query chunk against a row-sharded bank: each device ranks its
  own rows, the devices' top-k candidates are gathered and ranked again (exact)."""
  def local(bank, bank_labels, valid, queries):
    if metric == "cosine":
      normalize = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
      similarity = normalize(queries) @ normalize(bank).T
    else:  # -|q - b|², dropping |q|² which does not change the ranking of a query's neighbours
      similarity = 2.0 * queries @ bank.T - jnp.sum(bank**2, axis=1)[None]
    similarity = jnp.where(valid[None], similarity, -jnp.inf)
    values, index = jax.lax.top_k(similarity, k)
    # Device order is row order: among equal similarities the earlier row still wins.
    values = jax.lax.all_gather(values, "data", axis=1, tiled=True)
    labels = jax.lax.all_gather(bank_labels[index], "data", axis=1, tiled=True)
    _, best = jax.lax.top_k(values, k)
    votes = jax.nn.one_hot(jnp.take_along_axis(labels, best, axis=1), num_classes)  # [Q, k, C]
    # Rank weights 1 + (k - rank) / (k + 1)^2 sum to less than one extra vote: they only break
    # ties.
    rank_weight = 1.0 + (k - jnp.arange(k)) / (k + 1.0) ** 2
    return jnp.argmax(jnp.einsum("qkc,k->qc", votes, rank_weight), axis=-1)

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P("data"), P()),
                               out_specs=P(), check_vma=False))


def shard_bank(bank, key, mesh, *, min_rows_per_device: int = 1):
  """A feature_store.Source as a bank sharded over `mesh` by rows: (features, labels, valid).

  Process p holds its contiguous part of the rows (`Source`), padded to the same count on every
  device (padding is never a neighbour). Host memory: this process's part of the bank, once.
  """
  index, count = _process_of(mesh)
  devices_here = mesh.size // count
  rows = max(bank.rows_per_process(count))
  total = max(math.ceil(rows / devices_here), min_rows_per_device) * devices_here
  x, y, n = np.zeros((total, bank.dims[key]), np.float32), np.zeros((total,), np.int32), 0
  for xb, yb, m in bank.ordered(key, 1 << 14, process_index=index, process_count=count):
    k = int(m.sum())  # the valid rows come first
    x[n:n + k], y[n:n + k], n = xb[:k], yb[:k], n + k
  valid = np.arange(total) < n
  return tuple(sharding.to_device_rows(a, mesh) for a in (x, y, valid))


def knn_accuracy(bank, bank_labels, queries, query_labels, *, ks: Sequence[int] = (1, 5),
                 metric: str = "euclidean", num_classes: int | None = None,
                 chunk: int = 1024, mesh=None) -> dict:
  """k-NN top-1 of `queries` against a labelled feature bank, for every k in `ks`.

  Arrays in memory; `sharded_knn_accuracy` is the same on feature shards.
  Args:
    metric: 'euclidean' or 'cosine'.
    chunk: queries per device call (bounds the [chunk, bank] similarity matrix).
    mesh: the devices holding the bank (default: this process's).
  Returns:
    {k: accuracy}.
  """
  if num_classes is None:
    num_classes = int(max(np.max(bank_labels), np.max(query_labels))) + 1
  as_source = lambda x, y: feature_store.Source.from_arrays(
      {"x": np.asarray(x, np.float32), "labels": np.asarray(y, np.int32)})
  return sharded_knn_accuracy(as_source(bank, bank_labels), as_source(queries, query_labels),
                              "x", ks=ks, metric=metric, num_classes=num_classes, chunk=chunk,
                              mesh=mesh)


def sharded_knn_accuracy(bank, queries, key, *, ks: Sequence[int] = (1, 5),
                         metric: str = "euclidean", num_classes: int, chunk: int = 1024,
                         mesh=None, placed=None) -> dict:
  """k-NN top-1 of every query against the bank, both `feature_store.Source`s, exact.

  The bank is sharded over the devices of `mesh` (default: this process's); each process reads
  every query, `chunk` at a time. `placed`: the bank as `shard_bank` put it on `mesh` already
  (to reuse it for several query sets). Returns {k: accuracy}.
  """
  if metric not in ("euclidean", "cosine"):
    raise ValueError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")
  mesh = mesh or sharding.local_mesh()
  features, labels, valid = placed or shard_bank(bank, key, mesh, min_rows_per_device=max(ks))
  fns = {k: _knn_fn(mesh, min(k, bank.count), metric, num_classes) for k in ks}
  correct = {k: 0 for k in ks}
  for q, y, mask in queries.ordered(key, chunk):
    q = sharding.replicate(mesh, q)
    for k, fn in fns.items():
      prediction = sharding.fetch(fn(features, labels, valid, q))
      correct[k] += int(np.sum((prediction == y) & mask))
  return {k: correct[k] / max(queries.count, 1) for k in ks}


# ---------------------------------------------------------------------------------------------
# Minibatch linear probe: streams feature shards, data-parallel over a mesh.


def _process_of(mesh):
  """(process index, process count) of the hosts `mesh` spans."""
  return ((jax.process_index(), jax.process_count()) if sharding.is_multihost(mesh) else (0, 1))


def feature_moments(source, key, mesh, local_batch):
  """Mean and standard deviation of every feature over a Source, in one streamed pass."""
  index, count = _process_of(mesh)
  sums = jax.jit(lambda x, m: (jnp.sum(x * m[:, None], 0), jnp.sum((x * m[:, None]) ** 2, 0)),
                 out_shardings=sharding.replicated(mesh))
  total, total_sq = 0.0, 0.0
  for x, _, m in source.ordered(key, local_batch, process_index=index, process_count=count):
    s, sq = sums(sharding.to_device_rows(x, mesh), sharding.to_device_rows(m, mesh))
    total = total + sharding.fetch(s).astype(np.float64)
    total_sq = total_sq + sharding.fetch(sq).astype(np.float64)
  mean = total / source.count
  std = np.sqrt(np.maximum(total_sq / source.count - mean**2, 0.0))
  std = np.where(std > 1e-6, std, 1.0)  # as `standardize`: constant features stay 0
  return mean.astype(np.float32), std.astype(np.float32)


def minibatch_linear_probe(train, val, test, key, *, num_classes: int, mesh=None,
                           l2_grid: Sequence[float] = L2_GRID, epochs: int = 10,
                           min_steps: int = 1500, batch_size: int = 1024,
                           learning_rate: float = 1e-2, seed: int = 0,
                           early_stopping: bool = False,
                           max_seconds: float | None = None) -> dict:
  """`linear_probe` for features that need not fit in memory: `feature_store.Source`s.

  Softmax regression on standardised features by Adam with a cosine-decayed learning rate for
  `epochs` (more if that is fewer than `min_steps` steps), one classifier per l2 of `l2_grid`
  trained together on the same batches, data-parallel over
  `mesh` (default: this process's devices; a global mesh shares the work between hosts). At the
  end each classifier is scored on `val` and the best l2 (ties go to the weaker regulariser) is
  scored on `test`; with `early_stopping`, after every epoch, keeping the best (l2, epoch). Host
  memory: about two shards. `max_seconds` ends training early (checked every 32 steps; with
  several processes by process 0's clock).

  Returns:
    {'val', 'test', 'l2', 'epochs' (run), 'best_epoch', 'seconds'} ('val'/'test' where given).
  """
  start_time = time.perf_counter()
  mesh = mesh or sharding.local_mesh()
  index, count = _process_of(mesh)
  batch_size = -(-batch_size // mesh.size) * mesh.size
  local_batch = batch_size // count
  has_val = val is not None and val.count > 0
  grid = (np.array(sorted(l2_grid, reverse=True), np.float32) if has_val
          else np.array([sorted(l2_grid)[len(l2_grid) // 2]], np.float32))
  mean, std = feature_moments(train, key, mesh, local_batch)
  replicated = sharding.replicated(mesh)
  mean, inv_std, l2 = (sharding.replicate(mesh, a) for a in (mean, 1.0 / std, grid))
  steps_per_epoch = min(r // local_batch for r in train.rows_per_process(count))
  if steps_per_epoch < 1:
    raise UserError(f"{train.count} training examples are fewer than one batch of "
                    f"{batch_size}: lower the probe's batch_size")
  epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch))
  dim = train.dims[key]
  params = {"w": jnp.zeros((len(grid), dim, num_classes)), "b": jnp.zeros((len(grid), num_classes))}
  params = jax.device_put(params, replicated)
  opt_state = jax.jit(optimizer.init, out_shardings=replicated)(params)

  def logits_of(p, x):
    x = (x - mean) * inv_std
    return jnp.einsum("nd,gdc->gnc", x, p["w"]) + p["b"][:, None]

  @functools.partial(jax.jit, donate_argnums=(0, 1), out_shardings=replicated)
  def train_step(p, state, x, y):
    def loss_fn(p):
      ce = optax.softmax_cross_entropy_with_integer_labels(logits_of(p, x), y[None]).mean(1)
      return jnp.sum(ce + 0.5 * l2 * jnp.sum(p["w"] ** 2, axis=(1, 2)))
    updates, state = optimizer.update(jax.grad(loss_fn)(p), state, p)
    return optax.apply_updates(p, updates), state

  @functools.partial(jax.jit, out_shardings=replicated)
  def correct(p, x, y, m):
    return jnp.sum((jnp.argmax(logits_of(p, x), -1) == y[None]) & m[None], axis=1)

  def score(p, source):
    hits = 0
    for x, y, m in source.ordered(key, local_batch, process_index=index, process_count=count):
      hits = hits + sharding.fetch(correct(p, *(sharding.to_device_rows(a, mesh)
                                                for a in (x, y, m))))
    return np.asarray(hits) / source.count

  best, epoch, steps, out_of_time = None, 0, 0, False
  for epoch in range(1, epochs + 1):
    for x, y, _ in train.shuffled(key, local_batch, seed=seed * 100_003 + epoch,
                                  process_index=index, process_count=count):
      params, opt_state = train_step(params, opt_state, sharding.to_device_rows(x, mesh),
                                     sharding.to_device_rows(y, mesh))
      steps += 1
      if steps % 32 == 0:  # a bounded queue: thousands of queued collectives can stall on CPU
        jax.block_until_ready(params)
        if max_seconds is not None:  # decided together: every process runs the same steps
          late = time.perf_counter() - start_time > max_seconds
          if jax.process_count() > 1:
            late = bool(multihost_utils.broadcast_one_to_all(np.asarray(late)))
          if late:
            out_of_time = True
            break
    if (has_val and early_stopping) or epoch == epochs or out_of_time:
      scores = score(params, val) if has_val else np.zeros(len(grid))
      for g in range(len(grid)):  # strongest first: ties go to the weaker regulariser
        if best is None or scores[g] >= best[0]:
          best = (float(scores[g]), float(grid[g]), epoch,
                  jax.tree.map(lambda a, g=g: a[g:g + 1], params))
    if out_of_time:
      break
  val_score, l2_best, best_epoch, chosen = best
  out = {"l2": l2_best, "epochs": epoch, "best_epoch": best_epoch}
  if has_val:
    out["val"] = val_score
  if test is not None and test.count:
    out["test"] = float(score(chosen, test)[0])
  out["seconds"] = time.perf_counter() - start_time
  return out
