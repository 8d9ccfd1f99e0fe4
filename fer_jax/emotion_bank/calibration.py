"""Platt scaling of each one-vs-rest model's logit and the bank's multi-class decision.

The bank's K models are trained apart, each with its own class balance (half positives per batch), so
their logits are on different scales: the largest raw logit is not the most probable emotion. Each
model's logit ``s`` is mapped to a probability by Platt scaling (Platt 1999, "Probabilistic outputs for
support vector machines", eq. 1)::

    p(positive | s) = sigmoid(a s + b)

with (a, b) minimising the cross-entropy on a held-out split (the validation split: the training
clips are fit too well to calibrate on). Platt's targets (his section 2.2) replace the hard 1 / 0 by
``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` (``prior_correction=True``, as scikit-learn's
``CalibratedClassifierCV(method='sigmoid')``): a model that separates the split perfectly (common here)
then still gets a finite slope instead of a ~ infinity. The fit is Newton's method with a backtracking
line search on the 2-parameter convex loss (Lin, Lin & Weng 2007, "A note on Platt's probabilistic
outputs for support vector machines", Alg. 1), in float64 NumPy.

The multi-class prediction is the argmax over emotions of the calibrated probabilities (the first
emotion on an exact tie). The paper (PAPERS.md section 4) says only that a set of binary models is
used; how their outputs are combined is ours.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from fer_jax.metrics import classification as cls_metrics

__all__ = ["platt_targets", "platt_loss", "fit_platt", "apply_platt", "combine", "multiclass_metrics"]


def _check_scores(scores, labels) -> Tuple[np.ndarray, np.ndarray]:
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels).reshape(-1)
  if s.shape != y.shape:
    raise ValueError(f"Platt scaling: {s.size} scores but {y.size} labels")
  if s.size == 0:
    raise ValueError("Platt scaling: no scores to fit")
  bad = (y != 0) & (y != 1)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"Platt scaling: labels must be 0 or 1, got {y[i].item()!r} at example {i}")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"Platt scaling: non-finite score {s[~np.isfinite(s)][0]} at example "
                     f"{int(np.flatnonzero(~np.isfinite(s))[0])}")
  return s, y.astype(np.float64)


def platt_targets(labels, prior_correction: bool = True) -> np.ndarray:
  """Targets t_i: 1 / 0, or Platt's (N+ + 1) / (N+ + 2) and 1 / (N- + 2)."""
  y = np.asarray(labels, np.float64).reshape(-1)
  if not prior_correction:
    return y
  n_pos = float(np.sum(y == 1))
  n_neg = float(y.size - n_pos)
  return np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
  return -np.logaddexp(0.0, -z)


def platt_loss(a: float, b: float, scores, targets) -> float:
  """Cross-entropy ``-sum t log sigmoid(z) + (1 - t) log sigmoid(-z)``, z = a s + b (stable form)."""
  z = a * np.asarray(scores, np.float64) + b
  t = np.asarray(targets, np.float64)
  return float(-np.sum(t * _log_sigmoid(z) + (1.0 - t) * _log_sigmoid(-z)))


def fit_platt(scores, labels, prior_correction: bool = True, max_iter: int = 100,
              tol: float = 1e-10) -> Dict[str, Any]:
  """Fits p = sigmoid(a s + b) to binary ``labels`` (0 / 1) from real ``scores`` (the logits).

  Returns ``{'a', 'b', 'loss' (mean cross-entropy at the optimum), 'iterations', 'n', 'positives'}``.
  Newton's method from (a, b) = (0, log((N+ + 1) / (N- + 1))) (Platt's start), each step halved until
  the loss decreases enough (Armijo, 1e-4); stops when the gradient's largest entry is below ``tol``
  times the example count. A split with one class only cannot be calibrated and raises.
  """
  s, y = _check_scores(scores, labels)
  n_pos = int(y.sum())
  if n_pos == 0 or n_pos == y.size:
    raise ValueError(f"Platt scaling needs positives and negatives; the {y.size} labels are all {int(y[0])}")
  t = platt_targets(y, prior_correction)
  a, b = 0.0, float(np.log((n_pos + 1.0) / (y.size - n_pos + 1.0)))
  loss = platt_loss(a, b, s, t)
  it = 0
  for it in range(1, max_iter + 1):
    z = a * s + b
    p = np.exp(_log_sigmoid(z))
    q = p * (1.0 - p)
    r = p - t
    g = np.array([np.dot(r, s), r.sum()])
    if np.max(np.abs(g)) < tol * s.size:
      break
    h = np.array([[np.dot(q, s * s), np.dot(q, s)], [np.dot(q, s), q.sum()]])
    h += 1e-12 * np.eye(2)  # Lin et al.'s sigma: keeps H positive definite
    d = -np.linalg.solve(h, g)
    step, decrease = 1.0, float(np.dot(g, d))
    while step > 1e-10:
      na, nb = a + step * d[0], b + step * d[1]
      new = platt_loss(na, nb, s, t)
      if new <= loss + 1e-4 * step * decrease:
        a, b, loss = na, nb, new
        break
      step /= 2.0
    else:
      break  # no decrease along the Newton direction: at the optimum to float precision
  return {"a": float(a), "b": float(b), "loss": loss / s.size, "iterations": it, "n": int(s.size),
          "positives": n_pos}


def apply_platt(scores, a: float, b: float) -> np.ndarray:
  """sigmoid(a s + b), float64."""
  return np.exp(_log_sigmoid(a * np.asarray(scores, np.float64) + b))


def combine(probabilities, class_ids: Optional[Sequence[int]] = None) -> np.ndarray:
  """(N, K) calibrated probabilities (column k: model of ``class_ids[k]``) -> (N,) predicted class ids:
  the argmax over models, the first column on an exact tie."""
  p = np.asarray(probabilities, np.float64)
  if p.ndim != 2 or p.shape[1] < 2:
    raise ValueError(f"combine: probabilities must be (N, K) with K >= 2 models, got shape {p.shape}")
  if not np.all(np.isfinite(p)):
    row, col = np.argwhere(~np.isfinite(p))[0]
    raise ValueError(f"combine: probability of model {col} for example {row} is {p[row, col]}")
  ids = np.arange(p.shape[1]) if class_ids is None else np.asarray(class_ids, np.int64)
  if ids.shape != (p.shape[1],):
    raise ValueError(f"combine: {p.shape[1]} columns but class_ids {list(ids)}")
  return ids[np.argmax(p, axis=1)]


def multiclass_metrics(labels, predictions, num_classes: int) -> Dict[str, Any]:
  """Accuracy, macro-F1, balanced accuracy, per-class P / R / F1 and the confusion matrix (lists)."""
  cm = cls_metrics.confusion_matrix(np.asarray(labels), np.asarray(predictions), num_classes)
  sc = cls_metrics.scores_from_confusion(cm)
  return {"accuracy": float(sc["accuracy"]), "macro_f1": float(sc["macro_f1"]),
          "balanced_accuracy": float(sc["balanced_accuracy"]), "precision": sc["precision"].tolist(),
          "recall": sc["recall"].tolist(), "f1": sc["f1"].tolist(), "support": sc["support"].tolist(),
          "confusion_matrix": cm.tolist()}
