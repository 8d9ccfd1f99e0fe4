"""fer_jax.predict.tracking on hand-made box sequences, with the expected ids worked out by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fer_jax.predict.tracking import IouTracker, box_iou


def test_box_iou_hand_computed():
  a = np.array([[0, 0, 2, 2], [0, 0, 10, 10], [5, 5, 5, 9]], np.float32)
  b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [20, 20, 30, 30]], np.float32)
  expected = np.array([[1 / 7, 1.0, 0.0],          # overlap 1 px^2 of 4 + 4 - 1
                       [4 / 100, 4 / 100, 0.0],     # (1,1,3,3) lies inside the 10 x 10 box
                       [0.0, 0.0, 0.0]])            # a zero-area box overlaps nothing
  np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-12)
  assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def _box(x, y, side=10):
  return [x, y, x + side, y + side]


def test_two_faces_crossing_keep_their_ids():
  """A moves right (x = 4t, y = 0), B moves left (x = 40 - 4t, y = 5), 10 px boxes. Each box overlaps its
  own previous position by 6 x 10 (IoU 60 / 140 = 0.43) and the other face's by at most 6 x 5 (30 / 170 =
  0.18), also at t = 5 where they nearly coincide, so A stays 0 and B stays 1, whatever the detection order
  (B is listed first in odd frames)."""
  tracker = IouTracker(iou_threshold=0.3, max_gap=2)
  for t in range(11):
    a, b = _box(4 * t, 0), _box(40 - 4 * t, 5)
    if t % 2:
      assert tracker.update(np.array([b, a])) == [1, 0], t
    else:
      assert tracker.update(np.array([a, b])) == [0, 1], t


def test_face_gone_within_and_beyond_the_gap():
  """max_gap = 2. A is always there (id 0). B (id 1) is missing in frames 2-3 (2 frames: kept, id 1 at
  frame 4), then in frames 5-7 (3 frames: its track ended after frame 7's miss), so at frame 8 it is new: id
  2. C appears at frame 9: id 3. A frame with no face at all counts as a miss for every track."""
  tracker = IouTracker(iou_threshold=0.3, max_gap=2)
  a, b, c = _box(0, 0), _box(50, 50), _box(100, 0)
  present = {0: [a, b], 1: [a, b], 2: [a], 3: [a], 4: [a, b], 5: [a], 6: [a], 7: [a], 8: [a, b], 9: [c, a, b]}
  expected = {0: [0, 1], 1: [0, 1], 2: [0], 3: [0], 4: [0, 1], 5: [0], 6: [0], 7: [0], 8: [0, 2], 9: [3, 0, 2]}
  for t in range(10):
    assert tracker.update(np.array(present[t], np.float32)) == expected[t], t
  assert tracker.update(np.zeros((0, 4))) == []
  assert tracker.update(np.zeros((0, 4))) == []
  assert tracker.update(np.array([a])) == [0]  # 2 empty frames: within the gap


def test_jump_below_threshold_starts_a_new_track_and_ids_are_shared():
  ids = itertools.count()
  first, second = IouTracker(max_gap=1, ids=ids), IouTracker(max_gap=1, ids=ids)
  assert first.update(np.array([_box(0, 0)])) == [0]
  # Moved 8 px: IoU 2 x 10 / (200 - 20) = 0.11 < 0.3 -> a new id; the old track waits for its gap.
  assert first.update(np.array([_box(8, 0)])) == [1]
  assert first.update(np.array([_box(0, 0), _box(8, 0)])) == [0, 1]  # the old one came back within 1 frame
  assert second.update(np.array([_box(0, 0)])) == [2]  # another video: its own, run-unique ids


def test_one_box_matches_one_track():
  """Two detections overlapping one track: the better one takes it, the other gets a new id."""
  tracker = IouTracker(iou_threshold=0.3)
  assert tracker.update(np.array([_box(0, 0)])) == [0]
  assert tracker.update(np.array([_box(3, 0), _box(1, 0)])) == [1, 0]  # IoU 7/13 < 9/11


def test_bad_options():
  with pytest.raises(ValueError, match="iou_threshold"):
    IouTracker(iou_threshold=0)
  with pytest.raises(ValueError, match="max_gap"):
    IouTracker(max_gap=-1)
