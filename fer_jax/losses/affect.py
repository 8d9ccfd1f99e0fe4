"""Losses for continuous affect regression and EMOTIC's multi-label categories.

Shapes follow ``fer_jax.metrics.affect``: predictions and labels have equal shapes, (N,) for one dimension or
(..., D) with the dimensions on the last axis (every leading axis is a sample axis). ``mask`` has the leading
shape (per sample) or the full shape (per sample and dimension); it is cast to float, so 0/1 masks select and
other non-negative values weight samples. Samples with mask 0 contribute neither value nor gradient, and a
dimension with no kept sample contributes 0. ``dim_weights`` (D,) combine the per-dimension losses as
sum_d w_d L_d / sum_d w_d (None: plain mean over dimensions).

- ``mse_loss``: per-dimension mean squared error. Hasani & Mahoor (CVPRW 2017) do not name their loss;
  PAPERS.md reads it as L2, so ``affect_regression_loss`` defaults to kind='l2' (= this MSE; note that
  ``optax.l2_loss`` is 0.5 * squared error, half of ours).
- ``batch_ccc`` / ``ccc_loss``: CCC / 1 - CCC per dimension from the batch's population moments (Lin 1989),
  the usual loss for CCC-scored affect challenges; it only sees batch statistics, so it needs batches of many
  frames.
- ``emotic_weighted_l2_loss``: EMOTIC's discrete-category loss (Kosti et al., TPAMI 2019, Sec. 5), per example
  sum_i w_i (y_hat_i - y_i)^2 over the K = 26 categories, with dynamic weights w_i = 1 / ln(c + s_i), c = 1.2,
  recomputed on every batch. Paper vs code: the paper writes s_i = p_i, "the probability of the i-th
  category", and normalises by 1/N (N categories); the widely used PyTorch re-implementation of the baseline
  (Tandon-A/emotic) uses s_i = n_i, the number of positives of category i in the batch, sets w_i = 1e-4 for a
  category with no positive in the batch, and sums over examples and categories. We default to the code's
  counts and 1e-4 (``dynamic_stat='count'``, ``absent_weight=1e-4``; PAPERS.md's "1/ln(n_i + 1.2) from batch
  counts"), with ``dynamic_stat='frequency'`` for p_i = n_i / B and ``absent_weight=None`` for the bare
  formula.
  ``reduction='mean'`` averages over examples (batch-size independent; the paper's 1/26 is a constant factor
  we leave out), ``'sum'`` reproduces the code's scale.
"""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp

from fer_jax.metrics.affect import _check_shapes

_REGRESSION_KINDS = ("l2", "mse", "ccc", "mix")


def _prepare(pred, label, mask):
  """Flattens to (M, D) float arrays and a float weight array of the same shape."""
  pred, label = jnp.asarray(pred), jnp.asarray(label)
  _check_shapes(pred.shape, label.shape, None if mask is None else jnp.shape(mask))
  dtype = jnp.promote_types(jnp.promote_types(pred.dtype, label.dtype), jnp.float32)
  shape = pred.shape
  d = shape[-1] if len(shape) >= 2 else 1
  p = pred.astype(dtype).reshape(-1, d)
  y = label.astype(dtype).reshape(-1, d)
  if mask is None:
    w = jnp.ones_like(p)
  else:
    w = jnp.asarray(mask).astype(dtype)
    if w.shape != shape:
      w = w[..., None]
    w = jnp.broadcast_to(w, shape).reshape(-1, d)
  return p, y, w


def _combine_dims(per_dim, dim_weights):
  if dim_weights is None:
    return per_dim.mean()
  dw = jnp.asarray(dim_weights, per_dim.dtype).reshape(-1)
  if dw.shape != per_dim.shape:
    raise ValueError(f"dim_weights has {dw.shape[0]} entries for {per_dim.shape[0]} dimensions")
  return (dw * per_dim).sum() / dw.sum()


def _safe_div(num, den):
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def mse_loss(pred, label, mask=None, dim_weights=None) -> jnp.ndarray:
  """Mean squared error per dimension over kept samples, combined over dimensions with ``dim_weights``."""
  p, y, w = _prepare(pred, label, mask)
  return _combine_dims(_safe_div((w * (p - y) ** 2).sum(0), w.sum(0)), dim_weights)


def batch_ccc(pred, label, mask=None, eps: float = 1e-8) -> jnp.ndarray:
  """Differentiable per-dimension CCC of one batch, 2 s_xy / (s_x^2 + s_y^2 + (m_x - m_y)^2 + eps).

  Shape () for (N,) input, (D,) otherwise; 0 for a dimension with no kept sample. To score one dimension
  of a (B, T, D) output, slice with ``[..., d:d+1]`` (``[..., d]`` would make T the dimension axis).
  """
  p, y, w = _prepare(pred, label, mask)
  n = w.sum(0)
  mp = _safe_div((w * p).sum(0), n)
  my = _safe_div((w * y).sum(0), n)
  dp, dy = p - mp, y - my
  vp = _safe_div((w * dp * dp).sum(0), n)
  vy = _safe_div((w * dy * dy).sum(0), n)
  cov = _safe_div((w * dp * dy).sum(0), n)
  ccc = jnp.where(n > 0, 2 * cov / (vp + vy + (mp - my) ** 2 + eps), 0)
  shape = jnp.shape(pred)
  return ccc.reshape(shape[-1:] if len(shape) >= 2 else ())


