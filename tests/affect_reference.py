"""Float64 NumPy evaluations of the affect metric definitions (RMSE, Pearson CC, CCC, SAGR), the
independent reference the library's one implementation (the clu metric
``fer_jax.metrics.affect.AffectMoments``) is tested against. Definitions: the module docstring of
``fer_jax.metrics.affect``."""

from typing import Dict

import numpy as np

from fer_jax.metrics.affect import _check_shapes, _flatten


def _moments_np(predictions, labels, mask):
  predictions = np.asarray(predictions, np.float64)
  labels = np.asarray(labels, np.float64)
  _check_shapes(predictions.shape, labels.shape, None if mask is None else np.shape(mask))
  p, y, keep, out_shape = _flatten(predictions, labels, mask, np)
  n = keep.sum(0).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    mp = np.where(keep, p, 0).sum(0) / n
    my = np.where(keep, y, 0).sum(0) / n
    # A constant input has exactly zero deviations (its float mean may differ from the constant by rounding).
    dp = np.where(keep & ~_is_constant(p, keep), p - mp, 0)
    dy = np.where(keep & ~_is_constant(y, keep), y - my, 0)
  return p, y, keep, n, mp, my, dp, dy, out_shape


def _is_constant(x, keep):
  """(D,) True where all kept values of a column are equal (or none is kept)."""
  return np.where(keep, x, np.inf).min(0) == np.where(keep, x, -np.inf).max(0)


def rmse(predictions, labels, mask=None) -> np.ndarray:
  """Root mean squared error per dimension (float64)."""
  p, y, keep, n, *_, out_shape = _moments_np(predictions, labels, mask)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.sqrt(np.where(keep, (p - y) ** 2, 0).sum(0) / n).reshape(out_shape)


def pearson_cc(predictions, labels, mask=None) -> np.ndarray:
  """Pearson correlation per dimension; NaN where either input is constant (like scipy.stats.pearsonr)."""
  _, _, _, n, _, _, dp, dy, out_shape = _moments_np(predictions, labels, mask)
  with np.errstate(invalid="ignore", divide="ignore"):
    vp, vy = (dp * dp).sum(0), (dy * dy).sum(0)
    cc = (dp * dy).sum(0) / np.sqrt(vp * vy)
    cc = np.where((vp > 0) & (vy > 0), cc, np.nan)
  return cc.reshape(out_shape)


def ccc(predictions, labels, mask=None) -> np.ndarray:
  """Lin's concordance correlation coefficient per dimension (population moments)."""
  _, _, _, n, mp, my, dp, dy, out_shape = _moments_np(predictions, labels, mask)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (2 * (dp * dy).sum(0) / n / ((dp * dp).sum(0) / n + (dy * dy).sum(0) / n + (mp - my) ** 2)
            ).reshape(out_shape)


def sagr(predictions, labels, mask=None) -> np.ndarray:
  """Sign agreement rate per dimension, mean(sign(y) == sign(y_hat)) with sign(0) = 0."""
  p, y, keep, n, *_, out_shape = _moments_np(predictions, labels, mask)
  with np.errstate(invalid="ignore", divide="ignore"):
    return ((keep & (np.sign(p) == np.sign(y))).sum(0) / n).reshape(out_shape)


def affect_metrics(predictions, labels, mask=None) -> Dict[str, np.ndarray]:
  """All four one-shot metrics: {'rmse', 'pcc', 'ccc', 'sagr'} -> per-dimension float64 arrays."""
  return {"rmse": rmse(predictions, labels, mask), "pcc": pearson_cc(predictions, labels, mask),
          "ccc": ccc(predictions, labels, mask), "sagr": sagr(predictions, labels, mask)}


