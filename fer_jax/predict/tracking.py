"""Track ids for faces across a video's frames: greedy matching on box IoU with a gap allowance.

Each frame's boxes are matched to the live tracks by repeatedly taking the (track, box) pair of highest
IoU with the track's last box, as long as it is >= ``iou_threshold`` (ties: the older track, then the
earlier box). Unmatched boxes start new tracks. A track missed in more than ``max_gap`` consecutive
processed frames ends: a face that is gone for up to ``max_gap`` frames keeps its id, one gone longer gets
a new id. Ids come from a shared counter, so they are unique across a whole run.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of boxes (N, 4) and (M, 4), (x0, y0, x1, y1) -> (N, M) float64; 0 where the union is empty."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
  iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
  inter = ix * iy
  area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
  area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
  union = area_a[:, None] + area_b[None, :] - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class IouTracker:
  """Assigns track ids to the boxes of consecutive frames of one video (``update`` once per frame)."""

  def __init__(self, *, iou_threshold: float = 0.3, max_gap: int = 5, ids: Optional[Iterator[int]] = None):
    if not 0 < iou_threshold <= 1:
      raise ValueError(f"iou_threshold={iou_threshold!r}; expected a number in (0, 1]")
    if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 0:
      raise ValueError(f"max_gap={max_gap!r}; expected an int >= 0")
    self.iou_threshold = iou_threshold
    self.max_gap = max_gap
    self._ids = ids if ids is not None else itertools.count()
    self._tracks: list[list] = []  # [id, last box (4,), frames missed since]

  def update(self, boxes: np.ndarray) -> list[int]:
    """The boxes (N, 4) of the next frame -> their track ids (N,)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ids = [-1] * boxes.shape[0]
    matched_tracks = set()
    if self._tracks and boxes.shape[0]:
      iou = box_iou(np.stack([t[1] for t in self._tracks]), boxes)
      order = sorted(((-iou[t, b], t, b) for t in range(iou.shape[0]) for b in range(iou.shape[1])
                      if iou[t, b] >= self.iou_threshold))
      for _, t, b in order:
        if t in matched_tracks or ids[b] != -1:
          continue
        matched_tracks.add(t)
        ids[b] = self._tracks[t][0]
        self._tracks[t][1] = boxes[b]
        self._tracks[t][2] = 0
    survivors = []
    for t, track in enumerate(self._tracks):
      if t not in matched_tracks:
        track[2] += 1
      if track[2] <= self.max_gap:
        survivors.append(track)
    self._tracks = survivors
    for b in range(boxes.shape[0]):
      if ids[b] == -1:
        ids[b] = next(self._ids)
        self._tracks.append([ids[b], boxes[b], 0])
    return ids
