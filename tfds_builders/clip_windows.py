"""Where the fixed-length clips of a video start (shared by the video builders).

Used by `afew_va` (as `window_starts`) and `aff_wild` (as `clip_starts`).
"""

from __future__ import annotations


def clip_starts(num_frames: int, clip_length: int, hop: int) -> list[int]:
  """First frames of the fixed-length clips covering frames 0..num_frames - 1.

  Clips start at 0, hop, 2 hop, ... and stop at the first clip that reaches
  the last frame; that clip is padded if it runs past it. So every frame is in
  at least one clip (exactly one when hop == clip_length), and a video shorter
  than `clip_length` gives one padded clip.
  """
  if not 1 <= hop <= clip_length:
    raise ValueError(
        f'hop must be in [1, clip_length={clip_length}], got {hop}')
  if num_frames < 1:
    raise ValueError(f'num_frames must be >= 1, got {num_frames}')
  starts = [0]
  while starts[-1] + clip_length < num_frames:
    starts.append(starts[-1] + hop)
  return starts
