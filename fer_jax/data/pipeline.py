"""grain input pipelines for image classification.

Train: global shuffle (reshuffled every epoch) -> per-process shard -> decode/resize -> the augmentations
of the papers (rotation, random crop, horizontal / vertical flip; EmoNeXt section III-E) -> batch.
Eval: resize -> centre crop or ten-crop -> padded batches with a ``mask`` so every example counts once.

Everything is deterministic given the seed: grain seeds each example's random transform from the
pipeline seed and the example index, so a restored iterator yields exactly the batches it would have.
Images stay uint8 on the host; scaling to [0, 1] and grey -> RGB happen on the accelerator.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import grain
import numpy as np
from PIL import Image


# ----------------------------------------------------------------------------------------------------
# Per-image transforms (NumPy / PIL, uint8 HWC in and out).
# ----------------------------------------------------------------------------------------------------

def _to_pil(img: np.ndarray) -> Image.Image:
  return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _from_pil(pil: Image.Image, channels: int) -> np.ndarray:
  arr = np.asarray(pil)
  return arr[..., None] if channels == 1 else arr


def resize(img: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of a uint8 (H, W, C) image to (size, size, C)."""
  if img.shape[0] == size and img.shape[1] == size:
    return img
  return _from_pil(_to_pil(img).resize((size, size), Image.BILINEAR), img.shape[-1])


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
  """Rotates counter-clockwise about the centre, bilinear, zero fill (torchvision RandomRotation)."""
  if degrees == 0:
    return img
  return _from_pil(_to_pil(img).rotate(degrees, resample=Image.BILINEAR, fillcolor=0),
                   img.shape[-1])


