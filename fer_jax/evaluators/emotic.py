"""``emotic``: EMOTIC's per-category average precision and mAP (Kosti et al., TPAMI 2019; SeLiNet's metric),
plus the mean absolute error of valence / arousal / dominance and SeLiNet's sentiment accuracy and
macro-F1 when the model predicts them; a per-category AP bar chart PNG.

Streams the clu metrics of ``fer_jax.metrics``: ``MultiLabelAP`` (categories, scikit-learn's AP, a category
with no positive counts 0 as in EMOTIC's evaluation), ``MeanAbsoluteError`` (VAD) and ``ConfusionMatrix``
(sentiment) over the ``emotic`` task's ``predict`` outputs: ``scores`` / ``labels`` (B, 26), ``mask`` (B,),
and optionally ``vad_pred`` / ``vad`` (B, 3), ``sentiment_pred`` / ``sentiment`` (B,).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from fer_jax.evaluators.base import Evaluator, png_path
from fer_jax.metrics import classification as cls_metrics
from fer_jax.metrics.multilabel import MultiLabelAP
from fer_jax.metrics.regression import MeanAbsoluteError
from fer_jax.registry import EVALUATORS
from fer_jax.train import plots

VAD_NAMES = ("valence", "arousal", "dominance")


@EVALUATORS.register("emotic")
class EmoticEvaluator(Evaluator):

  @property
  def category_names(self):
    return list(getattr(self.task, "category_names", None) or self.task.class_names)

  @property
  def sentiment_names(self):
    return list(getattr(self.task, "sentiment_names", ("negative", "neutral", "positive")))

  def run(self, predict_fn, dataset) -> Dict[str, Any]:
    ap = mae = cm = None
    count = 0
    for batch in dataset:
      out = predict_fn(batch)
      keep = np.asarray(out["mask"]).astype(bool).reshape(-1)
      count += int(keep.sum())
      m = MultiLabelAP.from_model_output(predictions=np.asarray(out["scores"]),
                                         labels=np.asarray(out["labels"]), mask=keep)
      ap = m if ap is None else ap.merge(m)
      if "vad_pred" in out:
        m = MeanAbsoluteError.from_model_output(predictions=np.asarray(out["vad_pred"]),
                                                labels=np.asarray(out["vad"]), mask=keep)
        mae = m if mae is None else mae.merge(m)
      if "sentiment_pred" in out:
        n = len(self.sentiment_names)
        c = cls_metrics.confusion_matrix(out["sentiment"], out["sentiment_pred"], n, keep)
        cm = c if cm is None else cm + c
    if ap is None or count == 0:
      raise ValueError(f"evaluator {self.name!r}: no evaluation examples")
    result: Dict[str, Any] = {**ap.compute(), "count": count}
    if mae is not None:
      result["vad_mae"] = mae.compute()
    if cm is not None:
      result["sentiment"] = cls_metrics.scores_from_confusion(cm)
      result["sentiment_confusion"] = cm
    return result

  def scalars(self, result):
    out = {"map": float(result["map"])}
    out.update({f"ap_{n}": float(a) for n, a in zip(self.category_names, result["ap"])})
    if "vad_mae" in result:
      out["vad_mae"] = float(np.mean(result["vad_mae"]))
      out.update({f"mae_{n}": float(v) for n, v in zip(VAD_NAMES, result["vad_mae"])})
    if "sentiment" in result:
      out["sentiment_accuracy"] = float(result["sentiment"]["accuracy"])
      out["sentiment_macro_f1"] = float(result["sentiment"]["macro_f1"])
    return out

  def to_json(self, result):
    out: Dict[str, Any] = {"map": float(result["map"]),
                           "ap": {n: float(a) for n, a in zip(self.category_names, result["ap"])},
                           "num_examples": int(result["count"])}
    if "vad_mae" in result:
      out["vad_mae"] = {n: float(v) for n, v in zip(VAD_NAMES, result["vad_mae"])}
      out["vad_mae_mean"] = float(np.mean(result["vad_mae"]))
    if "sentiment" in result:
      s = result["sentiment"]
      out["sentiment"] = {"accuracy": float(s["accuracy"]), "macro_f1": float(s["macro_f1"]),
                          "class_names": self.sentiment_names,
                          "f1": {n: float(f) for n, f in zip(self.sentiment_names, s["f1"])},
                          "support": {n: int(k) for n, k in zip(self.sentiment_names, s["support"])},
                          "confusion_matrix": np.asarray(result["sentiment_confusion"]).tolist()}
    out["summary"] = self.summary(result)
    return out

  def summary(self, result):
    text = f"mAP {result['map']:.4f}"
    if "vad_mae" in result:
      text += f"  VAD MAE {np.mean(result['vad_mae']):.4f}"
    if "sentiment" in result:
      s = result["sentiment"]
      text += f"  sentiment acc {s['accuracy']:.4f} macro-F1 {s['macro_f1']:.4f}"
    return text

  def report(self, result):
    lines = [f"{'category':>16s} {'AP':>8s}"]
    lines += [f"{n:>16s} {a:8.4f}" for n, a in zip(self.category_names, result["ap"])]
    return "\n".join(lines + [self.summary(result)])

  def plots(self, result, workdir, prefix, step):
    image = plots.save_bars({"AP": result["ap"]}, self.category_names, png_path(workdir, "emotic_ap", prefix),
                            title=f"{prefix} (step {step}): {self.summary(result)}")
    return {"emotic_ap": image}
