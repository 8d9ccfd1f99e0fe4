"""Continuous affect (valence / arousal) metrics: RMSE, Pearson CC, CCC and SAGR.

Used by the Aff-Wild trainer (Hasani & Mahoor, CVPRW 2017, arXiv 1705.07884), which reports all four per
dimension.

Shapes. ``predictions`` and ``labels`` have the same shape. A 1-D input of shape (N,) is one dimension; for
ndim >= 2 the last axis holds the dimensions (D = 2 for valence / arousal) and every leading axis is a
sample axis, so (B, T, D) per-frame sequence outputs are scored over all B * T frames. ``mask`` is boolean
(non-zero = keep) with the leading shape (a frame mask, e.g. (B,) or (B, T)) or the full shape (a
per-dimension mask).
Results have the shape of one sample: () for 1-D input, (D,) otherwise.

Definitions (population, 1/N, moments, as in emonet's reference metrics, face-analysis/emonet):
- RMSE = sqrt(mean((y_hat - y)^2)).
- Pearson CC rho = s_xy / (s_x s_y), with s_xy, s_x^2, s_y^2 the 1/N (co)variances.
- CCC (Lin 1989) = 2 rho s_x s_y / (s_x^2 + s_y^2 + (m_x - m_y)^2) = 2 s_xy / (s_x^2 + s_y^2 + (m_x - m_y)^2).
  We evaluate the covariance form, so constant predictions give CCC = 0 (the exact limit) whereas the
  rho * s_x * s_y form gives NaN (0 / 0 in rho). Pearson CC of a constant input is NaN, like
  ``scipy.stats.pearsonr``; "constant" is detected exactly (min == max of the kept values, which the streaming
  metric also tracks), since the rounded mean of a constant column leaves variances of ~1e-13 that would turn
  CC into noise. CCC is NaN only if both inputs are constant and equal.
- SAGR = mean(sign(y) == sign(y_hat)) with NumPy's sign (sign(0) = 0), the formula read literally and what
  emonet's reference metric computes: a frame labelled exactly 0 agrees only with a prediction of exactly 0,
  and a prediction of exactly 0 disagrees with any non-zero label. (Mapping 0 to +1 would instead make every
  neutral frame agree with any non-negative prediction.)
- Empty input (no kept samples): every metric is NaN.

``AffectMoments`` is a clu metric holding, per dimension, the count, both means, both centred second moments
(M2), the co-moment, the running mean squared error and the sign-agreement count. Batches are merged with
Chan, Golub & LeVeque's pairwise update (delta = m_b - m_a; M2 = M2_a + M2_b + delta^2 n_a n_b / n;
likewise for the co-moment with delta_x delta_y), which is associative, so ``merge`` across steps, devices
(``Collection.gather_from_model_output`` -> ``reduce``) and hosts gives the same result up to rounding.
``from_model_output`` and ``merge`` are jit-compatible and accumulate in the input's float dtype (float32 by
default); ``compute()`` finishes on the host in NumPy float64 (call it outside jit, like clu's
``CollectingMetric``). In float32 on about 10^5 frames the results match a float64 NumPy evaluation of the
definitions to ~1e-6 (tests/affect_reference.py). ``affect_metrics`` is the one-shot form of the same metric.
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional, Tuple

import flax.struct
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

_KEYS = ("rmse", "pcc", "ccc", "sagr")


def _check_shapes(predictions_shape, labels_shape, mask_shape) -> None:
  if tuple(predictions_shape) != tuple(labels_shape):
    raise ValueError(f"predictions shape {tuple(predictions_shape)} != labels shape {tuple(labels_shape)}; "
                     "they must be equal")
  if len(predictions_shape) == 0:
    raise ValueError("predictions must have at least one (sample) axis, got a scalar")
  if mask_shape is None:
    return
  mask_shape = tuple(mask_shape)
  allowed = {tuple(predictions_shape)}
  if len(predictions_shape) >= 2:
    allowed.add(tuple(predictions_shape[:-1]))
  if mask_shape not in allowed:
    raise ValueError(f"mask shape {mask_shape} does not fit predictions shape {tuple(predictions_shape)}; "
                     f"expected one of {sorted(allowed, key=len)}")


def _flatten(predictions, labels, mask, xp):
  """Returns (p, y, keep) of shape (M, D) and the per-sample result shape."""
  shape = predictions.shape
  out_shape = shape[-1:] if len(shape) >= 2 else ()
  d = shape[-1] if len(shape) >= 2 else 1
  p = xp.reshape(predictions, (-1, d))
  y = xp.reshape(labels, (-1, d))
  if mask is None:
    keep = xp.ones(p.shape, bool)
  else:
    keep = xp.asarray(mask) != 0
    if keep.shape != shape:  # a frame mask (leading shape): broadcast over the dimension axis
      keep = keep[..., None]
    keep = xp.reshape(xp.broadcast_to(keep, shape), (-1, d))
  return p, y, keep, out_shape


def affect_metrics(predictions, labels, mask=None) -> Dict[str, np.ndarray]:
  """One-shot {'rmse', 'pcc', 'ccc', 'sagr'} per dimension (float64 on the host), through the one
  implementation, ``AffectMoments`` (e.g. to score a saved ``predictions_<split>.npz``)."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  out = AffectMoments.from_model_output(predictions=predictions, labels=labels, mask=mask).compute_arrays()
  return {k: out[k] for k in _KEYS}


