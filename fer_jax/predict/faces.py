"""Frames -> detected, aligned face crops at the classifier's size.

Alignments (``align``):

============  ==================================================================================
``fer2013``   similarity transform of the 5 detector landmarks onto ``align.TEMPLATES['fer2013']``
              (FER2013's own framing of faces); the default
``arcface``   the same onto the ArcFace 5-point template (``align.TEMPLATES['5']``)
``box``       a square whole-pixel crop of the detector box (``align.crop_face_box``), no rotation
============  ==================================================================================

Landmark alignment samples the frame bilinearly with ``supersample`` n x n samples per crop pixel, n the
power of two >= the downscale factor (at most 8), so that large faces are antialiased; crops are rounded to
uint8. With ``detect=False`` each frame is taken as an already-aligned face: it is resized to ``size``
(stretched if not square; not resampled when it already is ``size`` x ``size``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, NamedTuple, Optional

import numpy as np

from fer_jax.predict.sources import Frame

ALIGNMENTS = ("fer2013", "arcface", "box")
_TEMPLATE_OF = {"fer2013": "fer2013", "arcface": "5"}
BOX_MARGIN = 0.0  # 'box': the square's side is max(w, h) * (1 + BOX_MARGIN)
DETECT_BATCH = 8  # frames of the same size per detector call on an accelerator
DETECT_BATCH_CPU = 1  # ... and on CPU, where batching frames gains nothing (see detect_batch_size)


class FaceCrop(NamedTuple):
  """One face found in a frame, and its crop."""

  source: str
  frame_index: Optional[int]
  time_s: Optional[float]
  face_index: int  # 0-based in the frame, in the detector's (score) order
  box: np.ndarray  # float32 (4,) x0, y0, x1, y1 in frame pixels
  score: float  # detector confidence; NaN without detection
  landmarks: np.ndarray  # float32 (5, 2) (x, y) in frame pixels: left eye, right eye, nose, left / right mouth
  crop: np.ndarray  # uint8 (S, S, 3) RGB
  crop_landmarks: np.ndarray  # float32 (5, 2) the landmarks in crop pixels


def check_align(align: str) -> str:
  """The template name of ``align`` ('box': None); a clear error for an unknown or unavailable one."""
  from fer_jax.data import align as align_lib  # pylint: disable=import-outside-toplevel
  if align not in ALIGNMENTS:
    raise ValueError(f"align={align!r}; expected one of {ALIGNMENTS}")
  template = _TEMPLATE_OF.get(align)
  if template is not None and template not in align_lib.TEMPLATES:
    raise ValueError(f"align={align!r} needs the template {template!r}, which this fer_jax.data.align lacks "
                     f"(it has {sorted(align_lib.TEMPLATES)}); use align='arcface' or 'box'")
  return template


def default_detector(min_face_size: int = 20):
  """``fer_jax.detect.MTCNN(min_face_size)``, imported only when detection is first needed. A larger minimum
  face skips the finest pyramid levels: 40 px ran 1.8x faster than the default 20 on 720x576 frames (31.4 vs
  55.8 ms, 2-core CPU, ``benchmarks/mtcnn_speed.py``)."""
  try:
    from fer_jax.detect import MTCNN  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise RuntimeError(f"face detection needs fer_jax.detect.MTCNN, which cannot be imported ({e}); "
                       "pass detect=False (--no-detect) for inputs that are face crops already") from e
  return MTCNN(min_face_size=min_face_size)


def detect_batch_size() -> int:
  """Frames per detector call: ``DETECT_BATCH`` on an accelerator; 1 on CPU, where a batch of 8 frames
  measured slower per frame than single frames (68.0 vs 55.8 ms at 720x576 on 2 cores,
  ``benchmarks/mtcnn_speed.py``)."""
  import jax  # pylint: disable=import-outside-toplevel
  return min(DETECT_BATCH, DETECT_BATCH_CPU) if jax.default_backend() == "cpu" else DETECT_BATCH


def _supersample(landmarks: np.ndarray, template_pts: np.ndarray) -> int:
  """Power of two >= how many frame pixels one crop pixel spans (eye-mouth distance ratio), in [1, 8]."""
  def span(p):
    return float(np.linalg.norm((p[3] + p[4]) / 2 - (p[0] + p[1]) / 2))
  ratio = span(landmarks) / max(span(template_pts), 1e-6)
  if not math.isfinite(ratio) or ratio <= 1:
    return 1
  return int(min(8, 2 ** math.ceil(math.log2(ratio))))


def align_crop(image: np.ndarray, box: np.ndarray, landmarks: np.ndarray, *, size: int,
               align: str) -> tuple[np.ndarray, np.ndarray]:
  """One face of a uint8 (H, W, 3) frame -> (uint8 (size, size, 3) crop, (5, 2) landmarks in the crop).

  Landmark alignments fall back to the box crop when the landmarks are not finite."""
  from fer_jax.data import align as align_lib  # pylint: disable=import-outside-toplevel
  template = check_align(align)
  lm = np.asarray(landmarks, np.float32).reshape(5, 2)
  if template is not None and np.isfinite(lm).all():
    dst = align_lib.template_points(template, size)
    aligned = align_lib.align_face(image, lm, template=template, out_size=size,
                                   supersample=_supersample(lm, dst))
    crop = np.clip(np.round(np.asarray(aligned.image)), 0, 255).astype(np.uint8)
    return crop, np.asarray(aligned.landmarks, np.float32)
  crop = align_lib.crop_face_box(image, box, size, margin=BOX_MARGIN)
  left, top, side = align_lib.square_crop_box(box, BOX_MARGIN)
  crop_lm = (lm - np.array([left, top], np.float32) + 0.5) * (size / side) - 0.5
  return crop, crop_lm.astype(np.float32)


def whole_frame_crop(frame: Frame, *, size: int, align: str) -> FaceCrop:
  """A frame taken as an aligned face (``detect=False``): box = the frame, score NaN, landmarks = the
  template's points in the crop, mapped back to the frame (NaN for ``align='box'``)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from fer_jax.data import align as align_lib  # pylint: disable=import-outside-toplevel
  template = check_align(align)
  h, w = frame.image.shape[:2]
  crop = frame.image
  if (h, w) != (size, size):
    crop = np.asarray(Image.fromarray(frame.image).resize((size, size), Image.Resampling.BILINEAR))
  if template is None:
    crop_lm = np.full((5, 2), np.nan, np.float32)
  else:
    crop_lm = align_lib.template_points(template, size).astype(np.float32)
  frame_lm = (crop_lm + 0.5) * np.array([w / size, h / size], np.float32) - 0.5
  return FaceCrop(frame.source, frame.frame_index, frame.time_s, 0, np.array([0, 0, w, h], np.float32),
                  float("nan"), frame_lm.astype(np.float32), np.ascontiguousarray(crop, np.uint8), crop_lm)


