"""``classification``: accuracy, balanced accuracy, per-class precision / recall / F1, macro-F1,
confusion-matrix PNG.

Streams ``fer_jax.metrics.classification.ConfusionMatrix`` (a clu ``Metric``) over the task's
``predictions`` / ``labels`` / ``mask``.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from fer_jax.evaluators.base import Evaluator, png_path
from fer_jax.metrics import classification as cls_metrics
from fer_jax.registry import EVALUATORS
from fer_jax.train import plots


@EVALUATORS.register("classification")
class ClassificationEvaluator(Evaluator):

  def run(self, predict_fn, dataset) -> Dict[str, Any]:
    n = self.task.num_classes
    metric = cls_metrics.ConfusionMatrix.empty(n)
    for batch in dataset:
      out = predict_fn(batch)
      try:
        cm = cls_metrics.confusion_matrix(out["labels"], out["predictions"], n, out["mask"])
      except ValueError as e:
        raise ValueError(f"evaluator {self.name!r}: {e} (config.dataset.num_classes={n})") from None
      metric = metric.merge(cls_metrics.ConfusionMatrix(matrix=cm.astype(np.int32)))
    cm = np.asarray(metric.matrix).astype(np.int64)
    return {"scores": metric.compute(), "confusion_matrix": cm}

  @property
  def class_names(self):
    return list(self.task.class_names)

  def scalars(self, result):
    s = result["scores"]
    out = {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "balanced_accuracy": s["balanced_accuracy"]}
    out.update({f"f1_{n}": f for n, f in zip(self.class_names, s["f1"])})
    return out

  def to_json(self, result):
    s, cm = result["scores"], result["confusion_matrix"]
    return {
        "accuracy": float(s["accuracy"]), "macro_f1": float(s["macro_f1"]),
        "balanced_accuracy": float(s["balanced_accuracy"]), "summary": self.summary(result),
        "per_class": {n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(k)}
                      for n, p, r, f, k in zip(self.class_names, s["precision"], s["recall"], s["f1"],
                                               s["support"])},
        "confusion_matrix": cm.tolist(), "class_names": self.class_names,
    }

  def summary(self, result):
    s = result["scores"]
    return f"accuracy {s['accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}"

  def report(self, result):
    return cls_metrics.format_report(result["scores"], self.class_names)

  def plots(self, result, workdir, prefix, step):
    s = result["scores"]
    image = plots.save_confusion_matrix(
        result["confusion_matrix"], self.class_names, png_path(workdir, "confusion_matrix", prefix),
        title=f"{prefix} (step {step}): acc {s['accuracy']:.3f}, macro-F1 {s['macro_f1']:.3f}")
    return {"confusion_matrix": image}
