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
from typing import Any, Dict, Mapping, Optional, Tuple

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

  def replace(self, **changes: Any) -> "AugmentConfig":
    return dataclasses.replace(self, **changes)


def check_frames(x: Any, key: str, clip: bool = False) -> np.ndarray:
  """A uint8 image (H, W, C) or clip (T, H, W, C), C in {1, 3}; (H, W) / (T, H, W) get C = 1."""
  x = np.asarray(x)
  nd = 4 if clip else 3
  if x.ndim == nd - 1:
    x = x[..., None]
  if x.ndim != nd or x.dtype != np.uint8 or x.shape[-1] not in (1, 3):
    what = "frames of shape (T, H, W, 1 or 3)" if clip else "image of shape (H, W, 1) or (H, W, 3)"
    raise ValueError(f"Record field {key!r} has shape {x.shape} and dtype {x.dtype}; "
                     f"expected a uint8 {what}")
  return x


def augment(frames: np.ndarray, aug: AugmentConfig, rng: Optional[np.random.Generator]) -> np.ndarray:
  """THE image augmentation, for images (H, W, C) and clips (T, H, W, C) alike.

  Train (``rng`` given): resize -> rotation -> random crop -> flips, one draw shared by every frame
  of a clip. Eval (``rng`` None): resize -> centre crop, or ten-crop of an image (10, s, s, C).
  """
  single = frames.ndim == 3
  x = frames[None] if single else frames
  if aug.resize:
    x = np.stack([resize(f, aug.resize) for f in x])
  if rng is None:
    if aug.crop:
      if single and aug.eval_crops == "ten":
        return np.ascontiguousarray(ten_crop(x[0], aug.crop))
      x = np.stack([center_crop(f, aug.crop) for f in x])
  else:
    if aug.rotation:
      angle = float(rng.uniform(-aug.rotation, aug.rotation))
      x = np.stack([rotate(f, angle) for f in x])
    h, w = x.shape[1:3]
    if aug.crop and aug.crop < max(h, w):
      top = int(rng.integers(0, h - aug.crop + 1))
      left = int(rng.integers(0, w - aug.crop + 1))
      x = x[:, top:top + aug.crop, left:left + aug.crop]
    if aug.hflip and rng.random() < 0.5:
      x = x[:, :, ::-1]
    if aug.vflip and rng.random() < 0.5:
      x = x[:, ::-1]
  return np.ascontiguousarray(x[0] if single else x)


# ----------------------------------------------------------------------------------------------------
# Records with named fields.
# ----------------------------------------------------------------------------------------------------

FIELD_KINDS = ("image", "frames", "int", "float", "bool", "array")


@dataclasses.dataclass(frozen=True)
class Field:
  """One field of the batches a task trains on, read from the record field ``key``.

  kind: 'image' (uint8 (H, W, C), augmented), 'frames' (uint8 (T, H, W, C), one augmentation for all
  frames), 'int' (class labels, int32), 'float' (targets: scalars, multi-hot vectors, AU intensities;
  float32), 'bool', or 'array' (passed through: landmarks, ids). ``aug`` overrides the pipeline's
  augmentation for this image (e.g. a 128 px body crop beside a 224 px context image).
  """

  key: str
  kind: str = "array"
  aug: Optional[AugmentConfig] = None
  shape: Optional[Tuple[int, ...]] = None  # checked when given (per example, after conversion)

  def __post_init__(self):
    if self.kind not in FIELD_KINDS:
      raise ValueError(f"Field {self.key!r}: kind={self.kind!r}; expected one of {FIELD_KINDS}")

  def read(self, element: Dict[str, Any], aug: AugmentConfig,
           rng: Optional[np.random.Generator]) -> np.ndarray:
    if self.key not in element:
      raise KeyError(f"Record has no field {self.key!r}; it has {sorted(element)}")
    v = element[self.key]
    if self.kind in ("image", "frames"):
      out = augment(check_frames(v, self.key, clip=self.kind == "frames"), self.aug or aug, rng)
    elif self.kind == "int":
      out = np.asarray(v).astype(np.int32)
    elif self.kind == "float":
      out = np.asarray(v, np.float32)
    elif self.kind == "bool":
      out = np.asarray(v).astype(bool)
    else:
      out = np.asarray(v)
    if self.shape is not None and tuple(out.shape) != tuple(self.shape):
      raise ValueError(f"Record field {self.key!r} has shape {out.shape}; expected {tuple(self.shape)}")
    return out


