"""Which landmarks each emotion model looks at: Integrated Gradients over the landmark sequence, per
landmark, per emotion, with heat maps on a face.

For each emotion k, its model's logit F_k is explained on every clip of emotion k in the split
(Sundararajan et al. 2017, eq. 1; ``fer_jax.explain.integrated_gradients``, Gauss-Legendre, ``n_steps``
points) with respect to the NORMALISED landmark clip z (B, T, 68, 2) (translation, roll and size removed:
``members.Member.normalize``), then (PAPERS.md section 4: the paper's "improved IG" ranks landmarks; its
exact change is unknown, we chose the reading below)

* relevance of landmark l in one clip = sum over frames t and over x, y of |IG_{t,l,c}|
  (``fer_jax.explain.regions.aggregate_landmark_attributions``, reduce 'sum_abs');
* relevance of l for emotion k = its mean over the clips of emotion k; ``share`` = that divided by its sum
  over landmarks (so emotions compare);
* global relevance = the sum over emotions of the shares (each emotion weighs the same), the ranking
  used for pruning (``fer_jax.emotion_bank.pruning``).

Baseline (we chose; the paper's summary says "neutral face"): ``'first'`` (default) repeats the clip's
own first frame, which is neutral in these clips (the clips go from neutral to the apex), over all T
frames. The path then morphs the person's own neutral face into the expression, so identity (face shape)
gets no attribution, only the expression's motion; frame 0 gets exactly 0 and the displacement channels
of the baseline are 0. ``'mean'`` repeats the mean normalised first frame of the validation split (a
mean neutral face): attributions then also include how this face differs from the average one. A clip
that does not start neutral needs ``'mean'``.

Completeness (the IG axiom: sum IG = F(z) - F(baseline)) is measured per clip (``delta``) and reported
as a share of |F(z) - F(baseline)|. For the binary variant the function is piecewise constant in z (the
sign activations) and its gradients are the straight-through estimator's, so IG there is a heuristic
and completeness does not hold; the report says by how much it misses.

The heat maps draw the 68 points on the mean neutral face (normalised coordinates), one panel per
emotion plus the global relevance, and, given a clip folder in the AFEW-VA layout (``afew_va``: PNG
frames + ``<clip>.json`` with 68 (x, y) landmarks per frame), on that real face. The same real clip
goes through the bank (normalisation as in training, 16-frame windows) as a check of the landmark
front end on genuine annotations: its eye line must come out horizontal with inter-ocular distance 1.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.emotion_bank import bank as bank_lib
from fer_jax.emotion_bank import members as members_lib
from fer_jax.explain import regions
from fer_jax.explain.integrated_gradients import integrated_gradients

BASELINES = ("first", "mean")

__all__ = ["BASELINES", "make_baseline", "ig_clips", "clip_relevance", "emotion_relevance", "global_relevance",
           "explain_bank", "load_afew_va", "face_heatmap_figure", "real_face_heatmap_figure"]


# ----------------------------------------------------------------------------------------------------
# Numbers.
# ----------------------------------------------------------------------------------------------------

def make_baseline(z, kind: str = "first", mean_face=None) -> jax.Array:
  """Baselines (B, T, L, 2) for normalised clips z: the first frame repeated, or ``mean_face`` (L, 2)."""
  z = jnp.asarray(z, jnp.float32)
  if kind == "first":
    return jnp.broadcast_to(z[:, :1], z.shape)
  if kind == "mean":
    if mean_face is None or np.shape(mean_face) != z.shape[2:]:
      raise ValueError(f"baseline='mean' needs mean_face of shape {z.shape[2:]}, got "
                       f"{None if mean_face is None else np.shape(mean_face)}")
    return jnp.broadcast_to(jnp.asarray(mean_face, jnp.float32), z.shape)
  raise ValueError(f"baseline={kind!r}; expected one of {BASELINES}")


_IG: Dict[Tuple[str, int, str, Optional[int]], Any] = {}


def _ig_fn(member: members_lib.Member, n_steps: int, method: str, internal_batch_size: Optional[int]):
  """The jitted IG of ``member``'s architecture (variables are an argument: one compile per bank)."""
  key = (member.signature, n_steps, method, internal_batch_size)
  if key in _IG:
    return _IG[key]

  def run(variables, z, base):
    fn = functools.partial(member.logit_of_normalized, variables=variables)
    attr, delta = integrated_gradients(fn, z, baselines=base, n_steps=n_steps, method=method,
                                       internal_batch_size=internal_batch_size, return_convergence_delta=True)
    ends = fn(jnp.concatenate([z, base]))
    return attr, delta, ends[:z.shape[0]], ends[z.shape[0]:]
  _IG[key] = jax.jit(run)
  return _IG[key]


