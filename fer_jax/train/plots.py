"""Pictures of results: confusion matrices (PNG files and TensorBoard images)."""

from __future__ import annotations

import io
from typing import Optional, Sequence

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
