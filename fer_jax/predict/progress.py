"""A one-line progress report on stderr: frames, faces, their rates, and the ETA when the total is known."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
  """``update(frames=, faces=)`` adds counts; at most every ``interval`` seconds a line is printed (rewritten
  in place on a terminal, one line per report otherwise); ``close`` prints the last one."""

  def __init__(self, total_frames: Optional[int] = None, *, enabled: bool = True, stream: Optional[TextIO] = None,
               interval: float = 0.5):
    self.total_frames = total_frames
    self.enabled = enabled
    self.stream = stream or sys.stderr
    self.interval = interval if self.stream.isatty() else max(interval, 10.0)
    self.frames = self.faces = 0
    self.start = self._last = time.perf_counter()
    self._printed = False

  def line(self) -> str:
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    fps, faces_s = self.frames / elapsed, self.faces / elapsed
    total = f"/{self.total_frames}" if self.total_frames else ""
    text = (f"predict: {self.frames}{total} frames, {self.faces} faces, {fps:.1f} frames/s, "
            f"{faces_s:.1f} faces/s, {_duration(elapsed)} elapsed")
    if self.total_frames and self.frames and self.total_frames > self.frames:
      text += f", ETA {_duration((self.total_frames - self.frames) / fps)}"
    return text

  def _print(self):
    if self.stream.isatty():
      self.stream.write("\r" + self.line() + "\x1b[K")
    else:
      self.stream.write(self.line() + "\n")
    self.stream.flush()
    self._printed = True

  def update(self, *, frames: int = 0, faces: int = 0) -> None:
    self.frames += frames
    self.faces += faces
    now = time.perf_counter()
    if self.enabled and now - self._last >= self.interval:
      self._last = now
      self._print()

  def close(self) -> None:
    if self.enabled:
      self._print()
      if self.stream.isatty():
        self.stream.write("\n")
        self.stream.flush()