def ig_clips(member: members_lib.Member, z, baseline, n_steps: int = 32, method: str = "gausslegendre",
             internal_batch_size: Optional[int] = 4096, pad_to: int = 16) -> Dict[str, np.ndarray]:
  """IG of the member's logit at normalised clips z (B, T, L, 2) from ``baseline`` (same shape); the batch
  is padded to a multiple of ``pad_to`` clips (copies of the first, dropped from the results).

  Returns ``attributions`` (B, T, L, 2), ``delta`` (B,) = sum IG - (F(z) - F(baseline)), ``logit`` F(z)
  and ``baseline_logit`` F(baseline)."""
  z = jnp.asarray(z, jnp.float32)
  base = jnp.asarray(baseline, jnp.float32)
  n = z.shape[0]
  pad = -n % pad_to  # a few batch sizes only: one compile serves the emotions of a bank
  if pad:
    z, base = (jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]) for a in (z, base))
  attr, delta, fz, fb = _ig_fn(member, int(n_steps), method, internal_batch_size)(member.variables, z, base)
  return {"attributions": np.asarray(attr)[:n], "delta": np.asarray(delta)[:n], "logit": np.asarray(fz)[:n],
          "baseline_logit": np.asarray(fb)[:n]}


def clip_relevance(attributions) -> np.ndarray:
  """(B, T, L, 2) attributions -> (B, L): |IG| summed over frames and x, y."""
  a = np.asarray(attributions)
  return regions.aggregate_landmark_attributions(a, reduce="sum_abs", over_axes=(1,), num_landmarks=a.shape[-2])


def emotion_relevance(attributions) -> np.ndarray:
  """(B, T, L, 2) attributions of one emotion's clips -> (L,): the mean over clips of ``clip_relevance``."""
  return clip_relevance(attributions).mean(axis=0)


def global_relevance(per_emotion) -> np.ndarray:
  """(K, L) relevance -> (L,) sum over emotions of each emotion's share (row divided by its sum)."""
  r = np.asarray(per_emotion, np.float64)
  totals = r.sum(axis=1, keepdims=True)
  if np.any(totals <= 0):
    raise ValueError(f"emotion rows {np.flatnonzero(totals[:, 0] <= 0).tolist()} have no relevance at all")
  return (r / totals).sum(axis=0)


def completeness_error(delta, logit, baseline_logit) -> np.ndarray:
  """|delta| / |F(z) - F(baseline)| per clip (inf where the two logits are equal and delta is not 0)."""
  diff = np.abs(np.asarray(logit, np.float64) - np.asarray(baseline_logit, np.float64))
  d = np.abs(np.asarray(delta, np.float64))
  return np.divide(d, diff, out=np.where(d > 0, np.inf, 0.0), where=diff > 0)


# ----------------------------------------------------------------------------------------------------
# AFEW-VA (a genuine clip with 68 annotated landmarks per frame).
# ----------------------------------------------------------------------------------------------------

