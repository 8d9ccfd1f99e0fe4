"""The predict loop: files -> frames -> faces (detected, aligned, tracked) -> batches of crops -> classified
rows, written as they come."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from fer_jax.predict import faces as faces_lib
from fer_jax.predict import sources, tracking, writers
from fer_jax.predict.classify import Classifier
from fer_jax.predict.progress import Progress

log = logging.getLogger("fer_jax.predict")

_LANDMARK_NAMES = ("le", "re", "nose", "lm", "rm")
ANNOTATE_MAX_FRAMES = 32  # with --annotate, frames held for drawing before their batch is classified


@dataclasses.dataclass
class Summary:
  """What a run did: files found, files that gave at least one frame, frames, faces, and the errors."""

  files: int = 0
  files_ok: int = 0
  frames: int = 0
  faces: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)

  def line(self) -> str:
    return (f"{self.files} file(s), {self.files_ok} read, {self.frames} frame(s), {self.faces} face(s), "
            f"{len(self.errors)} error(s)")


def _frame_row(cols: Sequence[str], source: str, frame_index: Optional[int], time_s: Optional[float]) -> dict:
  row = writers.empty_row(cols)
  row.update(source=source, frame=frame_index, time_s=time_s)
  return row


def _face_row(cols: Sequence[str], crop: faces_lib.FaceCrop, track: int) -> dict:
  row = _frame_row(cols, crop.source, crop.frame_index, crop.time_s)
  row.update(face=crop.face_index, track=track, status="ok", det_score=float(crop.score))
  row.update(zip(writers.BOX_COLUMNS, (float(v) for v in crop.box)))
  for name, (x, y) in zip(_LANDMARK_NAMES, np.asarray(crop.landmarks, np.float64)):
    row[f"{name}_x"], row[f"{name}_y"] = float(x), float(y)
  return row


class _Batcher:
  """Rows waiting for their crops' classification, in output order; ``flush`` classifies and emits them."""

  def __init__(self, classifier: Classifier, class_names: Sequence[str], writer, annotator, progress):
    self.classifier, self.class_names = classifier, list(class_names)
    self.writer, self.progress = writer, progress
    self.entries: list[tuple[Optional[sources.Frame], list[dict], list[np.ndarray]]] = []
    self.n_crops = 0
    self.rows: list[dict] = []
    self.annotator = annotator

  @property
  def annotator(self):
    return self._annotator

  @annotator.setter
  def annotator(self, value):
    """Also bounds the frames waiting (``max_entries``), so that the rows of faceless stretches are written
    too, and, when annotating, few frames are held in memory."""
    self._annotator = value
    self.max_entries = min(self.classifier.batch_size, ANNOTATE_MAX_FRAMES) if value else self.classifier.batch_size

  def add(self, frame: Optional[sources.Frame], rows: list[dict], crops: list[np.ndarray]) -> None:
    self.entries.append((frame if self.annotator else None, rows, crops))
    self.n_crops += len(crops)

  def flush(self) -> None:
    if not self.entries:
      return
    entries, self.entries, self.n_crops = self.entries, [], 0
    crops = [c for _, _, cs in entries for c in cs]
    if crops:
      probs, va = self.classifier(np.stack(crops))
      k = 0
      for _, rows, cs in entries:
        for row in rows[:len(cs)]:
          row.update({f"p_{c}": float(p) for c, p in zip(self.class_names, probs[k])})
          row["label"] = self.class_names[int(np.argmax(probs[k]))]
          if va is not None:
            row["valence"], row["arousal"] = float(va[k, 0]), float(va[k, 1])
          k += 1
    out = [r for _, rows, _ in entries for r in rows]
    if self.writer is not None:
      self.writer.write(out)
    self.rows.extend(out)
    if self.annotator is not None:
      for frame, rows, _ in entries:
        if frame is not None:
          self.annotator.add(frame, rows)


