"""A tiny clip dataset and two tiny regressors for affect-trainer tests (registered on import).

``toy_clips``: grey 12x12 videos with string ids; frame ``f`` of a video shows a bright square whose
brightness gives valence and whose column gives arousal (both in [-1, 1], a function of the frame).
Videos are stored as overlapping clips of 6 frames every 4 frames (the tail clip padded with
``frame_mask`` False), and some frames have no label (``frame_mask`` False), as in Aff-Wild.
"""

import flax.linen as nn
import numpy as np
import tensorflow_datasets as tfds

from fer_jax import registry

CLIP, HOP, SIZE = 6, 4, 12


def video_frames(seed: int, video: int, num_frames: int):
  """Frames (N, 12, 12, 1) uint8, valence (N,), arousal (N,), label mask (N,)."""
  rng = np.random.default_rng([seed, video])
  t = np.arange(num_frames)
  valence = np.clip(np.sin(0.3 * t + rng.uniform(0, 6)) * 0.9, -0.9, 0.9)
  col = np.round(4 * (np.cos(0.2 * t + rng.uniform(0, 6)) + 1)).astype(int)  # 0..8
  arousal = col / 4.0 - 1.0
  frames = rng.integers(0, 30, (num_frames, SIZE, SIZE, 1)).astype(np.uint8)
  for f in range(num_frames):
    frames[f, 4:8, col[f]:col[f] + 4] += np.uint8(120 + 100 * valence[f])
  mask = rng.random(num_frames) > 0.1
  return frames, valence.astype(np.float32), arousal.astype(np.float32), mask


class ToyClips(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Test fixture."}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "frames": tfds.features.Tensor(shape=(CLIP, SIZE, SIZE, 1), dtype=np.uint8),
        "valence": tfds.features.Tensor(shape=(CLIP,), dtype=np.float32),
        "arousal": tfds.features.Tensor(shape=(CLIP,), dtype=np.float32),
        "frame_mask": tfds.features.Tensor(shape=(CLIP,), dtype=np.bool_),
        "frame_index": tfds.features.Tensor(shape=(CLIP,), dtype=np.int64),
        "video_id": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 12, 30), "validation": self._generate_examples(1, 3, 23)}

  def _generate_examples(self, seed, num_videos, num_frames):
    for v in range(num_videos):
      frames, val, aro, mask = video_frames(seed, v, num_frames)
      for start in range(0, num_frames - CLIP + HOP, HOP):
        idx = np.arange(start, start + CLIP)
        ok = idx < num_frames
        idx_c = np.minimum(idx, num_frames - 1)
        yield f"{seed}_{v}_{start}", {
            "frames": np.where(ok[:, None, None, None], frames[idx_c], 0).astype(np.uint8),
            "valence": np.where(ok, val[idx_c], 0).astype(np.float32),
            "arousal": np.where(ok, aro[idx_c], 0).astype(np.float32),
            "frame_mask": ok & mask[idx_c], "frame_index": idx, "video_id": f"video_{seed}_{v}"}


class _FrameFeatures(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    return x.reshape(x.shape[:-3] + (-1,))


class ToyFrameBackbone(nn.Module):
  """Images (N, H, W, C) -> {'features': (N, 32)}."""

  input_names = ("image",)

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    return {"features": nn.relu(nn.Dense(32)(_FrameFeatures()(image)))}


class ToySequenceBackbone(nn.Module):
  """Clips (N, T, H, W, C) -> {'features': (N, T, 16)}: per-frame features -> LSTM."""

  input_names = ("frames",)

  @nn.compact
  def __call__(self, frames, *, train: bool = False):
    n, t = frames.shape[:2]
    f = _FrameFeatures()(frames.reshape((n * t,) + frames.shape[2:])).reshape(n, t, -1)
    return {"features": nn.RNN(nn.OptimizedLSTMCell(16))(nn.relu(nn.Dense(32)(f)))}


registry.BACKBONES.register("toy_frame", ToyFrameBackbone)
registry.BACKBONES.register("toy_sequence", ToySequenceBackbone)