def load_afew_va(folder: str) -> Dict[str, Any]:
  """A clip folder of the AFEW-VA release: ``{'landmarks' (N, 68, 2) float32 in frame pixels, 'frames'
  (names), 'image_path' (the first frame's PNG), 'valence', 'arousal' (N,)}``."""
  found = sorted(glob.glob(os.path.join(folder, "*.json")))
  if len(found) != 1:
    raise FileNotFoundError(f"{folder}: expected one <clip>.json (AFEW-VA layout), found {found or 'none'}")
  with open(found[0]) as f:
    data = json.load(f)
  frames = data.get("frames") if isinstance(data, dict) else None
  if not isinstance(frames, dict) or not frames:
    raise ValueError(f"{found[0]}: expected a 'frames' object with one entry per frame")
  names = sorted(frames)
  lms = []
  for n in names:
    lm = np.asarray(frames[n].get("landmarks"), np.float32)
    if lm.shape != (68, 2):
      raise ValueError(f"{found[0]}: frame {n!r} has landmarks of shape {lm.shape}; expected (68, 2)")
    lms.append(lm)
  image = os.path.join(folder, names[0] + ".png")
  return {"landmarks": np.stack(lms), "frames": names, "image_path": image if os.path.exists(image) else None,
          "valence": np.array([frames[n].get("valence", np.nan) for n in names], np.float32),
          "arousal": np.array([frames[n].get("arousal", np.nan) for n in names], np.float32)}


def clip_windows(landmarks: np.ndarray, num_frames: int) -> Tuple[np.ndarray, List[int]]:
  """(N, L, 2) -> (W, num_frames, L, 2) windows starting at 0, hop num_frames - 3 (the last one ending at
  frame N - 1), and their start frames."""
  n = landmarks.shape[0]
  if n < num_frames:
    raise ValueError(f"the clip has {n} frames; the models need windows of {num_frames}")
  starts = list(range(0, n - num_frames + 1, max(num_frames - 3, 1)))
  if starts[-1] != n - num_frames:
    starts.append(n - num_frames)
  return np.stack([landmarks[s:s + num_frames] for s in starts]), starts


def _front_end_check(member: members_lib.Member, windows: np.ndarray) -> Dict[str, float]:
  """Eye line angle (degrees) and inter-ocular distance of each normalised window's first frame."""
  z = np.asarray(member.normalize(windows))
  right, left = (z[:, 0, list(e)].mean(axis=1) for e in member.task.eyes)
  d = left - right
  return {"max_abs_eye_angle_deg": float(np.max(np.abs(np.degrees(np.arctan2(d[:, 1], d[:, 0]))))),
          "iod_min": float(np.hypot(d[:, 0], d[:, 1]).min()), "iod_max": float(np.hypot(d[:, 0], d[:, 1]).max())}


# ----------------------------------------------------------------------------------------------------
# Pictures.
# ----------------------------------------------------------------------------------------------------

_CLOSED = ("right_eye", "left_eye", "outer_lips", "inner_lips")


def _draw_face(ax, face: np.ndarray, values: np.ndarray, title: str, top: int = 5, size: float = 260.0,
               colour: str = "0.6") -> None:
  """One panel: the face's outline (landmark groups joined) and its 68 points coloured / sized by value."""
  for name, idx in regions.LANDMARK_GROUPS.items():
    idx = list(idx) + ([idx[0]] if name in _CLOSED else [])
    ax.plot(face[idx, 0], face[idx, 1], "-", color=colour, lw=0.8, zorder=1)
  v = np.asarray(values, np.float64)
  scaled = v / v.max() if v.max() > 0 else v
  ax.scatter(face[:, 0], face[:, 1], c=scaled, cmap="inferno_r", vmin=0, vmax=1, s=8 + size * scaled,
             edgecolors="k", linewidths=0.3, zorder=2)
  for i in np.argsort(-v, kind="stable")[:top]:
    ax.annotate(str(i), face[i], fontsize=6, color="tab:blue", xytext=(3, 3), textcoords="offset points")
  ax.set_title(title, fontsize=8)
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks([])