def predict(paths: Sequence[str] | str, *, model: Optional[str] = None, workdir: Optional[str] = None,
            predictor: Any = None, detect: bool = True, every: int = 1, align: str = "fer2013",
            test_crops: Optional[str] = None, batch_size: int = 256, output: Optional[str] = None,
            overwrite: bool = False, annotate: Optional[str] = None, detector: Any = None,
            progress: bool = True, max_gap: int = 5, iou_threshold: float = 0.3, min_face: int = 20):
  """Faces and emotions in photos and videos -> a pandas DataFrame (the columns of
  :mod:`fer_jax.predict.writers`), also written to ``output`` (.csv / .jsonl / .parquet) as it goes.

  Args:
    paths: image / video files and folders (expanded recursively, see ``sources.discover``).
    model, workdir: the classifier (``pretrained.resolve``); or ``predictor``, a loaded ``Predictor``.
    detect: detect faces (``detector``, default ``fer_jax.detect.MTCNN()``); False: each input is a face.
    every: process every N-th frame of videos.
    align: 'fer2013' | 'arcface' | 'box' (see :mod:`fer_jax.predict.faces`).
    test_crops: 'ten' | 'flip' | 'center' | 'none'; default as the model was evaluated.
    batch_size: crops per classifier call; rows are written per batch.
    output: table file; an existing one is an error unless ``overwrite``.
    annotate: folder for annotated copies of the inputs (:mod:`fer_jax.predict.annotate`).
    progress: print a progress line on stderr.
    max_gap, iou_threshold: tracking (:class:`fer_jax.predict.tracking.IouTracker`).
    min_face: the default detector's smallest face side in pixels (MTCNN ``min_face_size``; larger is faster).

  Bad inputs are logged (logger ``fer_jax.predict``), get a row with status 'error', and the run goes on.
  ``df.attrs['summary']`` holds the :class:`Summary` as a dict.
  """
  if isinstance(paths, str):
    paths = [paths]
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ValueError(f"every={every!r}; expected a positive int")
  faces_lib.check_align(align)
  if output is not None:
    writers.format_of(output)
    if not overwrite and os.path.exists(output):
      raise FileExistsError(f"output {output!r} exists; pass --overwrite (overwrite=True) to replace it")
  if predictor is None:
    from fer_jax import pretrained  # pylint: disable=import-outside-toplevel
    predictor = pretrained.resolve(model, workdir)
  classifier = Classifier(predictor, test_crops=test_crops, batch_size=batch_size)
  cols = writers.columns(predictor.class_names, classifier.affect)
  files = sources.discover(paths)
  if detect and detector is None and files:
    detector = faces_lib.default_detector(min_face)
  counts = [sources.count_frames(f, every) for f in files]
  total = sum(counts) if all(c is not None for c in counts) else None
  summary = Summary(files=len(files))
  writer = writers.open_writer(output, cols, overwrite=overwrite) if output else None
  annotator = None
  prog = Progress(total, enabled=progress)
  batcher = _Batcher(classifier, predictor.class_names, writer, annotator, prog)
  try:
    if annotate:
      from fer_jax.predict.annotate import Annotator  # pylint: disable=import-outside-toplevel
      annotator = batcher.annotator = Annotator(annotate, paths, every=every)
    _run(files, cols, batcher, summary, detector=detector, detect=detect, every=every, size=predictor.image_size,
         align=align, max_gap=max_gap, iou_threshold=iou_threshold)
    batcher.flush()
  except BaseException:
    try:  # keep what was computed: classify and write the rows still waiting
      batcher.flush()
    except Exception:  # noqa: BLE001 -- the first error is the one to report
      log.exception("could not write the last rows after an error")
    raise
  finally:
    prog.close()
    if writer is not None:
      writer.close()
    if annotator is not None:
      annotator.close()
  df = writers.to_dataframe(batcher.rows, cols)
  df.attrs["summary"] = dataclasses.asdict(summary)
  return df


def _run(files, cols, batcher: _Batcher, summary: Summary, *, detector, detect, every, size, align, max_gap,
         iou_threshold) -> None:
  errors: list[tuple[int, str, str]] = []  # (frames yielded before it, source, message)
  yielded = [0]

  def frames() -> Iterator[sources.Frame]:
    for path in files:
      got = 0
      try:
        for frame in sources.iter_frames(path, every):
          got += 1
          yielded[0] += 1
          yield frame
      except Exception as e:  # noqa: BLE001 -- one bad input must not stop the run
        msg = str(e) if isinstance(e, sources.InputError) else f"{path}: {type(e).__name__}: {e}"
        errors.append((yielded[0], path, msg))
      if got:
        summary.files_ok += 1

  def emit_errors(upto: float) -> None:
    while errors and errors[0][0] <= upto:
      _, path, msg = errors.pop(0)
      log.warning("error: %s", msg)
      summary.errors.append(msg)
      row = _frame_row(cols, path, None, None)
      row.update(face=-1, track=-1, status="error", error=msg)
      batcher.add(None, [row], [])

  ids = itertools.count()
  tracker, tracked_source = None, None
  handled = 0
  for frame, crops in faces_lib.faces_in_frames(frames(), detector=detector, detect=detect, size=size,
                                                align=align):
    emit_errors(handled)
    handled += 1
    if frame.frame_index is None:
      tracks = [next(ids) for _ in crops]
    else:
      if tracked_source != frame.source:
        tracker = tracking.IouTracker(iou_threshold=iou_threshold, max_gap=max_gap, ids=ids)
        tracked_source = frame.source
      tracks = tracker.update(np.stack([c.box for c in crops]) if crops else np.zeros((0, 4)))
    if crops:
      rows = [_face_row(cols, c, t) for c, t in zip(crops, tracks)]
    else:
      rows = [_frame_row(cols, frame.source, frame.frame_index, frame.time_s)]
      rows[0].update(face=-1, track=-1, status="no_face")
    summary.frames += 1
    summary.faces += len(crops)
    batcher.add(frame, rows, [c.crop for c in crops])
    batcher.progress.update(frames=1, faces=len(crops))
    if batcher.n_crops >= batcher.classifier.batch_size or len(batcher.entries) >= batcher.max_entries:
      batcher.flush()
  emit_errors(math.inf)
