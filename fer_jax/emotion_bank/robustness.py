"""The bank on noisy landmarks: test-time Gaussian jitter of every point, as a landmark tracker adds.

The synthetic clips' landmarks are exact, and every variant of the bank separates them perfectly; real
trackers miss by a few percent of the inter-ocular distance (IOD) per point and frame. ``noise_curve``
adds independent Gaussian noise of standard deviation ``sigma`` x IOD (the clip's first-frame distance
between the eye centres, iBUG 36-41 / 42-47) to every coordinate of every point and frame of the
validation and test clips (fixed seeds: the same noise for every model and bank), recalibrates each
model by Platt scaling on the noisy validation clips, and scores the argmax combination on the noisy
test clips. The models are trained on clean clips: this measures robustness, not a noisy-data recipe.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from fer_jax.emotion_bank import calibration
from fer_jax.evaluators.binary import binary_scores

__all__ = ["inter_ocular", "add_noise", "noise_curve", "noise_markdown", "bank_noise", "parse_sigmas"]

EYES = (tuple(range(36, 42)), tuple(range(42, 48)))


def inter_ocular(clips, eyes=EYES) -> np.ndarray:
  """(N,) distance between the eye centres in each clip's first frame (clips (N, T, 68, 2))."""
  c = np.asarray(clips, np.float64)
  right, left = (c[:, 0, list(e)].mean(axis=1) for e in eyes)
  return np.hypot(*(left - right).T)


def add_noise(clips, sigma: float, seed: int) -> np.ndarray:
  """``clips`` + N(0, (sigma IOD)^2) per coordinate, point and frame (float32; sigma 0: unchanged)."""
  c = np.asarray(clips, np.float32)
  if sigma < 0:
    raise ValueError(f"noise sigma={sigma}; expected >= 0 (a fraction of the inter-ocular distance)")
  if sigma == 0:
    return c
  noise = np.random.default_rng(seed).standard_normal(c.shape)
  return (c + sigma * inter_ocular(c)[:, None, None, None] * noise).astype(np.float32)


def noise_curve(members: Sequence[Any], val: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray],
                sigmas: Sequence[float] = (0.0, 0.02, 0.05, 0.1), num_classes: int = 0,
                seed: int = 0) -> List[Dict[str, Any]]:
  """Per sigma: multi-class accuracy / macro-F1 of the calibrated argmax and the mean one-vs-rest accuracy /
  F1 (logit 0) on noisy test clips, each model recalibrated on noisy validation clips."""
  (xv, yv), (xt, yt) = val, test
  k_all = num_classes or int(max(yv.max(), yt.max()) + 1)
  ids = [m.positive_class for m in members]
  rows = []
  for i, sigma in enumerate(sigmas):
    nv, nt = add_noise(xv, sigma, seed + 2 * i), add_noise(xt, sigma, seed + 2 * i + 1)
    probs, accs, f1s = [], [], []
    for m in members:
      k = m.positive_class
      lv, lt = m.logits(nv), m.logits(nt)
      fit = calibration.fit_platt(lv, yv == k)
      probs.append(calibration.apply_platt(lt, fit["a"], fit["b"]))
      s = binary_scores(lt, (yt == k).astype(np.int64))
      accs.append(s["accuracy"])
      f1s.append(s["f1"])
    mc = calibration.multiclass_metrics(yt, calibration.combine(np.stack(probs, 1), ids), k_all)
    rows.append({"sigma": float(sigma), "accuracy": mc["accuracy"], "macro_f1": mc["macro_f1"],
                 "mean_accuracy": float(np.mean(accs)), "mean_f1": float(np.mean(f1s))})
  return rows


def noise_markdown(curves: Dict[str, List[Dict[str, Any]]]) -> str:
  """One row per bank, one column per sigma: multi-class accuracy % / macro-F1 %."""
  names = list(curves)
  sigmas = [r["sigma"] for r in curves[names[0]]]
  lines = ["| bank | " + " | ".join(f"noise {s:g} IOD: acc % / macro-F1 %" for s in sigmas) + " |",
           "|---|" + "---|" * len(sigmas)]
  for n in names:
    lines.append(f"| {n} | " + " | ".join(f"{100 * r['accuracy']:.1f} / {100 * r['macro_f1']:.1f}"
                                           for r in curves[n]) + " |")
  return "\n".join(lines)


NOISE_FILE = "noise.json"


def bank_noise(bank_dir: str, sigmas: Sequence[float], loaded=None) -> List[Dict[str, Any]]:
  """``noise_curve`` of a finished bank (``explain.load_bank``) on its validation / test clips; written to
  ``<bank_dir>/noise.json``."""
  import json
  import os
  from fer_jax.emotion_bank import explain, members as members_lib
  meta, members = loaded or explain.load_bank(bank_dir)
  exp = members[0].exp
  rows = noise_curve(members, members_lib.split_clips(exp, "validation"), members_lib.split_clips(exp, "test"),
                     sigmas, num_classes=len(meta["class_names"]))
  with open(os.path.join(bank_dir, NOISE_FILE), "w") as f:
    json.dump(rows, f, indent=2)
  return rows


def parse_sigmas(text: str) -> List[float]:
  """'0,0.02,0.05' -> [0.0, 0.02, 0.05] (each >= 0)."""
  try:
    out = [float(t) for t in str(text).split(",") if t.strip()]
  except ValueError:
    raise ValueError(f"--noise={text!r}: expected comma-separated fractions of the inter-ocular distance") from None
  if not out or any(s < 0 for s in out):
    raise ValueError(f"--noise={text!r}: expected fractions >= 0, e.g. 0,0.02,0.05,0.1")
  return out