def face_heatmap_figure(face, panels: Sequence[Tuple[str, np.ndarray]], suptitle: str = "", size: float = 260.0,
                        top: Union[int, Sequence[int]] = 5):
  """Panels (title, (68,) relevance) drawn on one face geometry (68, 2), y pointing down; marker area up to
  ``size``; the indices of the ``top`` most relevant points written (one count, or one per panel)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  face = np.asarray(face, np.float64)
  fig, axes = _panel_grid(plt, len(panels), 3.2)
  tops = [top] * len(panels) if isinstance(top, int) else list(top)
  for ax, (title, values), n in zip(axes.flat, panels, tops):
    _draw_face(ax, face, values, title, top=n, size=size)
    ax.invert_yaxis()
  return _finish_grid(fig, axes, len(panels), suptitle)


def _panel_grid(plt, n: int, height: float, cols: int = 3):
  """A figure of ``n`` panels, ``cols`` per row, each 3.0 x ``height`` inches."""
  rows = -(-n // cols)
  return plt.subplots(rows, cols, figsize=(3.0 * cols, height * rows), dpi=110, squeeze=False)


def _finish_grid(fig, axes, n: int, suptitle: str):
  """Blanks the unused panels, adds the title, tightens the layout."""
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  if suptitle:
    fig.suptitle(suptitle, fontsize=9)
  fig.tight_layout()
  return fig


def real_face_heatmap_figure(image, landmarks, panels: Sequence[Tuple[str, np.ndarray]], suptitle: str = "",
                             margin: float = 0.25):
  """The same panels drawn over a real frame (H, W, 3) with its 68 landmarks (x, y) in pixels, cropped to
  the landmarks' box plus ``margin``; ``image=None`` draws the landmarks' geometry alone."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lm = np.asarray(landmarks, np.float64)
  lo, hi = lm.min(0), lm.max(0)
  pad = margin * (hi - lo)
  if image is None:  # the annotated geometry alone
    crop, (x0, y0) = None, lo - pad
  else:
    img = np.asarray(image)
    x0, y0 = np.maximum(lo - pad, 0).astype(int)
    x1, y1 = np.minimum(hi + pad, [img.shape[1] - 1, img.shape[0] - 1]).astype(int)
    crop = img[y0:y1 + 1, x0:x1 + 1]
  pts = lm - [x0, y0]
  fig, axes = _panel_grid(plt, len(panels), 3.3)
  for ax, (title, values) in zip(axes.flat, panels):
    if crop is None:
      _draw_face(ax, pts, values, title, size=160.0)
      ax.set_xlim(0, hi[0] - lo[0] + 2 * pad[0])
      ax.set_ylim(hi[1] - lo[1] + 2 * pad[1], 0)
    else:
      ax.imshow(crop, cmap="gray" if crop.ndim == 2 else None)
      _draw_face(ax, pts, values, title, size=160.0, colour="w")
  return _finish_grid(fig, axes, len(panels), suptitle)


def _save_figure(fig, path: str) -> str:
  from fer_jax.train import plots
  from PIL import Image
  Image.fromarray(plots.figure_to_array(fig)).save(path)
  return path


# ----------------------------------------------------------------------------------------------------
# The bank.
# ----------------------------------------------------------------------------------------------------

def load_bank(bank_dir: str) -> Tuple[Dict[str, Any], List[members_lib.Member]]:
  """(bank.json, the finished members in class order); every wanted emotion must be finished."""
  with open(os.path.join(bank_dir, bank_lib.BANK_FILE)) as f:
    meta = json.load(f)
  names = meta["class_names"]
  wanted = [k for k in range(len(names)) if meta["train_counts"][k] > 0]
  missing = [names[k] for k in wanted if not os.path.exists(os.path.join(bank_dir, names[k], bank_lib.SCORES_FILE))]
  if missing:
    raise FileNotFoundError(f"{bank_dir}: the models of {missing} are not finished; run fer-jax emotion-bank first")
  return meta, [members_lib.load_member(os.path.join(bank_dir, names[k])) for k in wanted]


