"""Metric writer for the trainer without TensorFlow: absl logs plus TensorBoard event files.

clu 0.0.12's ``clu.metric_writers`` and ``clu.periodic_actions`` import TensorFlow, so the trainer uses
this instead. :func:`create_writer` mirrors ``clu.metric_writers.create_default_writer``: every call is
logged through absl and, unless ``just_logging`` (non-main processes), also appended to one TensorBoard
event file in ``workdir`` by tensorboardX (a maintained event writer without TensorFlow), synchronously
and flushed after each call, so a killed run loses nothing already written. In the event file:

  * ``write_scalars(step, {name: value})``: one scalar summary per name at ``step``.
  * ``write_images(step, {name: array (N, H, W, C)})``: C in {1, 3, 4}; uint8 as is, floats in [0, 1]
    scaled by 255 (clipped, rounded); PNG-encoded, tag ``name`` when N == 1, else ``name/0`` ...
    ``name/N-1``. Grey images are stored as RGB with equal channels (tensorboardX does that).
  * ``write_texts(step, {name: str})``: the text plugin's ``name/text_summary`` tag.
  * ``write_hparams({name: value})``: the hparams plugin's session start info (as TF's ``hp.hparams``
    writes it): bool / int / float / str values as they are, anything else as ``str(value)``.

(``clu.periodic_actions.ReportProgress`` has no counterpart: the trainer logs steps/s, images/s and ETA.)
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, Mapping, Optional

import numpy as np
from absl import logging

_FILE_IDS = itertools.count()


def _scalar(value: Any) -> float:
  arr = np.asarray(value)
  if arr.size != 1:
    raise ValueError(f"Expected a scalar, got an array of shape {arr.shape}")
  return float(arr.reshape(()))


def _to_uint8(images: Any, name: str) -> np.ndarray:
  arr = np.asarray(images)
  if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
    raise ValueError(f"Image {name!r} must be an (N, H, W, C) array with C in (1, 3, 4); got shape "
                     f"{arr.shape}")
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"Image {name!r} must be uint8 or float in [0, 1]; got dtype {arr.dtype}")
  return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def _hparam_value(value: Any):
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, float, np.integer, np.floating)):
    return value.item() if isinstance(value, np.generic) else value
  return value if isinstance(value, str) else str(value)


class MetricWriter:
  """absl logging plus (when ``logdir`` is given) one TensorBoard event file in ``logdir``.

  Events go through tensorboardX's ``EventsWriter`` and are flushed at the end of every ``write_*`` call
  (tensorboardX's ``SummaryWriter`` queues them for a background thread that its ``flush()`` does not
  wait for, so events written just before a read or a kill could be missing).
  """

  def __init__(self, logdir: Optional[str] = None):
    self.logdir = logdir
    self._events = None
    if logdir is not None:
      # Imported only where events are written.
      from tensorboardX import summary as tbx_summary
      from tensorboardX.event_file_writer import EventsWriter
      from tensorboardX.proto import event_pb2
      self._tbx, self._event_pb2 = tbx_summary, event_pb2
      os.makedirs(logdir, exist_ok=True)
      # events.out.tfevents.<seconds>.<host>.<pid>.<n>: the suffix keeps two writers opened in the same
      # second (say a run and then evaluate_checkpoint) from truncating each other's file.
      self._events = EventsWriter(os.path.join(logdir, "events"),
                                  filename_suffix=f".{os.getpid()}.{next(_FILE_IDS)}")

  def _write(self, step: Optional[int], summaries) -> None:
    for summary_proto in summaries:
      event = self._event_pb2.Event(wall_time=time.time(), summary=summary_proto)
      if step is not None:
        event.step = int(step)
      self._events.write_event(event)
    self._events.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = {k: _scalar(v) for k, v in scalars.items()}
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in sorted(values.items())))
    if self._events is not None:
      self._write(step, [self._tbx.scalar(k, v) for k, v in values.items()])

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    arrays = {k: _to_uint8(v, k) for k, v in images.items()}
    logging.info("[%d] images: %s", step,
                 ", ".join(f"{k} {a.shape}" for k, a in sorted(arrays.items())))
    if self._events is not None:
      self._write(step, [self._tbx.image(k if len(a) == 1 else f"{k}/{i}", img, dataformats="HWC")
                         for k, a in arrays.items() for i, img in enumerate(a)])

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={v!r}" for k, v in sorted(texts.items())))
    if self._events is not None:
      self._write(step, [self._tbx.text(k, str(v)) for k, v in texts.items()])

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    values = {k: _hparam_value(v) for k, v in hparams.items()}
    logging.info("hparams: %s", ", ".join(f"{k}={v!r}" for k, v in sorted(values.items())))
    if self._events is not None:
      _, session_start_info, _ = self._tbx.hparams(values, {})
      self._write(None, [session_start_info])

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def create_writer(workdir: str, just_logging: bool = False) -> MetricWriter:
  """Logs every call; also writes TensorBoard events under ``workdir`` unless ``just_logging``."""
  return MetricWriter(None if just_logging else workdir)
