"""``action_units``: per-AU Pearson CC and mean absolute error of the predicted intensities, and AU
presence (intensity > ``threshold``) average precision / mAP with the predicted intensity as the
score; a bar chart PNG. Metrics stream through the clu classes ``AffectMoments`` (CC),
``MeanAbsoluteError`` and ``MultiLabelAP``."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from fer_jax.evaluators.base import Evaluator, png_path
from fer_jax.metrics.affect import AffectMoments
from fer_jax.metrics.multilabel import MultiLabelAP
from fer_jax.metrics.regression import MeanAbsoluteError
from fer_jax.registry import EVALUATORS
from fer_jax.train import plots


@EVALUATORS.register("action_units")
class ActionUnitEvaluator(Evaluator):

  def __init__(self, task, name, threshold=None, **options):
    super().__init__(task, name, **options)
    self.names = tuple(task.au_names)
    self.threshold = float(task.threshold if threshold is None else threshold)

  def run(self, predict_fn, dataset) -> Dict[str, Any]:
    k = len(self.names)
    cc, mae, ap = AffectMoments.empty(k), MeanAbsoluteError.empty(k), None
    for batch in dataset:
      out = predict_fn(batch)
      keep = np.asarray(out["mask"]).astype(bool)
      p, y = np.asarray(out["predictions"])[keep], np.asarray(out["targets"])[keep]
      if not len(p):
        continue
      cc = cc.merge(AffectMoments.from_model_output(predictions=p, labels=y))
      mae = mae.merge(MeanAbsoluteError.from_model_output(predictions=p, labels=y))
      m = MultiLabelAP.from_model_output(predictions=p, labels=(y > self.threshold).astype(np.float32))
      ap = m if ap is None else ap.merge(m)
    if ap is None:
      raise ValueError(f"evaluator {self.name!r}: no evaluation examples")
    aps = ap.compute()
    return {"pcc": cc.compute_arrays()["pcc"], "mae": mae.compute(), "ap": aps["ap"], "map": aps["map"],
            "count": int(np.asarray(cc.count).reshape(-1)[0])}

  def scalars(self, result):
    out = {"mean_pcc": float(np.nanmean(result["pcc"])), "mean_mae": float(np.mean(result["mae"])),
           "map": float(result["map"])}
    for i, n in enumerate(self.names):
      out.update({f"pcc_{n}": result["pcc"][i], f"mae_{n}": result["mae"][i], f"ap_{n}": result["ap"][i]})
    return out

  def to_json(self, result):
    per_au = {n: {"pcc": float(result["pcc"][i]), "mae": float(result["mae"][i]), "ap": float(result["ap"][i])}
              for i, n in enumerate(self.names)}
    return {"mean_pcc": float(np.nanmean(result["pcc"])), "mean_mae": float(np.mean(result["mae"])),
            "map": float(result["map"]), "presence_threshold": self.threshold, "per_au": per_au,
            "num_examples": result["count"], "summary": self.summary(result)}

  def summary(self, result):
    return (f"AU mean CC {np.nanmean(result['pcc']):.4f}  mean MAE {np.mean(result['mae']):.4f}  "
            f"presence mAP {result['map']:.4f}")

  def report(self, result):
    lines = [f"{'AU':>6s} {'CC':>8s} {'MAE':>8s} {'AP':>8s}"]
    for i, n in enumerate(self.names):
      lines.append(f"{n:>6s} {result['pcc'][i]:8.4f} {result['mae'][i]:8.4f} {result['ap'][i]:8.4f}")
    return "\n".join(lines + [self.summary(result)])

  def plots(self, result, workdir, prefix, step):
    image = plots.save_bars({"CC": result["pcc"], "AP": result["ap"], "MAE": result["mae"]}, self.names,
                            png_path(workdir, "action_units", prefix),
                            title=f"{prefix} (step {step}): {self.summary(result)}")
    return {"action_units": image}