def explain_bank(bank_dir: str, split: str = "test", baseline: str = "first", n_steps: int = 32,
                 afew_va: Optional[str] = None, plot: bool = True, log=print,
                 loaded: Optional[Tuple[Dict[str, Any], List[members_lib.Member]]] = None) -> Dict[str, Any]:
  """IG relevance of every emotion's model on its clips of ``split``; writes ``relevance_<split>.npz`` /
  ``.json``, ``heatmap_mean_face.png`` (and, with ``afew_va``, ``heatmap_afew_va_geometry.png`` (the
  annotated points alone), ``heatmap_afew_va.png`` (over the frame) and the bank's probabilities on that
  clip). Returns the numbers and a markdown summary."""
  if baseline not in BASELINES:
    raise ValueError(f"baseline={baseline!r}; expected one of {BASELINES}")
  meta, members = loaded or load_bank(bank_dir)
  names = meta["class_names"]
  first = members[0]
  clips, labels = members_lib.split_clips(first.exp, split)
  val_clips, _ = members_lib.split_clips(first.exp, "validation")
  mean_face = np.asarray(first.normalize(val_clips[:, :1])).mean(axis=0)[0]  # (L, 2)
  rel, per_clip, rows = [], {}, []
  for m in members:
    k = m.positive_class
    pos = labels == k
    if not pos.any():
      raise ValueError(f"split {split!r} has no clips of {names[k]!r} to explain")
    z = m.normalize(clips[pos])
    res = ig_clips(m, z, make_baseline(z, baseline, mean_face), n_steps=n_steps)
    err = completeness_error(res["delta"], res["logit"], res["baseline_logit"])
    pc = clip_relevance(res["attributions"])
    per_clip[names[k]] = pc
    rel.append(pc.mean(axis=0))
    rows.append({"emotion": names[k], "clips": int(pos.sum()), "mean_logit": float(res["logit"].mean()),
                 "mean_baseline_logit": float(res["baseline_logit"].mean()),
                 "completeness_error_median": float(np.median(err)),
                 "completeness_error_p90": float(np.percentile(err, 90)),
                 "ranking": regions.rank_landmarks(rel[-1]).tolist()})
    log(f"IG {names[k]}: {int(pos.sum())} clips, completeness error median {100 * np.median(err):.2f}%")
  rel = np.stack(rel)
  glob_rel = global_relevance(rel)
  shares = rel / rel.sum(axis=1, keepdims=True)
  coarse = {r["emotion"]: {g: float(v) for g, v in regions.aggregate_by_groups(s, "coarse").items()}
            for r, s in zip(rows, shares)}
  out: Dict[str, Any] = {"split": split, "baseline": baseline, "n_steps": n_steps, "variant": meta["variant"],
                         "emotions": rows, "global_ranking": regions.rank_landmarks(glob_rel).tolist(),
                         "coarse_shares": coarse, "landmarks": meta.get("landmarks")}
  np.savez(os.path.join(bank_dir, f"relevance_{split}.npz"), relevance=rel, global_relevance=glob_rel,
           mean_face=mean_face, emotions=np.array([r["emotion"] for r in rows]),
           **{f"clips_{n}": v for n, v in per_clip.items()})
  if plot:
    panels = [(f"{r['emotion']} (top: {', '.join(map(str, r['ranking'][:3]))})", v) for r, v in zip(rows, rel)]
    panels.append(("all emotions (sum of shares)", glob_rel))
    title = (f"{meta['variant']}: |IG| per landmark, {split} clips of each emotion, baseline '{baseline}'")
    out["heatmap_mean_face"] = _save_figure(face_heatmap_figure(mean_face, panels, title),
                                            os.path.join(bank_dir, "heatmap_mean_face.png"))
    if afew_va:
      out["afew_va"] = _afew_va(bank_dir, afew_va, members, panels, title, meta)
  with open(os.path.join(bank_dir, f"relevance_{split}.json"), "w") as f:
    json.dump(out, f, indent=2)
  out["relevance"], out["global_relevance"], out["mean_face"] = rel, glob_rel, mean_face
  out["markdown"] = relevance_markdown(out)
  return out