def ccc_loss(pred, label, mask=None, dim_weights=None, eps: float = 1e-8) -> jnp.ndarray:
  """1 - CCC per dimension from batch moments (``batch_ccc``), combined over dimensions with ``dim_weights``.

  ``eps`` keeps the loss finite when both inputs are constant and equal; at realistic variances (>~1e-3)
  its effect is below float32 resolution. A dimension with no kept sample contributes 0.
  """
  _, _, w = _prepare(pred, label, mask)
  per_dim = jnp.where(w.sum(0) > 0, 1 - batch_ccc(pred, label, mask, eps).reshape(-1), 0)
  return _combine_dims(per_dim, dim_weights)


def affect_regression_loss(pred, label, kind: str = "l2", *, mask=None, dim_weights=None,
                           mix_alpha: float = 0.5, eps: float = 1e-8) -> jnp.ndarray:
  """Valence / arousal loss: 'l2' (= 'mse'), 'ccc' (1 - CCC) or 'mix' = a * MSE + (1 - a) * (1 - CCC)."""
  if kind not in _REGRESSION_KINDS:
    raise ValueError(f"Unknown affect loss kind {kind!r}; expected one of {_REGRESSION_KINDS}")
  if kind in ("l2", "mse"):
    return mse_loss(pred, label, mask, dim_weights)
  if kind == "ccc":
    return ccc_loss(pred, label, mask, dim_weights, eps)
  if isinstance(mix_alpha, (int, float)) and not 0.0 <= mix_alpha <= 1.0:
    raise ValueError(f"mix_alpha={mix_alpha} must lie in [0, 1]")
  return (mix_alpha * mse_loss(pred, label, mask, dim_weights)
          + (1 - mix_alpha) * ccc_loss(pred, label, mask, dim_weights, eps))


def _check_multilabel(pred, target, mask):
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  if pred.shape != target.shape or pred.ndim != 2:
    raise ValueError(f"pred shape {pred.shape} and target shape {target.shape} must be equal and (B, K)")
  if mask is not None and jnp.shape(mask) != pred.shape[:1]:
    raise ValueError(f"mask shape {jnp.shape(mask)} must be {pred.shape[:1]} (one entry per example)")
  dtype = jnp.promote_types(jnp.promote_types(pred.dtype, target.dtype), jnp.float32)
  m = jnp.ones(pred.shape[:1], dtype) if mask is None else jnp.asarray(mask).astype(dtype)
  return pred.astype(dtype), target.astype(dtype), m


def emotic_dynamic_weights(target, mask=None, c: float = 1.2, dynamic_stat: str = "count",
                           absent_weight: Optional[float] = 1e-4) -> jnp.ndarray:
  """EMOTIC batch weights w_i = 1 / ln(c + s_i), s_i = positives of category i ('count') or their fraction.

  Categories with no positive among the kept examples get ``absent_weight`` (None: the formula, 1 / ln(c)).
  No gradient flows through the weights.
  """
  if dynamic_stat not in ("count", "frequency"):
    raise ValueError(f"dynamic_stat={dynamic_stat!r}; expected 'count' or 'frequency'")
  if isinstance(c, (int, float)) and not c > 1:
    raise ValueError(f"c={c} must be > 1 so that every weight 1 / ln(c + s) is finite and positive")
  _, target, m = _check_multilabel(target, target, mask)
  counts = (m[:, None] * target).sum(0)
  stat = counts if dynamic_stat == "count" else _safe_div(counts, m.sum())
  w = 1.0 / jnp.log(c + stat)
  if absent_weight is not None:
    w = jnp.where(counts > 0, w, absent_weight)
  return jax.lax.stop_gradient(w)


def emotic_weighted_l2_loss(pred, target, weights: Union[None, str, jnp.ndarray] = None, c: float = 1.2, *,
                            mask=None, dynamic_stat: str = "count", absent_weight: Optional[float] = 1e-4,
                            reduction: str = "mean") -> jnp.ndarray:
  """EMOTIC discrete loss: per example sum_i w_i (pred_i - target_i)^2, reduced over the batch.

  Args:
    pred, target: (B, K) scores and multi-hot (or soft) targets.
    weights: None (w_i = 1), 'dynamic' (``emotic_dynamic_weights`` of this batch) or a (K,) array.
    c, dynamic_stat, absent_weight: see ``emotic_dynamic_weights`` (used with weights='dynamic').
    mask: optional (B,) example mask; masked examples are left out of the loss and of the batch counts.
    reduction: 'mean' over kept examples or 'sum' (the reference code's scale).
  """
  if reduction not in ("mean", "sum"):
    raise ValueError(f"reduction={reduction!r}; expected 'mean' or 'sum'")
  p, y, m = _check_multilabel(pred, target, mask)
  k = p.shape[1]
  if weights is None:
    w = jnp.ones((k,), p.dtype)
  elif isinstance(weights, str):
    if weights != "dynamic":
      raise ValueError(f"weights={weights!r}; expected None, 'dynamic' or a ({k},) array")
    w = emotic_dynamic_weights(y, mask, c, dynamic_stat, absent_weight).astype(p.dtype)
  else:
    w = jnp.asarray(weights, p.dtype)
    if w.shape != (k,):
      raise ValueError(f"weights shape {w.shape}; expected ({k},) for {k} categories")
  per_example = ((p - y) ** 2 * w).sum(1)
  total = (m * per_example).sum()
  return total if reduction == "sum" else _safe_div(total, m.sum())