@flax.struct.dataclass
class AffectMoments(clu_metrics.Metric):
  """Streaming sufficient statistics for RMSE / CC / CCC / SAGR (see the module docstring).

  ``compute()`` returns {'rmse', 'pcc', 'ccc', 'sagr'} with per-dimension arrays, plus 'count'. A subclass
  made by ``AffectMoments.named('valence', 'arousal')`` returns flat scalars {'valence/ccc', ...,
  'mean/ccc', ...} instead ('mean/<m>' is the unweighted mean over dimensions, e.g. the Aff-Wild2 score
  (CCC_v + CCC_a) / 2).
  """

  count: jnp.ndarray
  mean_pred: jnp.ndarray
  mean_label: jnp.ndarray
  m2_pred: jnp.ndarray
  m2_label: jnp.ndarray
  comoment: jnp.ndarray
  mse: jnp.ndarray
  sign_hits: jnp.ndarray
  pred_min: jnp.ndarray  # ranges detect constant inputs exactly (CC is then NaN, not rounding noise)
  pred_max: jnp.ndarray
  label_min: jnp.ndarray
  label_max: jnp.ndarray

  names: ClassVar[Tuple[str, ...]] = ()

  @classmethod
  def empty(cls, num_dims: Optional[int] = None) -> "AffectMoments":
    shape = () if num_dims is None else (num_dims,)
    z = jnp.zeros(shape, jnp.float32)
    i = jnp.zeros(shape, jnp.int32)
    inf = jnp.full(shape, jnp.inf, jnp.float32)
    return cls(count=i, mean_pred=z, mean_label=z, m2_pred=z, m2_label=z, comoment=z, mse=z, sign_hits=i,
               pred_min=inf, pred_max=-inf, label_min=inf, label_max=-inf)

  @classmethod
  def named(cls, *names: str) -> type:
    """A subclass whose ``compute()`` returns flat '<name>/<metric>' scalars for the given dimensions."""
    if not names or not all(isinstance(n, str) and n for n in names):
      raise ValueError(f"names must be non-empty strings, got {names!r}")
    return flax.struct.dataclass(type(f"{cls.__name__}_{'_'.join(names)}", (cls,), {"names": tuple(names)}))

  @classmethod
  def from_model_output(cls, *, predictions: jnp.ndarray, labels: jnp.ndarray,
                        mask: Optional[jnp.ndarray] = None, **_) -> "AffectMoments":
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    _check_shapes(predictions.shape, labels.shape, None if mask is None else jnp.shape(mask))
    dtype = jnp.promote_types(jnp.promote_types(predictions.dtype, labels.dtype), jnp.float32)
    p, y, keep, out_shape = _flatten(predictions.astype(dtype), labels.astype(dtype), mask, jnp)
    count = keep.sum(0, dtype=jnp.int32)
    n = jnp.maximum(count, 1).astype(dtype)
    mp = jnp.where(keep, p, 0).sum(0) / n
    my = jnp.where(keep, y, 0).sum(0) / n
    dp = jnp.where(keep, p - mp, 0)
    dy = jnp.where(keep, y - my, 0)
    agree = keep & (jnp.sign(p) == jnp.sign(y))
    stats = dict(count=count, mean_pred=mp, mean_label=my, m2_pred=(dp * dp).sum(0),
                 m2_label=(dy * dy).sum(0), comoment=(dp * dy).sum(0),
                 mse=jnp.where(keep, (p - y) ** 2, 0).sum(0) / n,
                 sign_hits=agree.sum(0, dtype=jnp.int32),
                 pred_min=jnp.where(keep, p, jnp.inf).min(0), pred_max=jnp.where(keep, p, -jnp.inf).max(0),
                 label_min=jnp.where(keep, y, jnp.inf).min(0), label_max=jnp.where(keep, y, -jnp.inf).max(0))
    return cls(**{k: v.reshape(out_shape) for k, v in stats.items()})

  def merge(self, other: "AffectMoments") -> "AffectMoments":
    dtype = jnp.promote_types(self.mean_pred.dtype, other.mean_pred.dtype)
    na = self.count.astype(dtype)
    nb = other.count.astype(dtype)
    n = na + nb
    frac_b = jnp.where(n > 0, nb / jnp.maximum(n, 1), 0).astype(dtype)  # n_b / n
    w = na * frac_b  # n_a n_b / n
    dp = other.mean_pred - self.mean_pred
    dy = other.mean_label - self.mean_label
    return type(self)(
        count=self.count + other.count,
        mean_pred=self.mean_pred + dp * frac_b,
        mean_label=self.mean_label + dy * frac_b,
        m2_pred=self.m2_pred + other.m2_pred + dp * dp * w,
        m2_label=self.m2_label + other.m2_label + dy * dy * w,
        comoment=self.comoment + other.comoment + dp * dy * w,
        mse=self.mse + (other.mse - self.mse) * frac_b,
        sign_hits=self.sign_hits + other.sign_hits,
        pred_min=jnp.minimum(self.pred_min, other.pred_min),
        pred_max=jnp.maximum(self.pred_max, other.pred_max),
        label_min=jnp.minimum(self.label_min, other.label_min),
        label_max=jnp.maximum(self.label_max, other.label_max),
    )

  def compute_arrays(self) -> Dict[str, np.ndarray]:
    """Per-dimension {'rmse', 'pcc', 'ccc', 'sagr', 'count'} on the host in float64; NaN where count is 0."""
    n = np.asarray(self.count).astype(np.float64)
    mp, my, m2p, m2y, cxy, mse, hits = (np.asarray(x, np.float64) for x in (
        self.mean_pred, self.mean_label, self.m2_pred, self.m2_label, self.comoment, self.mse,
        self.sign_hits))
    const_p = np.asarray(self.pred_min) == np.asarray(self.pred_max)
    const_y = np.asarray(self.label_min) == np.asarray(self.label_max)
    with np.errstate(invalid="ignore", divide="ignore"):
      vp = np.where(const_p, 0.0, m2p / n)
      vy = np.where(const_y, 0.0, m2y / n)
      cov = np.where(const_p | const_y, 0.0, cxy / n)
      out = {
          "rmse": np.where(n > 0, np.sqrt(mse), np.nan),
          "pcc": np.where((vp > 0) & (vy > 0), cov / np.sqrt(vp * vy), np.nan),
          "ccc": 2 * cov / (vp + vy + (mp - my) ** 2),
          "sagr": hits / n,
      }
    out = {k: np.asarray(v) for k, v in out.items()}
    out["count"] = np.asarray(self.count)
    return out

  def compute(self):
    out = self.compute_arrays()
    if not self.names:
      return out
    shape = self.count.shape
    d = shape[-1] if shape else 1
    if len(self.names) != d:
      raise ValueError(f"{len(self.names)} names {self.names} for {d} dimensions (stat shape {shape})")
    flat = {}
    for key in _KEYS:
      v = out[key].reshape(d)
      for i, name in enumerate(self.names):
        flat[f"{name}/{key}"] = v[i]
      flat[f"mean/{key}"] = v.mean()
    return flat


@flax.struct.dataclass
class RMSE(AffectMoments):
  """``AffectMoments`` whose ``compute()`` is the per-dimension RMSE."""

  def compute(self):
    return self.compute_arrays()["rmse"]


@flax.struct.dataclass
class PearsonCC(AffectMoments):
  """``AffectMoments`` whose ``compute()`` is the per-dimension Pearson CC."""

  def compute(self):
    return self.compute_arrays()["pcc"]


@flax.struct.dataclass
class CCC(AffectMoments):
  """``AffectMoments`` whose ``compute()`` is the per-dimension CCC."""

  def compute(self):
    return self.compute_arrays()["ccc"]


@flax.struct.dataclass
class SAGR(AffectMoments):
  """``AffectMoments`` whose ``compute()`` is the per-dimension sign agreement rate."""

  def compute(self):
    return self.compute_arrays()["sagr"]
