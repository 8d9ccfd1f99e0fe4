"""grain pipelines for video clips with per-frame targets (valence / arousal regression).

A record is a stored clip of ``L`` frames: ``frames`` uint8 (L, H, W, C), one (L,) float array per
target (``valence``, ``arousal``), optionally a per-frame validity mask (face found, label given) and
frame indices, and a video key (int or string). Frame models and sequence models read the same
records; only the window differs:

* Train (:class:`ClipTrainTransform`): a window of ``T`` frames taken every ``stride`` frames at a
  random temporal offset inside the clip, one spatial augmentation (resize, rotation, crop, flips)
  shared by all frames of the window.
* Eval (:class:`ClipEvalTransform`): the whole clip (resized, centre-cropped) plus its video key and
  frame indices. The dense sliding windows (:func:`window_indices`: every ``hop`` frames, the last
  one aligned to the clip's end) are cut on the accelerator, and the predictions of overlapping
  windows are averaged per frame (:func:`average_overlapping`), so every frame gets exactly one
  prediction.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Dict, Optional, Tuple

import grain
import jax.numpy as jnp
import numpy as np

from fer_jax.data import pipeline


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Which record fields hold what, and the temporal window (``config.affect`` fields)."""

  frames_key: str = "frames"
  target_keys: Tuple[str, ...] = ("valence", "arousal")
  mask_key: Optional[str] = None  # per-frame bool validity; None = every frame is valid
  frame_index_key: Optional[str] = None  # per-frame index in its video; None = 0..L-1
  video_key: str = "id"  # int or string; frames of one video share it
  window: int = 1  # T frames per model input (1 for frame models)
  stride: int = 1  # temporal step between the frames of a window
  eval_hop: int = 1  # step between the starts of consecutive evaluation windows

  def __post_init__(self):
    for name in ("window", "stride", "eval_hop"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"affect.{name}={value!r}; expected an integer >= 1")
    if not self.target_keys:
      raise ValueError("affect.target_keys is empty; expected e.g. ('valence', 'arousal')")

  @property
  def span(self) -> int:
    """Frames from the first to the last frame of a window, inclusive."""
    return (self.window - 1) * self.stride + 1


def window_indices(length: int, window: int, stride: int = 1, hop: int = 1) -> np.ndarray:
  """Frame indices (num_windows, window) of the dense evaluation windows of a clip of ``length``.

  Starts are 0, hop, 2 hop, ... and ``length - span`` (so the clip's end is covered). Raises if
  some frame is in no window (possible when ``hop`` > 1 and ``stride`` > 1); hop 1 covers all.
  """
  span = (window - 1) * stride + 1
  if span > length:
    raise ValueError(f"A window of {window} frames at stride {stride} spans {span} frames; the "
                     f"clips have only {length}. Lower affect.window / affect.stride.")
  starts = sorted(set(range(0, length - span + 1, hop)) | {length - span})
  idx = np.asarray(starts)[:, None] + stride * np.arange(window)[None, :]
  missing = np.setdiff1d(np.arange(length), idx)
  if missing.size:
    raise ValueError(f"Evaluation windows (window {window}, stride {stride}, hop {hop}) miss frames "
                     f"{missing.tolist()} of each {length}-frame clip; use affect.eval_hop=1.")
  return idx


def average_overlapping(window_preds: jnp.ndarray, indices: np.ndarray, length: int) -> jnp.ndarray:
  """(B, num_windows, T, D) window predictions -> (B, length, D) per-frame means over windows."""
  flat = np.asarray(indices).reshape(-1)
  counts = np.bincount(flat, minlength=length).astype(np.float32)
  b, d = window_preds.shape[0], window_preds.shape[-1]
  summed = jnp.zeros((b, length, d), window_preds.dtype).at[:, flat].add(
      window_preds.reshape(b, -1, d))
  return summed / jnp.asarray(counts)[None, :, None]


