"""Per-frame valence / arousal regression on video clips for the shared trainer (``config.task='affect'``).

Frame models (``affect.sequence_model = False``: images (N, H, W, C) -> (N, D)) train on windows of
``affect.window`` frames reshaped into a batch of frames and are evaluated frame by frame; sequence models
(``True``: clips (N, T, H, W, C) -> (N, T, D)) see windows of T frames and are evaluated on dense sliding
windows whose overlapping predictions are averaged per frame (:mod:`fer_jax.data.clips`).

Loss (``config.loss``): ``kind`` 'l2' (mean squared error; Hasani & Mahoor's likely choice), 'ccc'
(1 - CCC on batch moments) or 'mix', with per-dimension ``dim_weights`` (:mod:`fer_jax.losses.affect`).

Evaluation as the Aff-Wild challenge scores it: every test frame once (frames stored in several clips
are averaged), RMSE, Pearson CC, CCC and SAGR per dimension pooled over all frames; the same per video
and their mean over videos; a valence-arousal density plot and per-video time series (PNG and
TensorBoard).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fer_jax.data import clips, pipeline
from fer_jax.losses import affect as affect_losses
from fer_jax.metrics import affect as affect_metrics
from fer_jax.train import plots
from fer_jax.train.preprocess import input_shape, preprocess_images

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


def affect_scores(predictions: np.ndarray, labels: np.ndarray, video: np.ndarray,
                  names) -> Dict[str, Any]:
  """Pooled, per-video and video-mean RMSE / CC / CCC / SAGR per dimension."""
  def table(p, y):
    m = affect_metrics.affect_metrics(p, y)
    return {n: {k: float(m[k][i]) for k in METRICS} for i, n in enumerate(names)}
  per_video = {}
  for v in np.unique(video):
    sel = video == v
    per_video[int(v)] = {"num_frames": int(sel.sum()), **table(predictions[sel], labels[sel])}
  with np.errstate(all="ignore"):
    import warnings
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      video_mean = {n: {k: float(np.nanmean([pv[n][k] for pv in per_video.values()])) for k in METRICS}
                    for n in names}
  return {"pooled": table(predictions, labels), "video_mean": video_mean, "per_video": per_video,
          "num_frames": int(len(labels)), "num_videos": len(per_video)}


def _gather_rows(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Concatenates every process's rows (padded to a common length for the all-gather)."""
  if jax.process_count() == 1:
    return arrays
  from jax.experimental import multihost_utils
  n = len(next(iter(arrays.values())))
  counts = np.asarray(multihost_utils.process_allgather(np.int64(n))).reshape(-1)
  size = int(counts.max())
  out = {}
  for k, v in arrays.items():
    padded = np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
    allv = np.asarray(multihost_utils.process_allgather(padded))
    out[k] = np.concatenate([allv[i, :c] for i, c in enumerate(counts)])
  return out


