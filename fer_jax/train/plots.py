"""Pictures of results (PNG files and TensorBoard images): confusion matrices, valence-arousal
scatter / density plots and per-video prediction-vs-label time series."""

from __future__ import annotations

import io
from typing import Dict, Sequence

import numpy as np


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str], title: str = ""):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cm = np.asarray(cm, np.float64)
  rows = cm.sum(1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.7 * n), dpi=100)
  ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
              color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xticks(range(n), class_names, rotation=45, ha="right")
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title or "confusion matrix (row-normalised; counts below)")
  fig.tight_layout()
  return fig


def figure_to_array(fig) -> np.ndarray:
  """Renders a matplotlib figure to a uint8 (H, W, 3) array."""
  import matplotlib.pyplot as plt
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  buf.seek(0)
  from PIL import Image
  return np.asarray(Image.open(buf).convert("RGB"))


def save_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str,
                          title: str = "") -> np.ndarray:
  """Writes the confusion-matrix PNG to ``path`` and returns it as an image array."""
  image = figure_to_array(confusion_matrix_figure(cm, class_names, title))
  from PIL import Image
  Image.fromarray(image).save(path)
  return image


def _save(image: np.ndarray, path: str) -> np.ndarray:
  from PIL import Image
  Image.fromarray(image).save(path)
  return image


def va_scatter_figure(predictions: np.ndarray, labels: np.ndarray, names: Sequence[str] = ("valence", "arousal"),
                      title: str = "", max_points: int = 20000):
  """Per dimension: predicted vs true (density of all frames + a point sample); for two dimensions also
  the label and prediction clouds in the valence-arousal plane."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  predictions, labels = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
  d = predictions.shape[-1]
  panels = d + (1 if d == 2 else 0)
  fig, axes = plt.subplots(1, panels, figsize=(4.0 * panels, 4.0), dpi=100, squeeze=False)
  rng = np.random.default_rng(0)
  pick = rng.permutation(len(labels))[:max_points]
  for k in range(d):
    ax = axes[0, k]
    ax.hist2d(labels[:, k], predictions[:, k], bins=40, range=[[-1, 1], [-1, 1]], cmap="Blues", cmin=1)
    ax.plot([-1, 1], [-1, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"true {names[k]}")
    ax.set_ylabel(f"predicted {names[k]}")
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
  if d == 2:
    ax = axes[0, 2]
    ax.scatter(labels[pick, 0], labels[pick, 1], s=3, alpha=0.3, label="true", color="tab:blue")
    ax.scatter(predictions[pick, 0], predictions[pick, 1], s=3, alpha=0.3, label="predicted",
               color="tab:orange")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.legend(loc="lower right", markerscale=4)
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def save_va_scatter(predictions, labels, path: str, names=("valence", "arousal"), title: str = "") -> np.ndarray:
  return _save(figure_to_array(va_scatter_figure(predictions, labels, names, title)), path)


def va_timeseries_figure(videos: Dict[str, Dict[str, np.ndarray]], names: Sequence[str] = ("valence", "arousal"),
                         title: str = ""):
  """One row per video, one column per dimension: prediction and label against the frame index.

  ``videos``: name -> {'frame_index' (N,), 'predictions' (N, D), 'labels' (N, D)}.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  d = len(names)
  fig, axes = plt.subplots(len(videos), d, figsize=(5.0 * d, 1.8 * len(videos) + 0.6), dpi=100,
                           squeeze=False, sharey=True)
  for r, (video, v) in enumerate(videos.items()):
    order = np.argsort(v["frame_index"])
    for k in range(d):
      ax = axes[r, k]
      ax.plot(v["frame_index"][order], v["labels"][order, k], color="tab:blue", lw=1.0, label="true")
      ax.plot(v["frame_index"][order], v["predictions"][order, k], color="tab:orange", lw=1.0,
              label="predicted")
      ax.set_ylim(-1.05, 1.05)
      ax.set_title(f"{video}: {names[k]}", fontsize=8)
      if r == len(videos) - 1:
        ax.set_xlabel("frame")
  axes[0, 0].legend(loc="upper left", fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def save_va_timeseries(videos, path: str, names=("valence", "arousal"), title: str = "") -> np.ndarray:
  return _save(figure_to_array(va_timeseries_figure(videos, names, title)), path)


def bars_figure(series: Dict[str, np.ndarray], names: Sequence[str], title: str = ""):
  """One panel per named series of per-item values (e.g. per-AU CC / AP / MAE)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = len(names)
  fig, axes = plt.subplots(len(series), 1, figsize=(max(6.0, 0.45 * n + 1.5), 2.2 * len(series)), dpi=100,
                           squeeze=False)
  for ax, (label, values) in zip(axes[:, 0], series.items()):
    v = np.nan_to_num(np.asarray(values, np.float64))
    ax.bar(range(n), v, color="tab:blue")
    ax.set_ylabel(label)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.grid(axis="y", alpha=0.3)
  axes[0, 0].set_title(title, fontsize=8)
  fig.tight_layout()
  return fig


def save_bars(series: Dict[str, np.ndarray], names: Sequence[str], path: str, title: str = "") -> np.ndarray:
  return _save(figure_to_array(bars_figure(series, names, title)), path)