def crop(img: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
  return img[top:top + size, left:left + size]


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  h, w = img.shape[:2]
  return crop(img, int(round((h - size) / 2.0)), int(round((w - size) / 2.0)), size)


def ten_crop(img: np.ndarray, size: int) -> np.ndarray:
  """The 4 corner crops and the centre crop, then the same of the mirrored image: (10, s, s, C).

  Order as torchvision ``TenCrop``: tl, tr, bl, br, centre, then their horizontal flips.
  """
  h, w = img.shape[:2]
  if size > min(h, w):
    raise ValueError(f"ten_crop size {size} is larger than the image {img.shape[:2]}")
  def five(x):
    return [crop(x, 0, 0, size), crop(x, 0, w - size, size), crop(x, h - size, 0, size),
            crop(x, h - size, w - size, size), center_crop(x, size)]
  return np.stack(five(img) + five(img[:, ::-1]))


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Image preprocessing options (the ``config.input`` fields of the same names)."""

  resize: Optional[int] = None  # resize decoded images to this square size first
  crop: Optional[int] = None  # train: random crop; eval: centre / ten crop of this size
  rotation: float = 0.0  # uniform rotation in [-rotation, rotation] degrees
  hflip: bool = False
  vflip: bool = False
  eval_crops: str = "center"  # 'center' | 'ten'

  def __post_init__(self):
    if self.eval_crops not in ("center", "ten"):
      raise ValueError(f"input.eval_crops={self.eval_crops!r}; expected 'center' or 'ten'")
    if self.crop is not None and self.resize is not None and self.crop > self.resize:
      raise ValueError(f"input.crop={self.crop} is larger than input.resize={self.resize}")


def _check_image(img: Any, key: str) -> np.ndarray:
  img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.dtype != np.uint8 or img.shape[-1] not in (1, 3):
    raise ValueError(f"Record field {key!r} has shape {img.shape} and dtype {img.dtype}; "
                     "expected a uint8 image of shape (H, W, 1) or (H, W, 3)")
  return img


class TrainTransform(grain.transforms.RandomMap):
  """Decode -> resize -> rotation -> random crop -> flips; returns {'image', 'label'}."""

  def __init__(self, aug: AugmentConfig, image_key: str = "image", label_key: str = "label"):
    self.aug, self.image_key, self.label_key = aug, image_key, label_key

  def random_map(self, element: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
    aug = self.aug
    img = _check_image(element[self.image_key], self.image_key)
    if aug.resize:
      img = resize(img, aug.resize)
    if aug.rotation:
      img = rotate(img, float(rng.uniform(-aug.rotation, aug.rotation)))
    if aug.crop and aug.crop < max(img.shape[:2]):
      top = int(rng.integers(0, img.shape[0] - aug.crop + 1))
      left = int(rng.integers(0, img.shape[1] - aug.crop + 1))
      img = crop(img, top, left, aug.crop)
    if aug.hflip and rng.random() < 0.5:
      img = img[:, ::-1]
    if aug.vflip and rng.random() < 0.5:
      img = img[::-1]
    return {"image": np.ascontiguousarray(img), "label": np.int32(element[self.label_key])}


class EvalTransform(grain.transforms.Map):
  """Decode -> resize -> centre crop or ten-crop; returns {'image', 'label', 'mask'}."""

  def __init__(self, aug: AugmentConfig, image_key: str = "image", label_key: str = "label"):
    self.aug, self.image_key, self.label_key = aug, image_key, label_key

  def map(self, element: Dict[str, Any]) -> Dict[str, Any]:
    aug = self.aug
    img = _check_image(element[self.image_key], self.image_key)
    if aug.resize:
      img = resize(img, aug.resize)
    if aug.crop:
      img = ten_crop(img, aug.crop) if aug.eval_crops == "ten" else center_crop(img, aug.crop)
    return {"image": np.ascontiguousarray(img), "label": np.int32(element[self.label_key]),
            "mask": np.bool_(True)}


# ----------------------------------------------------------------------------------------------------
# Datasets.
# ----------------------------------------------------------------------------------------------------

def train_dataset(source: Any, aug: AugmentConfig, *, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, num_threads: int = 2,
                  prefetch: int = 4, image_key: str = "image", label_key: str = "label",
                  transform: Optional[grain.transforms.RandomMap] = None) -> grain.IterDataset:
  """Infinite, reshuffled-every-epoch training batches of ``batch_size`` (per process).

  ``transform`` replaces the default :class:`TrainTransform` (e.g. clips, ``fer_jax.data.clips``).
  """
  if len(source) < process_count:
    raise ValueError(f"Training split has {len(source)} examples, fewer than {process_count} processes")
  ds = grain.MapDataset.source(source).seed(seed).shuffle()
  ds = ds[process_index::process_count].repeat(None)
  ds = ds.random_map(transform or TrainTransform(aug, image_key, label_key))
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))


def _pad_batch(batch: Dict[str, np.ndarray], size: int) -> Dict[str, np.ndarray]:
  n = next(iter(batch.values())).shape[0]
  if n == size:
    return batch
  return {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


def eval_dataset(source: Any, aug: AugmentConfig, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 2, image_key: str = "image",
                 label_key: str = "label", transform: Optional[grain.transforms.Map] = None
                 ) -> grain.IterDataset:
  """One pass over ``source`` in order, in batches padded to ``batch_size`` (``mask`` marks real ones).

  Every process yields the same number of batches (padding where its shard is shorter), as SPMD
  evaluation needs.
  """
  n = len(source)
  per_process = -(-n // process_count)
  num_batches = max(1, -(-per_process // batch_size))
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.map(transform or EvalTransform(aug, image_key, label_key))
  ds = ds.batch(batch_size, drop_remainder=False).map(lambda b: _pad_batch(b, batch_size))
  missing = num_batches - len(ds)
  if missing > 0:  # this process's shard is shorter: add all-padding batches
    empty = _pad_batch({k: v[:0] for k, v in ds[0].items()}, batch_size)
    ds = grain.MapDataset.concatenate([ds, grain.MapDataset.range(missing).map(lambda _: empty)])
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2))


def aug_from_config(input_config: Any) -> AugmentConfig:
  """Builds an :class:`AugmentConfig` from the ``config.input`` section."""
  fields = {f.name for f in dataclasses.fields(AugmentConfig)}
  return AugmentConfig(**{k: input_config[k] for k in fields if k in input_config})
