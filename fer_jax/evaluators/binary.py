"""``binary``: one-logit (emotion vs rest) scores -> accuracy, balanced accuracy, precision, recall,
F1, ROC AUC and average precision of the positive class; the scores are saved for calibration.

The task's ``predict`` gives ``scores`` (B,) real logits (higher = positive), ``labels`` (B,) 0/1 and
``mask`` (B,). Batches are collected on the host (one float and one int per example) and scored
once at the end, so every metric is exact:

* predicted positive: ``score >= threshold`` (option ``threshold``, a logit; 0 = probability 0.5);
* accuracy, precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 P R / (P + R), 0 where a
  denominator is 0 (scikit-learn's ``zero_division=0``); balanced accuracy = the mean recall of the
  classes present in the labels (``balanced_accuracy_score``);
* ROC AUC = P(score of a positive > score of a negative) + P(tie) / 2 (Mann-Whitney U / (n+ n-),
  from average ranks, as ``roc_auc_score``); NaN when one class is absent;
* AP as ``average_precision_score`` (``fer_jax.metrics.multilabel.average_precision``).

``write`` also saves ``scores_<name>.npz`` (``scores``, ``labels``) in the work dir (process 0, final
evaluation), the input of a later calibration of a bank of per-emotion models.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import jax
import numpy as np

from fer_jax.evaluators.base import Evaluator
from fer_jax.metrics.multilabel import average_precision
from fer_jax.registry import EVALUATORS

METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "auc", "ap")


def _check(scores, labels, mask=None):
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  if scores.shape != labels.shape:
    raise ValueError(f"binary scores: {scores.size} scores but {labels.size} labels")
  keep = np.ones(scores.shape, bool) if mask is None else np.asarray(mask).reshape(-1).astype(bool)
  if keep.shape != scores.shape:
    raise ValueError(f"binary scores: mask of {keep.size} entries for {scores.size} scores")
  scores, labels = scores[keep], labels[keep]
  bad = (labels != 0) & (labels != 1)
  if bad.any():
    raise ValueError(f"binary scores: labels must be 0 or 1, got {labels[bad][0].item()!r} at kept example "
                     f"{int(np.flatnonzero(bad)[0])}")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"binary scores: non-finite score at kept example {int(np.flatnonzero(~np.isfinite(scores))[0])}")
  return scores, labels.astype(np.int64)


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of ``x``, tied values sharing the mean of their ranks."""
  order = np.argsort(x, kind="stable")
  sx = x[order]
  starts = np.r_[0, np.flatnonzero(np.diff(sx)) + 1]  # first index of each run of equal values
  ends = np.r_[starts[1:], sx.size]
  mean_rank = (starts + ends + 1) / 2.0  # mean of the ranks starts+1 .. ends
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.repeat(mean_rank, ends - starts)
  return ranks


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve (ties count 1/2); NaN when only one class is present."""
  scores, labels = _check(scores, labels)
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = _average_ranks(scores)
  u = ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def binary_scores(scores, labels, mask=None, threshold: float = 0.0) -> Dict[str, Any]:
  """All ``METRICS`` plus the confusion matrix [[TN, FP], [FN, TP]], ``n`` and ``positives``."""
  scores, labels = _check(scores, labels, mask)
  pred = scores >= threshold
  pos = labels == 1
  tp, fp = int(np.sum(pred & pos)), int(np.sum(pred & ~pos))
  fn, tn = int(np.sum(~pred & pos)), int(np.sum(~pred & ~pos))
  n = labels.size
  div = lambda a, b: a / b if b else 0.0  # noqa: E731
  precision, recall = div(tp, tp + fp), div(tp, tp + fn)
  recalls = [r for r, present in ((recall, tp + fn), (div(tn, tn + fp), tn + fp)) if present]
  return {
      "accuracy": div(tp + tn, n) if n else float("nan"),
      "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
      "precision": precision, "recall": recall,
      "f1": div(2 * precision * recall, precision + recall),
      "auc": roc_auc(scores, labels) if n else float("nan"),
      "ap": float(average_precision(scores, labels)) if n else float("nan"),
      "confusion_matrix": [[tn, fp], [fn, tp]], "n": n, "positives": tp + fn, "threshold": float(threshold),
  }


@EVALUATORS.register("binary")
class BinaryEvaluator(Evaluator):
  """Scores of a one-logit model on a split (see the module docstring); option ``threshold``."""

  def __init__(self, task, name: str, threshold: float = 0.0, **options: Any):
    super().__init__(task, name, **options)
    self.threshold = float(threshold)

  def run(self, predict_fn, dataset) -> Dict[str, Any]:
    scores, labels = [], []
    for batch in dataset:
      out = predict_fn(batch)
      keep = np.asarray(out["mask"]).reshape(-1).astype(bool)
      scores.append(np.asarray(out["scores"], np.float64).reshape(-1)[keep])
      labels.append(np.asarray(out["labels"]).reshape(-1)[keep])
    if not scores:
      raise ValueError(f"evaluator {self.name!r}: no evaluation batches")
    s, y = np.concatenate(scores), np.concatenate(labels)
    try:
      result = binary_scores(s, y, threshold=self.threshold)
    except ValueError as e:
      raise ValueError(f"evaluator {self.name!r}: {e}") from None
    return {**result, "scores": s, "labels": y}

  @property
  def positive_name(self) -> str:
    names = list(getattr(self.task, "class_names", ()) or ())
    return names[1] if len(names) == 2 else "positive"

  def scalars(self, result):
    return {k: result[k] for k in METRICS}

  def to_json(self, result):
    out = {k: float(result[k]) for k in METRICS}
    out.update(confusion_matrix=result["confusion_matrix"], n=int(result["n"]),
               positives=int(result["positives"]), threshold=result["threshold"],
               positive_class=self.positive_name, summary=self.summary(result))
    return out

  def summary(self, result):
    return (f"{self.positive_name} vs rest: accuracy {result['accuracy']:.4f}  balanced "
            f"{result['balanced_accuracy']:.4f}  F1 {result['f1']:.4f}  AUC {result['auc']:.4f}")

  def report(self, result):
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    return (self.summary(result) + f"\n  precision {result['precision']:.4f}  recall {result['recall']:.4f}  "
            f"AP {result['ap']:.4f}  n {result['n']} ({result['positives']} positive)\n"
            f"  confusion [[TN {tn}, FP {fp}], [FN {fn}, TP {tp}]] at logit threshold {result['threshold']:g}")

  def write(self, writer, workdir: str, prefix: str, step: int, result: Dict[str, Any], plot: bool) -> None:
    super().write(writer, workdir, prefix, step, result, plot)
    if plot and jax.process_index() == 0:
      np.savez(os.path.join(workdir, f"scores_{prefix}.npz"), scores=result["scores"],
               labels=result["labels"])