def video_key_to_int(value: Any) -> np.int64:
  """A stable non-negative int64 for a video key (ints kept; strings -> 63-bit BLAKE2b hash)."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (int, np.integer)):
    return np.int64(value)
  if isinstance(value, str):
    value = value.encode("utf-8")
  if isinstance(value, bytes):
    return np.int64(int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "little") >> 1)
  raise TypeError(f"Video key {value!r} of type {type(value).__name__}; expected an int or a string")


def video_key_to_str(value: Any) -> str:
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _check_clip(element: Dict[str, Any], cfg: ClipConfig):
  if cfg.frames_key not in element:
    raise KeyError(f"Record has no field {cfg.frames_key!r} (affect.frames_key); it has {sorted(element)}")
  frames = pipeline.check_frames(element[cfg.frames_key], cfg.frames_key, clip=True)
  length = frames.shape[0]
  targets = []
  for key in cfg.target_keys:
    if key not in element:
      raise KeyError(f"Record has no target field {key!r} (affect.target_keys); it has {sorted(element)}")
    t = np.asarray(element[key], np.float32).reshape(-1)
    if t.shape[0] != length:
      raise ValueError(f"Record field {key!r} has {t.shape[0]} values for {length} frames")
    targets.append(t)
  mask = (np.ones(length, bool) if cfg.mask_key is None
          else np.asarray(element[cfg.mask_key]).astype(bool).reshape(length))
  return frames, np.stack(targets, -1), mask


class ClipTrainTransform(grain.transforms.RandomMap):
  """Stored clip -> {'frames' (T, h, w, c), 'targets' (T, D), 'mask' (T,)} at a random offset."""

  def __init__(self, aug: pipeline.AugmentConfig, clip: ClipConfig):
    self.aug, self.clip = aug, clip

  def random_map(self, element: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
    frames, targets, mask = _check_clip(element, self.clip)
    length, span = frames.shape[0], self.clip.span
    if span > length:
      raise ValueError(f"A window of {self.clip.window} frames at stride {self.clip.stride} spans "
                       f"{span} frames; the clips have only {length}.")
    start = int(rng.integers(0, length - span + 1))
    sel = start + self.clip.stride * np.arange(self.clip.window)
    return {"frames": np.ascontiguousarray(pipeline.augment(frames[sel], self.aug, rng)),
            "targets": targets[sel], "mask": mask[sel]}


class ClipEvalTransform(grain.transforms.Map):
  """Stored clip -> whole clip, centre-cropped, with 'video' (int64 key), 'video_name' (bytes) and
  'frame_index' (L,)."""

  def __init__(self, aug: pipeline.AugmentConfig, clip: ClipConfig):
    self.aug, self.clip = aug, clip

  def map(self, element: Dict[str, Any]) -> Dict[str, Any]:
    frames, targets, mask = _check_clip(element, self.clip)
    length = frames.shape[0]
    index = (np.arange(length) if self.clip.frame_index_key is None
             else np.asarray(element[self.clip.frame_index_key], np.int64).reshape(length))
    return {"frames": np.ascontiguousarray(pipeline.augment(frames, self.aug, None)),
            "targets": targets, "mask": mask,
            "video": video_key_to_int(element[self.clip.video_key]),
            # Host-side only (the trainer pops it before the batch goes to the devices).
            "video_name": np.bytes_(video_key_to_str(element[self.clip.video_key]).encode("utf-8")),
            "frame_index": index.astype(np.int64)}


def clip_config_from(config: Any) -> ClipConfig:
  """Builds a :class:`ClipConfig` from ``config.affect`` (unknown fields are ignored here)."""
  fields = {f.name for f in dataclasses.fields(ClipConfig)}
  kwargs = {k: config[k] for k in fields if k in config}
  if "target_keys" in kwargs:
    kwargs["target_keys"] = tuple(kwargs["target_keys"])
  return ClipConfig(**kwargs)
