"""Classification metrics from a streamed confusion matrix.

``ConfusionMatrix`` is a clu metric: ``from_model_output(predictions, labels, mask)`` per batch, ``merge``
across batches (and hosts), ``compute()`` a dict with accuracy, per-class precision / recall / F1 and
macro F1 (the unweighted mean of per-class F1; classes absent from both labels and predictions score 0) and
balanced accuracy (the mean recall over the classes present in the labels, as scikit-learn's
``balanced_accuracy_score``).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     mask: Optional[np.ndarray] = None) -> np.ndarray:
  """Counts C[i, j] = #examples with label i predicted as j: the one-shot form of ``ConfusionMatrix``
  (labels checked on the host, where they can be)."""
  labels = np.asarray(labels).reshape(-1)
  keep = np.ones(labels.shape, bool) if mask is None else np.asarray(mask).reshape(-1).astype(bool)
  bad = ((labels < 0) | (labels >= num_classes)) & keep
  if bad.any():
    raise ValueError(f"Label {labels[bad][0]} outside [0, {num_classes})")
  metric = ConfusionMatrix.from_model_output(predictions=jnp.asarray(predictions), labels=jnp.asarray(labels),
                                             num_classes=num_classes, mask=jnp.asarray(keep))
  return np.asarray(metric.matrix).astype(np.int64)


def scores_from_confusion(cm: np.ndarray) -> Dict[str, np.ndarray]:
  """Accuracy, balanced accuracy, per-class precision / recall / F1 and macro F1 from a confusion matrix."""
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  support = cm.sum(1)
  predicted = cm.sum(0)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  total = cm.sum()
  return {
      "accuracy": np.float64(tp.sum() / total) if total else np.float64(np.nan),
      "macro_f1": np.float64(f1.mean()),
      "balanced_accuracy": np.float64(recall[support > 0].mean()) if total else np.float64(np.nan),
      "precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64),
  }


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Streaming confusion matrix; the class count is fixed by the first batch's ``num_classes``."""

  matrix: jnp.ndarray

  @classmethod
  def empty(cls, num_classes: int = 1) -> "ConfusionMatrix":
    return cls(matrix=jnp.zeros((num_classes, num_classes), jnp.int32))

  @classmethod
  def from_model_output(cls, *, predictions: jnp.ndarray, labels: jnp.ndarray, num_classes: int,
                        mask: Optional[jnp.ndarray] = None, **_) -> "ConfusionMatrix":
    labels = labels.reshape(-1).astype(jnp.int32)
    predictions = predictions.reshape(-1).astype(jnp.int32)
    weights = jnp.ones_like(labels) if mask is None else mask.reshape(-1).astype(jnp.int32)
    flat = jnp.zeros((num_classes * num_classes,), jnp.int32).at[
        labels * num_classes + predictions].add(weights)
    return cls(matrix=flat.reshape(num_classes, num_classes))

  def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
    return type(self)(matrix=self.matrix + other.matrix)

  def compute(self) -> Dict[str, np.ndarray]:
    return scores_from_confusion(np.asarray(self.matrix))


def format_report(scores: Dict[str, np.ndarray], class_names: Sequence[str]) -> str:
  """A per-class table like scikit-learn's ``classification_report``."""
  w = max(len(n) for n in class_names) + 2
  lines = [f"{'':{w}s}precision  recall  f1-score  support"]
  for i, name in enumerate(class_names):
    lines.append(f"{name:{w}s}{scores['precision'][i]:9.3f}{scores['recall'][i]:8.3f}"
                 f"{scores['f1'][i]:10.3f}{scores['support'][i]:9d}")
  lines.append(f"accuracy {scores['accuracy']:.4f}   macro-F1 {scores['macro_f1']:.4f}")
  return "\n".join(lines)