class AffectTask:
  """Valence / arousal (or any per-frame continuous targets) regression on clips."""

  name = "affect"

  def __init__(self, config: ml_collections.ConfigDict):
    if "affect" not in config:
      raise ValueError("config.task='affect' needs a config.affect section "
                       "(see fer_jax.config_utils.affect_config)")
    self.config = config
    self.clip = clips.clip_config_from(config.affect)
    self.names = tuple(self.clip.target_keys)
    self.sequence_model = bool(config.affect.get("sequence_model", False))
    self.train_log_keys = ("loss", "rmse") + tuple(f"ccc_{n}" for n in self.names)
    self.images_per_example = self.clip.window  # frames per training example
    self.train_apply_kwargs: Dict[str, Any] = {}
    kind = config.loss.get("kind", "l2")
    if kind not in ("l2", "mse", "ccc", "mix"):
      raise ValueError(f"config.loss.kind={kind!r}; expected 'l2', 'ccc' or 'mix'")
    self.video_names: Dict[int, str] = {}

  def set_names_from_builder(self, builder) -> None:
    """Checks that the dataset has the fields ``config.affect`` names."""
    features = builder.info.features
    c = self.clip
    wanted = [c.frames_key, c.video_key, *c.target_keys]
    wanted += [k for k in (c.mask_key, c.frame_index_key) if k]
    missing = [k for k in wanted if k not in features]
    if missing:
      raise ValueError(f"Dataset {builder.info.full_name} has no field(s) {missing} named in "
                       f"config.affect; its fields: {sorted(features.keys())}")
    length = features[c.frames_key].shape[0]
    if length is not None and c.span > length:
      raise ValueError(f"affect.window={c.window} at stride {c.stride} spans {c.span} frames; "
                       f"{builder.info.full_name} stores clips of {length} frames")

  # Steps (traced under jit).
  def init_input(self) -> jax.Array:
    shape = input_shape(self.config)
    lead = (1, self.clip.window) if self.sequence_model else (1,)
    return jnp.zeros(lead + shape, jnp.float32)

  def _run(self, apply_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """(N, T, h, w, c) -> (N, T, D) with a frame or a sequence model."""
    n, t = x.shape[:2]
    if self.sequence_model:
      out = apply_fn(x)
    else:
      out = apply_fn(x.reshape((n * t,) + x.shape[2:]))
    return out.reshape(n, t, -1).astype(jnp.float32)

  def model_input(self, batch: Dict[str, jax.Array]) -> jax.Array:
    x = preprocess_images(batch["frames"], self.config)
    return x if self.sequence_model else x.reshape((-1,) + x.shape[2:])

  def loss(self, outputs: jax.Array, batch: Dict[str, jax.Array]) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    targets, mask = batch["targets"], batch["mask"]
    pred = outputs.astype(jnp.float32).reshape(targets.shape)
    lc = self.config.loss
    dim_weights = lc.get("dim_weights")
    loss = affect_losses.affect_regression_loss(
        pred, targets, lc.get("kind", "l2"), mask=mask, mix_alpha=lc.get("mix_alpha", 0.5),
        dim_weights=None if dim_weights is None else jnp.asarray(dim_weights, jnp.float32))
    metrics = {"rmse": jnp.sqrt(affect_losses.mse_loss(pred, targets, mask))}
    ccc = affect_losses.batch_ccc(pred, targets, mask)  # pooled over all frames of the batch
    for i, n in enumerate(self.names):
      metrics[f"ccc_{n}"] = ccc[i]
    return loss, metrics

  def eval_window_indices(self, length: int) -> np.ndarray:
    c = self.clip
    if not self.sequence_model:
      return clips.window_indices(length, 1)
    return clips.window_indices(length, c.window, c.stride, c.eval_hop)

  def eval_step(self, apply_fn: Callable[[jax.Array], jax.Array],
                batch: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """Whole clips (B, L, ...) -> per-frame predictions (B, L, D), overlapping windows averaged."""
    frames = batch["frames"]
    b, length = frames.shape[:2]
    idx = self.eval_window_indices(length)
    x = preprocess_images(frames, self.config)[:, idx]  # (B, nW, T, h, w, c)
    nw, t = idx.shape
    out = self._run(apply_fn, x.reshape((b * nw, t) + x.shape[3:]))
    per_frame = clips.average_overlapping(out.reshape(b, nw, t, -1), idx, length)
    return {"predictions": per_frame, "targets": batch["targets"], "mask": batch["mask"],
            "video": batch["video"], "frame_index": batch["frame_index"]}

  # Input pipelines.
  def train_dataset(self, source, aug: pipeline.AugmentConfig, **kwargs):
    return clips.clip_train_dataset(source, aug, self.clip, **kwargs)

  def eval_dataset(self, source, aug: pipeline.AugmentConfig, **kwargs):
    return clips.clip_eval_dataset(source, aug, self.clip, **kwargs)

  # Evaluation on the host.
  def evaluate(self, jit_eval_step, params, model_state, dataset, to_global) -> Dict[str, Any]:
    rows: Dict[str, list] = {k: [] for k in ("video", "frame_index", "predictions", "targets")}
    for batch in dataset:
      names = batch.pop("video_name", None)
      out = jax.device_get(jit_eval_step(params, model_state, to_global(batch)))
      n_local = batch["mask"].shape[0]
      lo = jax.process_index() * n_local if jax.process_count() > 1 else 0
      out = {k: np.asarray(v)[lo:lo + n_local] for k, v in out.items()}
      keep = out["mask"].astype(bool)
      if names is not None:
        for v, name in zip(out["video"], names):
          self.video_names.setdefault(int(v), clips.video_key_to_str(name))
      rows["video"].append(np.broadcast_to(out["video"][:, None], keep.shape)[keep])
      rows["frame_index"].append(out["frame_index"][keep])
      rows["predictions"].append(out["predictions"][keep])
      rows["targets"].append(out["targets"][keep])
    d = len(self.names)
    arrays = {k: (np.concatenate(v) if v else np.zeros((0, d) if k in ("predictions", "targets") else (0,)))
              for k, v in rows.items()}
    arrays = _gather_rows(arrays)
    video, frame, pred, lab = dedupe_frames(arrays["video"], arrays["frame_index"],
                                            arrays["predictions"], arrays["targets"])
    scores = affect_scores(pred, lab, video, self.names)
    return {"scores": scores, "video": video, "frame_index": frame, "predictions": pred, "labels": lab}

  def _video_name(self, v: int) -> str:
    return self.video_names.get(int(v), str(v))

  def write(self, writer, workdir: str, prefix: str, step: int, result: Dict[str, Any],
            plot: bool) -> None:
    s = result["scores"]
    scalars = {}
    for n in self.names:
      for k in METRICS:
        scalars[f"{prefix}/{k}_{n}"] = s["pooled"][n][k]
        scalars[f"{prefix}/video_mean_{k}_{n}"] = s["video_mean"][n][k]
    writer.write_scalars(step, scalars)
    if not plot or jax.process_index() != 0 or not len(result["labels"]):
      return
    # Per-frame predictions for challenge submissions and offline analysis (no pickles: plain arrays).
    np.savez(os.path.join(workdir, f"predictions_{prefix}.npz"),
             video=np.array([self._video_name(v) for v in result["video"]]),
             frame_index=result["frame_index"], predictions=result["predictions"],
             labels=result["labels"], names=np.array(self.names))
    pooled = s["pooled"]
    title = f"{prefix} (step {step}): " + ", ".join(
        f"CCC {n} {pooled[n]['ccc']:.3f}" for n in self.names)
    scatter = plots.save_va_scatter(result["predictions"], result["labels"],
                                    os.path.join(workdir, f"va_scatter_{prefix}.png"), self.names, title)
    # Time series of the longest videos (ties: smallest key), at most six.
    vids, counts = np.unique(result["video"], return_counts=True)
    chosen = vids[np.lexsort((vids, -counts))][:6]
    series = {}
    for v in chosen:
      sel = result["video"] == v
      series[self._video_name(v)] = {"frame_index": result["frame_index"][sel],
                                     "predictions": result["predictions"][sel],
                                     "labels": result["labels"][sel]}
    timeseries = plots.save_va_timeseries(series, os.path.join(workdir, f"va_timeseries_{prefix}.png"),
                                          self.names, title)
    writer.write_images(step, {f"{prefix}/va_scatter": scatter[None],
                               f"{prefix}/va_timeseries": timeseries[None]})

  def to_json(self, result: Dict[str, Any]) -> Dict[str, Any]:
    s = result["scores"]
    return {"summary": self.summary(result), "pooled": s["pooled"], "video_mean": s["video_mean"],
            "num_frames": s["num_frames"], "num_videos": s["num_videos"],
            "per_video": {self._video_name(v): m for v, m in s["per_video"].items()}}

  def summary(self, result: Dict[str, Any]) -> str:
    p = result["scores"]["pooled"]
    return "  ".join(f"{n}: CCC {p[n]['ccc']:.4f} RMSE {p[n]['rmse']:.4f} CC {p[n]['pcc']:.4f} "
                     f"SAGR {p[n]['sagr']:.4f}" for n in self.names)

  def report(self, result: Dict[str, Any]) -> str:
    s = result["scores"]
    lines = [f"{'':18s}" + "".join(f"{k.upper():>9s}" for k in METRICS)]
    for scope in ("pooled", "video_mean"):
      for n in self.names:
        lines.append(f"{scope + ' ' + n:18s}" + "".join(f"{s[scope][n][k]:9.4f}" for k in METRICS))
    lines.append(f"{s['num_frames']} frames in {s['num_videos']} videos")
    return "\n".join(lines)
