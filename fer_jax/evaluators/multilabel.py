"""``multilabel``: average precision per label and mAP (EMOTIC's metric) through the clu metric
``fer_jax.metrics.multilabel.MultiLabelAP``; the task's ``predict`` gives ``scores`` (B, K),
``labels`` (B, K) 0/1 and ``mask`` (B,)."""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from fer_jax.evaluators.base import Evaluator
from fer_jax.metrics.multilabel import MultiLabelAP
from fer_jax.registry import EVALUATORS


def stream_ap(pairs) -> Dict[str, np.ndarray]:
  """(scores, labels, mask) batches -> {'ap': (K,), 'map'} through ``MultiLabelAP``."""
  metric = None
  for scores, labels, mask in pairs:
    m = MultiLabelAP.from_model_output(predictions=scores, labels=labels, mask=mask)
    metric = m if metric is None else metric.merge(m)
  if metric is None:
    raise ValueError("no evaluation batches")
  return metric.compute()


def ap_table(ap: np.ndarray, names: Sequence[str]) -> Dict[str, float]:
  return {n: float(a) for n, a in zip(names, ap)}


@EVALUATORS.register("multilabel")
class MultiLabelEvaluator(Evaluator):

  def run(self, predict_fn, dataset) -> Dict[str, Any]:
    def pairs():
      for batch in dataset:
        out = predict_fn(batch)
        yield np.asarray(out["scores"]), np.asarray(out["labels"]), np.asarray(out["mask"])
    return stream_ap(pairs())

  @property
  def label_names(self):
    return list(getattr(self.task, "label_names", None) or self.task.class_names)

  def scalars(self, result):
    return {"map": result["map"], **{f"ap_{n}": a for n, a in ap_table(result["ap"], self.label_names).items()}}

  def to_json(self, result):
    return {"map": float(result["map"]), "ap": ap_table(result["ap"], self.label_names),
            "summary": self.summary(result)}

  def summary(self, result):
    return f"mAP {result['map']:.4f}"