def _read_fields(fields: Mapping[str, Field], element, aug, rng) -> Dict[str, np.ndarray]:
  return {name: f.read(element, aug, rng) for name, f in fields.items()}


class RecordTrainTransform(grain.transforms.RandomMap):
  """Record -> {name: field} with the training augmentation (one rng per example)."""

  def __init__(self, fields: Mapping[str, Field], aug: AugmentConfig):
    self.fields, self.aug = dict(fields), aug

  def random_map(self, element: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
    return _read_fields(self.fields, element, self.aug, rng)


class RecordEvalTransform(grain.transforms.Map):
  """Record -> {name: field, 'mask': True} with the evaluation preprocessing."""

  def __init__(self, fields: Mapping[str, Field], aug: AugmentConfig):
    self.fields, self.aug = dict(fields), aug

  def map(self, element: Dict[str, Any]) -> Dict[str, Any]:
    return {**_read_fields(self.fields, element, self.aug, None), "mask": np.bool_(True)}


def image_label_fields(image_key: str = "image", label_key: str = "label") -> Dict[str, Field]:
  return {"image": Field(image_key, "image"), "label": Field(label_key, "int")}


class TrainTransform(RecordTrainTransform):
  """Decode -> resize -> rotation -> random crop -> flips; returns {'image', 'label'}."""

  def __init__(self, aug: AugmentConfig, image_key: str = "image", label_key: str = "label"):
    super().__init__(image_label_fields(image_key, label_key), aug)


class EvalTransform(RecordEvalTransform):
  """Decode -> resize -> centre crop or ten-crop; returns {'image', 'label', 'mask'}."""

  def __init__(self, aug: AugmentConfig, image_key: str = "image", label_key: str = "label"):
    super().__init__(image_label_fields(image_key, label_key), aug)


# ----------------------------------------------------------------------------------------------------
# Datasets.
# ----------------------------------------------------------------------------------------------------

class ProcessBlocks(grain.MapDataset):
  """Process ``index``'s share of a global stream: its local element j is global element
  (j // block) * block * count + index * block + j % block (block = the per-process batch), so the
  processes' local batches, concatenated in process order, are the global batch."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, block: int, index: int, count: int):
    super().__init__(parent)
    if not 0 <= index < count or block < 1:
      raise ValueError(f"ProcessBlocks: need 0 <= index < count and block >= 1, got {index}, {count}, {block}")
    self._block, self._index, self._count = block, index, count

  def __len__(self) -> int:
    return len(self._parent) // (self._block * self._count) * self._block

  def _global(self, j: int) -> int:
    b, r = divmod(j, self._block)
    return (b * self._count + self._index) * self._block + r

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._global(index)]

  def __str__(self) -> str:
    return f"ProcessBlocks(block={self._block}, index={self._index}, count={self._count})"


def train_dataset(source: Any, aug: AugmentConfig, *, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, num_threads: int = 2,
                  prefetch: int = 4, image_key: str = "image", label_key: str = "label",
                  transform: Optional[grain.transforms.RandomMap] = None,
                  sampler: Any = None, labels: Optional[np.ndarray] = None) -> grain.IterDataset:
  """Infinite training batches of ``batch_size`` (per process) in the order of ``sampler``.

  ``sampler``: an entry of ``fer_jax.registry.SAMPLERS`` (default: uniform, reshuffled every epoch);
  ``labels``: every record's class, for samplers that need them. ``transform`` replaces the default
  :class:`TrainTransform` (e.g. :class:`RecordTrainTransform` over a task's fields).

  Process-count invariant: the sampler's order and every example's random augmentation are those of
  the single-process (global) stream, and process ``p`` reads block ``p`` of each global batch, so the
  global batch assembled from the processes' local batches is the same, element for element, on 1 or
  N processes (and a checkpoint moves between process counts).
  """
  if len(source) < process_count:
    raise ValueError(f"Training split has {len(source)} examples, fewer than {process_count} processes")
  if sampler is None:
    from fer_jax.data import samplers
    sampler = samplers.from_config(None)
  ds = sampler.dataset(source, seed=seed, labels=labels)
  ds = ds.random_map(transform or TrainTransform(aug, image_key, label_key))  # seeded by global index
  if process_count > 1:
    ds = ProcessBlocks(ds, batch_size, process_index, process_count)
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
