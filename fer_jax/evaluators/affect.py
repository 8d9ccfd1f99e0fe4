"""``affect``: valence / arousal scored as the Aff-Wild challenge does.

Every test frame once (frames stored in several clips are averaged, labels must agree), RMSE,
Pearson CC, CCC and SAGR per dimension pooled over all frames, the same per video and their mean over
videos, all through the clu metric ``fer_jax.metrics.affect.AffectMoments``; a valence-arousal density
plot and per-video time series (PNG and TensorBoard), and the per-frame predictions as an ``.npz``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Tuple

import jax
import numpy as np

from fer_jax.data import clips
from fer_jax.evaluators.base import Evaluator, png_path
from fer_jax.metrics.affect import AffectMoments
from fer_jax.registry import EVALUATORS
from fer_jax.train import plots

METRICS = ("rmse", "pcc", "ccc", "sagr")


def dedupe_frames(video: np.ndarray, frame_index: np.ndarray, predictions: np.ndarray,
                  labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """One row per (video, frame): predictions of repeated frames averaged, labels must agree."""
  keys = np.stack([video.astype(np.int64), frame_index.astype(np.int64)], 1)
  uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)[:, None]
  pred = np.zeros((len(uniq), predictions.shape[1]))
  np.add.at(pred, inverse, predictions)
  lab = np.zeros((len(uniq), labels.shape[1]))
  np.add.at(lab, inverse, labels)
  lab /= counts
  if np.abs(lab[inverse] - labels).max(initial=0.0) > 1e-6:
    raise ValueError("The same (video, frame) has different labels in different clips")
  return uniq[:, 0], uniq[:, 1], pred / counts, lab


def _table(metric: AffectMoments, names) -> Dict[str, Dict[str, float]]:
  m = metric.compute_arrays()
  return {n: {k: float(m[k][i]) for k in METRICS} for i, n in enumerate(names)}


def affect_scores(predictions: np.ndarray, labels: np.ndarray, video: np.ndarray, names) -> Dict[str, Any]:
  """Pooled, per-video and video-mean RMSE / CC / CCC / SAGR per dimension (clu AffectMoments)."""
  d = len(names)
  pooled = AffectMoments.empty(d)
  per_video = {}
  for v in np.unique(video):
    sel = video == v
    m = AffectMoments.from_model_output(predictions=predictions[sel], labels=labels[sel])
    pooled = pooled.merge(m)
    per_video[int(v)] = {"num_frames": int(sel.sum()), **_table(m, names)}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    video_mean = {n: {k: float(np.nanmean([pv[n][k] for pv in per_video.values()])) for k in METRICS}
                  for n in names}
  return {"pooled": _table(pooled, names), "video_mean": video_mean, "per_video": per_video,
          "num_frames": int(len(labels)), "num_videos": len(per_video)}


@EVALUATORS.register("affect")
class AffectEvaluator(Evaluator):

  def __init__(self, task, name, **options):
    super().__init__(task, name, **options)
    self.names = tuple(task.names)
    self.video_names: Dict[int, str] = {}

  def run(self, predict_fn, dataset) -> Dict[str, Any]:
    rows: Dict[str, list] = {k: [] for k in ("video", "frame_index", "predictions", "targets")}
    for batch in dataset:
      names = batch.get("video_name")
      out = predict_fn(batch)
      keep = np.asarray(out["mask"]).astype(bool)
      if names is not None:  # host-local names of this process's rows
        n_local = len(names)
        lo = jax.process_index() * n_local if jax.process_count() > 1 else 0
        for v, name in zip(np.asarray(out["video"])[lo:lo + n_local], names):
          self.video_names.setdefault(int(v), clips.video_key_to_str(name))
      rows["video"].append(np.broadcast_to(np.asarray(out["video"])[:, None], keep.shape)[keep])
      rows["frame_index"].append(np.asarray(out["frame_index"])[keep])
      rows["predictions"].append(np.asarray(out["predictions"])[keep])
      rows["targets"].append(np.asarray(out["targets"])[keep])
    d = len(self.names)
    arrays = {k: (np.concatenate(v) if v else np.zeros((0, d) if k in ("predictions", "targets") else (0,)))
              for k, v in rows.items()}
    video, frame, pred, lab = dedupe_frames(arrays["video"], arrays["frame_index"], arrays["predictions"],
                                            arrays["targets"])
    return {"scores": affect_scores(pred, lab, video, self.names), "video": video, "frame_index": frame,
            "predictions": pred, "labels": lab}

  def _video_name(self, v: int) -> str:
    return self.video_names.get(int(v), str(v))

  def scalars(self, result):
    s = result["scores"]
    out = {}
    for n in self.names:
      for k in METRICS:
        out[f"{k}_{n}"] = s["pooled"][n][k]
        out[f"video_mean_{k}_{n}"] = s["video_mean"][n][k]
    return out

  def to_json(self, result):
    s = result["scores"]
    return {"summary": self.summary(result), "pooled": s["pooled"], "video_mean": s["video_mean"],
            "num_frames": s["num_frames"], "num_videos": s["num_videos"],
            "per_video": {self._video_name(v): m for v, m in s["per_video"].items()}}

  def summary(self, result):
    p = result["scores"]["pooled"]
    return "  ".join(f"{n}: CCC {p[n]['ccc']:.4f} RMSE {p[n]['rmse']:.4f} CC {p[n]['pcc']:.4f} "
                     f"SAGR {p[n]['sagr']:.4f}" for n in self.names)

  def report(self, result):
    s = result["scores"]
    lines = [f"{'':18s}" + "".join(f"{k.upper():>9s}" for k in METRICS)]
    for scope in ("pooled", "video_mean"):
      for n in self.names:
        lines.append(f"{scope + ' ' + n:18s}" + "".join(f"{s[scope][n][k]:9.4f}" for k in METRICS))
    lines.append(f"{s['num_frames']} frames in {s['num_videos']} videos")
    return "\n".join(lines)

  def plots(self, result, workdir, prefix, step):
    if not len(result["labels"]):
      return {}
    # Per-frame predictions for challenge submissions and offline analysis (no pickles: plain arrays).
    np.savez(os.path.join(workdir, f"predictions_{prefix}.npz"),
             video=np.array([self._video_name(v) for v in result["video"]]),
             frame_index=result["frame_index"], predictions=result["predictions"],
             labels=result["labels"], names=np.array(self.names))
    pooled = result["scores"]["pooled"]
    title = f"{prefix} (step {step}): " + ", ".join(f"CCC {n} {pooled[n]['ccc']:.3f}" for n in self.names)
    scatter = plots.save_va_scatter(result["predictions"], result["labels"],
                                    png_path(workdir, "va_scatter", prefix), self.names, title)
    # Time series of the longest videos (ties: smallest key), at most six.
    vids, counts = np.unique(result["video"], return_counts=True)
    series = {}
    for v in vids[np.lexsort((vids, -counts))][:6]:
      sel = result["video"] == v
      series[self._video_name(v)] = {"frame_index": result["frame_index"][sel],
                                     "predictions": result["predictions"][sel],
                                     "labels": result["labels"][sel]}
    timeseries = plots.save_va_timeseries(series, png_path(workdir, "va_timeseries", prefix), self.names,
                                          title)
    return {"va_scatter": scatter, "va_timeseries": timeseries}