def _afew_va(bank_dir, folder, members, panels, title, meta) -> Dict[str, Any]:
  from PIL import Image
  from fer_jax.emotion_bank import calibration, report
  clip = load_afew_va(folder)
  names = meta["class_names"]
  num_frames = int(members[0].task.num_frames)
  windows, starts = clip_windows(clip["landmarks"], num_frames)
  check = _front_end_check(members[0], windows)
  platt = {r["class_id"]: (r["platt_a"], r["platt_b"]) for r in report.bank_results(bank_dir)["emotions"]}
  probs = np.stack([calibration.apply_platt(m.logits(windows), *platt[m.positive_class]) for m in members], 1)
  ids = [m.positive_class for m in members]
  pred = calibration.combine(probs, ids)
  out = {"folder": os.path.abspath(folder), "frames": len(clip["frames"]), "window_starts": starts,
         "front_end": check, "probabilities": {names[k]: probs[:, j].tolist() for j, k in enumerate(ids)},
         "predicted": [names[int(p)] for p in pred]}
  where = f"\non the 68 annotated landmarks of AFEW-VA clip {os.path.basename(os.path.normpath(folder))}, frame 0"
  # The geometry alone (no pixels of the licensed frames: this one can be shown), then over the frame.
  fig = real_face_heatmap_figure(None, clip["landmarks"][0], panels, title + where)
  out["heatmap_geometry"] = _save_figure(fig, os.path.join(bank_dir, "heatmap_afew_va_geometry.png"))
  if clip["image_path"]:
    image = np.asarray(Image.open(clip["image_path"]).convert("RGB"))
    fig = real_face_heatmap_figure(image, clip["landmarks"][0], panels, title + where)
    out["heatmap"] = _save_figure(fig, os.path.join(bank_dir, "heatmap_afew_va.png"))
  return out


def relevance_markdown(res: Dict[str, Any]) -> str:
  groups = list(regions.COARSE_GROUPS)
  lines = [f"IG landmark relevance, `{res['variant']}`, {res['split']} clips of each emotion, baseline "
           f"'{res['baseline']}', {res['n_steps']} Gauss-Legendre points", "",
           "| emotion | clips | top 5 landmarks | " + " | ".join(f"{g} %" for g in groups) +
           " | completeness error, median (p90) |", "|---|---|---|" + "---|" * len(groups) + "---|"]
  for r in res["emotions"]:
    c = res["coarse_shares"][r["emotion"]]
    lines.append(f"| {r['emotion']} | {r['clips']} | {', '.join(map(str, r['ranking'][:5]))} | " +
                 " | ".join(f"{100 * c[g]:.0f}" for g in groups) +
                 f" | {100 * r['completeness_error_median']:.2f}% ({100 * r['completeness_error_p90']:.2f}%) |")
  lines.append(f"\nGlobal ranking (top 17): {', '.join(map(str, res['global_ranking'][:17]))}")
  if "afew_va" in res:
    a = res["afew_va"]
    fe = a["front_end"]
    lines.append(f"\nAFEW-VA clip ({a['frames']} frames, windows at {a['window_starts']}): normalised eye line "
                 f"within {fe['max_abs_eye_angle_deg']:.2g} degrees of horizontal, inter-ocular distance "
                 f"{fe['iod_min']:.4f}-{fe['iod_max']:.4f}; bank prediction per window: {', '.join(a['predicted'])}")
  return "\n".join(lines)
