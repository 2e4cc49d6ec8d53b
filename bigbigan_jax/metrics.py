"""Evaluation math on arrays: Fréchet distance, Inception score, linear probe, k-NN (docs/design.md#evaluation).

Pure functions of NumPy/JAX arrays: no models, no data pipeline (see evaluators/ for those).
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
# k-nearest neighbours.


@functools.partial(jax.jit, static_argnames=("k", "metric", "num_classes"))
def _knn_predict(bank, bank_labels, queries, *, k: int, metric: str, num_classes: int):
  """Majority vote of the k nearest bank rows; ties go to the class of the nearer neighbour."""
  if metric == "cosine":
    normalize = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = normalize(queries) @ normalize(bank).T
  else:  # -|q - b|², dropping |q|² which does not change the ranking of a query's neighbours
    similarity = 2.0 * queries @ bank.T - jnp.sum(bank**2, axis=1)[None]
  _, index = jax.lax.top_k(similarity, k)
  votes = jax.nn.one_hot(bank_labels[index], num_classes)  # [Q, k, C]
  # Rank weights 1 + (k - rank) / (k + 1)^2 sum to less than one extra vote: they only break ties.
  rank_weight = 1.0 + (k - jnp.arange(k)) / (k + 1.0) ** 2
  return jnp.argmax(jnp.einsum("qkc,k->qc", votes, rank_weight), axis=-1)


def knn_accuracy(bank, bank_labels, queries, query_labels, *, ks: Sequence[int] = (1, 5),
                 metric: str = "euclidean", num_classes: int | None = None,
                 chunk: int = 1024) -> dict:
  """k-NN top-1 of `queries` against a labelled feature bank, for every k in `ks`.

  Args:
    metric: 'euclidean' or 'cosine'.
    chunk: queries per device call (bounds the [chunk, bank] distance matrix).
  Returns:
    {k: accuracy}.
  """
  if metric not in ("euclidean", "cosine"):
    raise ValueError(f"unknown metric {metric!r}; use 'euclidean' or 'cosine'")
  bank = jnp.asarray(bank, jnp.float32)
  bank_labels = jnp.asarray(bank_labels, jnp.int32)
  queries, query_labels = np.asarray(queries, np.float32), np.asarray(query_labels)
  if num_classes is None:
    num_classes = int(max(np.max(bank_labels), np.max(query_labels))) + 1
  out = {}
  for k in ks:
    k_eff = min(k, bank.shape[0])
    correct = 0
    for start in range(0, len(queries), chunk):
      # Pad the last chunk so that every call has the same shape (one compilation).
      q = queries[start:start + chunk]
      n = len(q)
      q = np.pad(q, ((0, chunk - n), (0, 0))) if len(queries) > chunk else q
      pred = np.asarray(_knn_predict(bank, bank_labels, jnp.asarray(q), k=k_eff, metric=metric,
                                     num_classes=num_classes))[:n]
      correct += int(np.sum(pred == query_labels[start:start + n]))
    out[k] = correct / max(len(queries), 1)
  return out
