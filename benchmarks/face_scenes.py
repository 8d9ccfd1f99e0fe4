"""Test photos for detection benchmarks: real FER2013 faces placed into larger cluttered scenes.

We have no licensed photo collection with expression labels, so each scene is built from labelled
PublicTest faces: a 640x480 RGB background (``fer_jax.predict.demo.scene_background``: smooth colour
gradients, blurred noise and random rectangles and ellipses as clutter), and 1-3 faces, each a 48x48 FER2013 face upscaled (bicubic) to
a random side in [``min_side``, ``max_side``] and pasted with a feathered edge (a linear alpha ramp over
the outer ``feather`` of the side), at non-overlapping random positions. The ground truth of a face is
its label and its pasted square. Deterministic for a seed.

:func:`match` pairs detections with ground-truth squares: a detection belongs to the square that holds
its box centre (one detection per square, the highest score; others are false positives).
"""

from __future__ import annotations

from typing import List, NamedTuple, Sequence

import numpy as np
from PIL import Image

from fer_jax.predict.demo import feather_mask, scene_background


class Scene(NamedTuple):
  image: np.ndarray  # uint8 (H, W, 3) RGB
  boxes: np.ndarray  # float32 (K, 4) x0, y0, x1, y1 pixel edges of the pasted squares
  labels: np.ndarray  # int64 (K,)
  face_ids: np.ndarray  # int64 (K,) indices into the face array


def make_scenes(faces: np.ndarray, labels: np.ndarray, n_scenes: int, *, seed: int = 0, width: int = 640,
                height: int = 480, min_side: int = 96, max_side: int = 200, max_faces: int = 3,
                feather: float = 0.08) -> List[Scene]:
  """``n_scenes`` scenes from uint8 (N, 48, 48) faces; each face is used at most once (in order)."""
  rng = np.random.default_rng(seed)
  scenes, next_face = [], 0
  for _ in range(n_scenes):
    img = scene_background(rng, width, height)
    boxes: list = []
    ids: list = []
    for _ in range(int(rng.integers(1, max_faces + 1))):
      if next_face >= len(faces):
        break
      side = int(rng.integers(min_side, max_side + 1))
      for _ in range(50):  # rejection sampling of a non-overlapping place
        x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        if all(x0 >= b[2] or b[0] >= x0 + side or y0 >= b[3] or b[1] >= y0 + side for b in boxes):
          break
      else:
        continue
      face = Image.fromarray(faces[next_face]).resize((side, side), Image.Resampling.BICUBIC).convert("RGB")
      img.paste(face, (x0, y0), feather_mask(side, feather))
      boxes.append((x0, y0, x0 + side, y0 + side))
      ids.append(next_face)
      next_face += 1
    ids_arr = np.asarray(ids, np.int64)
    scenes.append(Scene(np.asarray(img), np.asarray(boxes, np.float32).reshape(-1, 4), labels[ids_arr],
                        ids_arr))
  return scenes


def match(gt_boxes: np.ndarray, det_boxes: np.ndarray, det_scores: Sequence[float]) -> np.ndarray:
  """-> (K,) index of the detection assigned to each ground-truth square, -1 if none."""
  out = np.full(len(gt_boxes), -1, np.int64)
  best = np.full(len(gt_boxes), -np.inf)
  for j, (b, s) in enumerate(zip(np.asarray(det_boxes).reshape(-1, 4), det_scores)):
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    inside = np.nonzero((gt_boxes[:, 0] <= cx) & (cx < gt_boxes[:, 2]) & (gt_boxes[:, 1] <= cy)
                        & (cy < gt_boxes[:, 3]))[0]
    for k in inside:
      if s > best[k]:
        best[k], out[k] = s, j
  return out
