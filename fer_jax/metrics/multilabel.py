"""Multi-label ranking metrics: per-label average precision and its mean (EMOTIC's mAP).

EMOTIC (Kosti et al., TPAMI 2019) and SeLiNet (Khargonkar et al., ISCAS 2023) report the mean over the 26
categories of the per-category average precision computed with scikit-learn's ``average_precision_score``.

``average_precision`` matches ``sklearn.metrics.average_precision_score`` exactly: the step-wise sum
AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds in decreasing order (no interpolation), with
tied scores forming one threshold (so the order of tied items never matters).

Labels with no positive example. scikit-learn (>= 1.x; we test 1.9) returns AP = 0 for such a label (with a
warning), and EMOTIC's evaluation averages the per-category APs over all 26 categories, so such a category
counts as 0. That is our default, ``no_positives='zero'``. ``no_positives='exclude'`` instead reports NaN for
the label and averages over the labels that have positives. On EMOTIC's test set every category has positives,
so both give EMOTIC's number; they differ on small or filtered evaluation sets.

``MultiLabelAP`` is the streaming version (a clu ``CollectingMetric``: batches are copied to the host and
concatenated, so ``merge`` runs outside ``jit``; ``from_model_output`` may be traced).
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional

import flax.struct
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

_NO_POSITIVES = ("zero", "exclude")


def _binary_ap(scores: np.ndarray, labels: np.ndarray) -> float:
  """Step-wise AP of one label; NaN when there is no positive."""
  if scores.size == 0:
    return np.nan
  order = np.argsort(-scores, kind="stable")
  s, y = scores[order], labels[order]
  last_of_run = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each tie group
  tp = np.cumsum(y)[last_of_run]
  if tp[-1] == 0:
    return np.nan
  precision = tp / (last_of_run + 1)
  recall_gain = np.diff(np.r_[0.0, tp]) / tp[-1]
  return float(np.sum(recall_gain * precision))


def _check(scores, labels, mask):
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels)
  if scores.shape != labels.shape or scores.ndim not in (1, 2):
    raise ValueError(f"scores shape {scores.shape} and labels shape {labels.shape} must be equal and "
                     "(N,) or (N, K)")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or infinite values")
  if not np.all((labels == 0) | (labels == 1)):
    bad = labels[(labels != 0) & (labels != 1)].reshape(-1)[0]
    raise ValueError(f"labels must be 0/1 (multi-hot), got {bad!r}")
  if mask is not None:
    mask = np.asarray(mask) != 0
    if mask.shape not in (scores.shape[:1], scores.shape):
      raise ValueError(f"mask shape {mask.shape} does not fit scores shape {scores.shape}; expected "
                       f"{scores.shape[:1]} (per example) or {scores.shape} (per example and label)")
    mask = np.broadcast_to(mask.reshape(mask.shape + (1,) * (scores.ndim - mask.ndim)), scores.shape)
  return scores, labels.astype(np.float64), mask


def average_precision(scores, labels, mask=None, no_positives: str = "zero") -> np.ndarray:
  """Per-label AP like ``sklearn.metrics.average_precision_score(labels, scores, average=None)``.

  Args:
    scores: (N,) or (N, K) real scores; higher means more likely.
    labels: same shape, 0/1.
    mask: optional (N,) or (N, K) boolean; entries with mask 0 are left out.
    no_positives: 'zero' (scikit-learn / EMOTIC: AP 0) or 'exclude' (NaN) for labels with no positive.
  Returns:
    float64 array of shape () or (K,).
  """
  if no_positives not in _NO_POSITIVES:
    raise ValueError(f"no_positives={no_positives!r}; expected one of {_NO_POSITIVES}")
  scores, labels, mask = _check(scores, labels, mask)
  s2 = scores.reshape(scores.shape[0], -1)
  y2 = labels.reshape(s2.shape)
  m2 = None if mask is None else mask.reshape(s2.shape)
  ap = np.array([_binary_ap(s2[:, k] if m2 is None else s2[m2[:, k], k],
                            y2[:, k] if m2 is None else y2[m2[:, k], k]) for k in range(s2.shape[1])])
  if no_positives == "zero":
    ap = np.nan_to_num(ap, nan=0.0)
  return ap.reshape(scores.shape[1:])


def mean_average_precision(scores, labels, mask=None, no_positives: str = "zero") -> np.float64:
  """Mean over labels of ``average_precision``; 'exclude' averages over labels with >= 1 positive only."""
  ap = np.atleast_1d(average_precision(scores, labels, mask, no_positives))
  if np.all(np.isnan(ap)):
    return np.float64(np.nan)
  return np.float64(np.nanmean(ap))


@flax.struct.dataclass
class MultiLabelAP(clu_metrics.CollectingMetric):
  """Streaming per-label AP / mAP; ``compute()`` -> {'ap': (K,), 'map': ()} equal to the one-shot values.

  ``from_model_output(predictions=scores (B, K), labels=(B, K) 0/1, mask=None | (B,) | (B, K))``. Set the
  class attribute ``no_positives`` in a subclass to change the convention (default 'zero', see module doc).
  """

  no_positives: ClassVar[str] = "zero"

  @classmethod
  def from_model_output(cls, *, predictions: jnp.ndarray, labels: jnp.ndarray,
                        mask: Optional[jnp.ndarray] = None, **_) -> "MultiLabelAP":
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 2:
      raise ValueError(f"predictions shape {predictions.shape} and labels shape {labels.shape} must be "
                       "equal and (B, K)")
    if mask is None:
      mask = jnp.ones(predictions.shape, bool)
    else:
      mask = jnp.asarray(mask) != 0
      if mask.shape not in (predictions.shape[:1], predictions.shape):
        raise ValueError(f"mask shape {mask.shape} does not fit predictions shape {predictions.shape}; "
                         f"expected {predictions.shape[:1]} or {predictions.shape}")
      mask = jnp.broadcast_to(mask.reshape(mask.shape[0], -1), predictions.shape)
    return cls(values={"scores": (predictions,), "labels": (labels,), "mask": (mask,)})

  def compute(self) -> Dict[str, np.ndarray]:
    if not self.values:
      raise ValueError("MultiLabelAP.compute() on an empty metric (no batches were merged)")
    k = self.values["scores"][0].shape[-1]
    v = {name: np.concatenate([np.asarray(a).reshape(-1, k) for a in arrays])
         for name, arrays in self.values.items()}
    ap = average_precision(v["scores"], v["labels"], v["mask"], self.no_positives)
    m = np.float64(np.nan) if np.all(np.isnan(ap)) else np.float64(np.nanmean(ap))
    return {"ap": ap, "map": m}