def _detect(detector: Any, images: list[np.ndarray]) -> list[Any]:
  """Detections of same-size frames. A batch is padded (repeating its last frame) to a power of two so that
  a jitted detector compiles at most log2(DETECT_BATCH) + 1 batch shapes per frame size."""
  if not hasattr(detector, "detect_batch"):
    return [detector.detect(im) for im in images]
  n = len(images)
  padded = 1 << (n - 1).bit_length()
  batch = np.stack(images + [images[-1]] * (padded - n))
  return list(detector.detect_batch(batch))[:n]


def _crops_of(frame: Frame, detections: Any, size: int, align: str) -> list[FaceCrop]:
  from fer_jax.data import align as align_lib  # pylint: disable=import-outside-toplevel
  boxes = np.asarray(detections.boxes, np.float32).reshape(-1, 4)
  scores = np.asarray(detections.scores, np.float32).reshape(-1)
  landmarks = np.asarray(detections.landmarks, np.float32).reshape(-1, 5, 2)
  out = []
  for i in range(boxes.shape[0]):
    try:
      crop, crop_lm = align_crop(frame.image, boxes[i], landmarks[i], size=size, align=align)
    except align_lib.FaceOutsideFrameError:  # a box crop wholly outside the frame: no face to classify
      continue
    out.append(FaceCrop(frame.source, frame.frame_index, frame.time_s, i, boxes[i], float(scores[i]),
                        landmarks[i], crop, crop_lm))
  return out


def faces_in_frames(frames: Iterable[Frame], *, detector: Any = None, detect: bool = True, size: int = 48,
                    align: str = "fer2013") -> Iterator[tuple[Frame, list[FaceCrop]]]:
  """``(frame, its face crops)`` for each frame, in order; a frame without faces gets ``[]``.

  Consecutive frames of the same size are detected together (up to :func:`detect_batch_size` per
  ``detector.detect_batch`` call, padded to a power of two). ``detector``: anything with ``detect_batch(uint8 (B, H, W, 3))`` or
  ``detect(uint8 (H, W, 3))`` returning objects with ``boxes`` (N, 4), ``scores`` (N,) and ``landmarks``
  (N, 5, 2) (``fer_jax.detect.Detections``); default ``fer_jax.detect.MTCNN()``. If ``frames`` raises,
  the frames read before are still detected and yielded, then the exception propagates.
  """
  check_align(align)
  if not detect:
    for frame in frames:
      yield frame, [whole_frame_crop(frame, size=size, align=align)]
    return
  if detector is None:
    detector = default_detector()
  pending: list[Frame] = []
  limit = detect_batch_size()

  def flush():
    results = _detect(detector, [f.image for f in pending])
    if len(results) != len(pending):
      raise RuntimeError(f"the detector returned {len(results)} results for {len(pending)} frames")
    batch = list(zip(pending, results))
    pending.clear()
    for frame, dets in batch:
      yield frame, _crops_of(frame, dets, size, align)

  iterator = iter(frames)
  while True:
    try:
      frame = next(iterator)
    except StopIteration:
      break
    except Exception:
      if pending:
        yield from flush()
      raise
    if pending and (frame.image.shape != pending[0].image.shape or len(pending) >= limit):
      yield from flush()
    pending.append(frame)
  if pending:
    yield from flush()
