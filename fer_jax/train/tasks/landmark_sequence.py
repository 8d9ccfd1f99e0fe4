"""Emotion from facial-landmark sequences (``config.task = 'landmark_sequence'``): one emotion vs the
rest (Di Luzio, Rosato & Panella 2024, arXiv 2407.14865: a bank of binary models), or all classes.

Record fields: ``landmarks`` (T, L, 2) in pixels (``task_options.landmarks_key``; iBUG-68 order for
the eye-based normalisation) and ``label`` (``dataset.label_key``). Options (``config.task_options``,
defaults in :func:`task_options`):

* ``positive_class``: class id k of the dataset: target 1 where ``label == k``, else 0; one logit
  (model output ``logits`` (B, 1)), loss term ``bce`` (sigmoid BCE, optional ``pos_weight``),
  evaluator ``binary``. None: multi-class (``logits`` (B, num_classes), ``ce``, ``classification``).
* ``landmarks``: indices of the kept landmarks (pruning: the model sees only those, in that order);
  None keeps all. Normalisation still uses all stored landmarks (the eyes may be pruned).
* normalisation, on the accelerator (:func:`normalize_landmarks`; we chose, the paper does not say):
  ``center`` 'frame' (subtract each frame's centroid: global head translation removed, so the
  model sees the face's shape and its motion) or 'first' (the first frame's centroid: translation
  kept); ``rotate`` (turn every frame by the angle that makes the FIRST frame's eye line horizontal:
  head roll removed, in-clip rotation kept); ``scale`` 'iod' (divide by the first frame's
  inter-ocular distance, between the eye centres: the mean of landmarks 36-41 and 42-47), 'rms'
  (the first frame's root-mean-square distance to its centroid: any layout) or 'none';
  ``displacement`` appends x_t - x_0, the motion from the first (neutral) frame, as 2 more channels
  (C = 4). The eye indices are ``eyes`` (default iBUG-68's).
* ``augment`` (training only): one similarity per clip applied after the normalisation: scale
  uniform in [1 - scale, 1 + scale], rotation uniform in +-rotation degrees, translation uniform in
  +-translation (normalised units, i.e. inter-ocular distances with ``scale='iod'``). The host
  pipeline draws the 4 numbers per clip (grain's per-example rng: deterministic, restored with the
  iterator) as the batch field ``jitter``; the accelerator applies them.
* ``num_frames``, ``num_landmarks``: the stored clip shape (T, L) (checked per record, and the input
  shape of ``jax.eval_shape`` without data).

Registers the loss term ``bce`` (:func:`bce_term`); the ``binary`` evaluator is
``fer_jax.evaluators.binary``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fer_jax.data import pipeline
from fer_jax.evaluators import binary as _binary_evaluator  # noqa: F401  (registers 'binary')
from fer_jax.models import landmark_lstm as _landmark_lstm  # noqa: F401  (registers 'landmark_cnn_lstm')
from fer_jax.registry import LOSSES, TASKS
from fer_jax.train.tasks.base import ApplyFn, Batch, Task

IBUG_EYES = (tuple(range(36, 42)), tuple(range(42, 48)))  # the subject's right eye, left eye
CENTERS = ("frame", "first", "none")
SCALES = ("iod", "rms", "none")
_TINY = 1e-6


def task_options(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``config.task_options`` section of ``task='landmark_sequence'`` configs (see the module doc)."""
  c = ml_collections.ConfigDict(dict(
      landmarks_key="landmarks",
      positive_class=ml_collections.FieldReference(None, field_type=int),
      landmarks=ml_collections.FieldReference(None, field_type=tuple),
      num_frames=16, num_landmarks=68,
      center="frame", rotate=True, scale="iod", displacement=True,
      eyes=ml_collections.FieldReference(None, field_type=tuple),
      augment=ml_collections.ConfigDict(dict(scale=0.0, rotation=0.0, translation=0.0))))
  c.update(overrides)
  return c


# ----------------------------------------------------------------------------------------------------
# Pure functions (jit-able): normalisation, jitter, selection.
# ----------------------------------------------------------------------------------------------------

def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates points (..., 2) by the angle with cosine / sine ``cos``, ``sin`` (broadcast, (...,1))."""
  return jnp.stack([cos * x[..., 0] - sin * x[..., 1], sin * x[..., 0] + cos * x[..., 1]], -1)


def normalize_landmarks(x: jax.Array, *, center: str = "frame", rotate: bool = True, scale: str = "iod",
                        eyes: Sequence[Sequence[int]] = IBUG_EYES) -> jax.Array:
  """Landmark clips (B, T, L, 2) in pixels -> translation / roll / size-normalised clips (module doc).

  Degenerate clips (all points equal, e.g. the zero padding of an evaluation batch) give zeros, not
  NaN: the distances are floored at 1e-6.
  """
  if center not in CENTERS:
    raise ValueError(f"task_options.center={center!r}; expected one of {CENTERS}")
  if scale not in SCALES:
    raise ValueError(f"task_options.scale={scale!r}; expected one of {SCALES}")
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 4 or x.shape[-1] != 2:
    raise ValueError(f"landmarks must be (B, T, L, 2), got shape {x.shape}")
  if center == "frame":
    x = x - jnp.mean(x, axis=2, keepdims=True)
  elif center == "first":
    x = x - jnp.mean(x[:, :1], axis=2, keepdims=True)
  if rotate or scale == "iod":
    right, left = (jnp.mean(x[:, 0, jnp.asarray(e)], axis=1) for e in eyes)  # (B, 2)
    d = left - right
    iod = jnp.sqrt(jnp.sum(d * d, axis=-1))
  if rotate:
    safe = jnp.maximum(iod, _TINY)
    cos = jnp.where(iod > _TINY, d[:, 0] / safe, 1.0)[:, None, None]
    sin = jnp.where(iod > _TINY, d[:, 1] / safe, 0.0)[:, None, None]
    x = _rotate(x, cos, -sin)  # by minus the eye-line angle of the first frame
  if scale == "iod":
    x = x / jnp.maximum(iod, _TINY)[:, None, None, None]
  elif scale == "rms":
    first = x[:, 0] - jnp.mean(x[:, 0], axis=1, keepdims=True)
    rms = jnp.sqrt(jnp.mean(jnp.sum(first * first, axis=-1), axis=1))
    x = x / jnp.maximum(rms, _TINY)[:, None, None, None]
  return x


def apply_jitter(x: jax.Array, jitter: jax.Array) -> jax.Array:
  """``s R(a) x + t`` per clip; ``jitter`` (B, 4) = (s, a in radians, t_x, t_y); x (B, T, L, 2)."""
  j = jnp.asarray(jitter, jnp.float32)
  s, a, t = j[:, 0, None, None], j[:, 1, None, None], j[:, None, None, 2:4]
  return s[..., None] * _rotate(x, jnp.cos(a), jnp.sin(a)) + t


def landmark_features(x: jax.Array, *, center: str = "frame", rotate: bool = True, scale: str = "iod",
                      eyes: Sequence[Sequence[int]] = IBUG_EYES, kept: Optional[Sequence[int]] = None,
                      displacement: bool = True, jitter: Optional[jax.Array] = None) -> jax.Array:
  """Stored landmarks (B, T, L, 2) -> model input (B, T, L', 2 or 4): :func:`normalize_landmarks`, the
  training ``jitter`` (:func:`apply_jitter`), the ``kept`` landmarks, then the ``displacement``
  channels x_t - x_0."""
  x = normalize_landmarks(x, center=center, rotate=rotate, scale=scale, eyes=eyes)
  if jitter is not None:
    x = apply_jitter(x, jitter)
  if kept is not None:
    x = x[:, :, jnp.asarray(tuple(int(i) for i in kept))]
  if displacement:
    x = jnp.concatenate([x, x - x[:, :1]], axis=-1)
  return x


def draw_jitter(rng: np.random.Generator, scale: float, rotation: float, translation: float) -> np.ndarray:
  """(4,) float32: scale in [1 - scale, 1 + scale], angle (radians) in +-rotation degrees, shift."""
  return np.array([rng.uniform(1 - scale, 1 + scale), np.deg2rad(rng.uniform(-rotation, rotation)),
                   rng.uniform(-translation, translation), rng.uniform(-translation, translation)],
                  np.float32)


class LandmarkTrainTransform(grain.transforms.RandomMap):
  """Record -> {fields, 'jitter' (4,)}: the declared fields plus one augmentation draw per clip."""

  def __init__(self, fields, aug: pipeline.AugmentConfig, augment: Tuple[float, float, float]):
    self.fields, self.aug, self.augment = dict(fields), aug, tuple(float(a) for a in augment)

  def random_map(self, element, rng: np.random.Generator):
    out = {name: f.read(element, self.aug, rng) for name, f in self.fields.items()}
    out["jitter"] = draw_jitter(rng, *self.augment)
    return out


# ----------------------------------------------------------------------------------------------------
# Loss term.
# ----------------------------------------------------------------------------------------------------

@LOSSES.register("bce")
def bce_term(outputs: Batch, batch: Batch, *, prediction: str = "logits", target: str = "target",
             pos_weight: Optional[float] = None, mask: Optional[str] = None) -> jax.Array:
  """Mean sigmoid binary cross-entropy of one logit z per example against y in {0, 1}:

  ``-(w y log sigmoid(z) + (1 - y) log(1 - sigmoid(z)))`` with w = ``pos_weight`` (1 when None),
  the positives' weight (as ``torch.nn.BCEWithLogitsLoss(pos_weight=...)``); averaged over the
  examples (kept by the batch field ``mask`` when given). ``logits`` (B, 1) or (B,), targets (B,).
  """
  if prediction not in outputs:
    raise KeyError(f"loss term 'bce' needs the model output {prediction!r}; got {sorted(outputs)}")
  if target not in batch:
    raise KeyError(f"loss term 'bce' needs the batch field {target!r} (task_options.positive_class set?); "
                   f"the batch fields are {sorted(batch)}")
  z = outputs[prediction].astype(jnp.float32)
  y = batch[target].astype(jnp.float32)
  if z.shape == y.shape + (1,):
    z = z[..., 0]
  if z.shape != y.shape:
    raise ValueError(f"loss term 'bce': output {prediction!r} has shape {z.shape}; expected {y.shape} or "
                     f"{y.shape + (1,)} (one logit per example) for targets {target!r}")
  w = 1.0 if pos_weight is None else float(pos_weight)
  per = -(w * y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z))
  if mask is None or mask not in batch:
    return per.mean()
  m = batch[mask].astype(jnp.float32).reshape(per.shape)
  return (per * m).sum() / jnp.maximum(m.sum(), 1.0)


# ----------------------------------------------------------------------------------------------------
# The task.
# ----------------------------------------------------------------------------------------------------

def _int_tuple(value: Any, what: str) -> Tuple[int, ...]:
  try:
    t = tuple(int(i) for i in value)
  except (TypeError, ValueError):
    raise ValueError(f"{what}={value!r}; expected a sequence of landmark indices") from None
  if not t or any(i < 0 for i in t) or len(set(t)) != len(t) or any(i != v for i, v in zip(t, value)):
    raise ValueError(f"{what}={value!r}; expected distinct landmark indices >= 0")
  return t


@TASKS.register("landmark_sequence")
class LandmarkSequenceTask(Task):
  """One emotion vs the rest (or all classes) from normalised landmark clips (module docstring)."""

  name = "landmark_sequence"
  label_field = "label"
  metric_names = ("accuracy",)

  def __init__(self, config):
    if "task_options" not in config:
      raise ValueError("config.task='landmark_sequence' needs a config.task_options section "
                       "(fer_jax.train.tasks.landmark_sequence.task_options())")
    o = config.task_options
    self.options = o
    self.positive_class = o.get("positive_class")
    self.binary = self.positive_class is not None
    self.default_loss = {"bce": {"weight": 1.0}} if self.binary else {"ce": {"weight": 1.0}}
    self.default_evaluator = "binary" if self.binary else "classification"
    super().__init__(config)
    self.num_classes = int(config.dataset.num_classes)
    if self.binary and not 0 <= int(self.positive_class) < self.num_classes:
      raise ValueError(f"task_options.positive_class={self.positive_class!r}; expected a class id in "
                       f"0..{self.num_classes - 1} (config.dataset.num_classes={self.num_classes})")
    self.num_frames, self.num_landmarks = int(o.num_frames), int(o.num_landmarks)
    eyes = o.get("eyes") or IBUG_EYES
    self.eyes = tuple(_int_tuple(e, "task_options.eyes[i]") for e in eyes)
    if len(self.eyes) != 2:
      raise ValueError(f"task_options.eyes={eyes!r}; expected two index lists (right eye, left eye)")
    used = [i for e in self.eyes for i in e] if (o.rotate or o.scale == "iod") else []
    kept = o.get("landmarks")
    self.kept = None if kept is None else _int_tuple(kept, "task_options.landmarks")
    for what, idx in (("task_options.landmarks", self.kept or ()), ("task_options.eyes", used)):
      bad = [i for i in idx if i >= self.num_landmarks]
      if bad:
        raise ValueError(f"{what} holds indices {bad} >= num_landmarks={self.num_landmarks}")
    if o.center not in CENTERS or o.scale not in SCALES:
      raise ValueError(f"task_options.center={o.center!r} / scale={o.scale!r}; expected one of {CENTERS} / "
                       f"{SCALES}")
    a = o.get("augment") or {}
    self.augment = (float(a.get("scale", 0.0)), float(a.get("rotation", 0.0)), float(a.get("translation", 0.0)))
    if not (0 <= self.augment[0] < 1 and self.augment[1] >= 0 and self.augment[2] >= 0):
      raise ValueError(f"task_options.augment={dict(a)}; expected 0 <= scale < 1, rotation >= 0 and "
                       "translation >= 0")
    self.class_names = self._names([str(i) for i in range(self.num_classes)])

  def _names(self, names: Sequence[str]):
    if self.binary:
      return ["rest", names[int(self.positive_class)]]
    return list(names)

  @property
  def input_channels(self) -> int:
    return 4 if self.options.displacement else 2

  @property
  def kept_landmarks(self) -> Tuple[int, ...]:
    return self.kept if self.kept is not None else tuple(range(self.num_landmarks))

  def fields(self) -> Dict[str, pipeline.Field]:
    ds = self.config.dataset
    return {"landmarks": pipeline.Field(self.options.landmarks_key, "float",
                                        shape=(self.num_frames, self.num_landmarks, 2)),
            "label": pipeline.Field(ds.get("label_key", "label"), "int")}

  def bind(self, builder) -> None:
    features = builder.info.features
    key = self.options.landmarks_key
    if key in features:
      shape = tuple(features[key].shape)
      if shape != (self.num_frames, self.num_landmarks, 2):
        raise ValueError(f"Dataset {builder.info.full_name} stores {key!r} of shape {shape}; "
                         f"task_options.num_frames={self.num_frames} and num_landmarks={self.num_landmarks} "
                         f"expect ({self.num_frames}, {self.num_landmarks}, 2)")
    super().bind(builder)  # missing fields; class names (ClassLabel)
    names = list(getattr(features[self.fields()["label"].key], "names", None) or [])
    if names:
      if len(names) != self.num_classes:
        raise ValueError(f"Dataset {builder.info.full_name} has {len(names)} classes {names}; "
                         f"config.dataset.num_classes={self.num_classes}")
      self.class_names = self._names(names)

  def train_transform(self, aug):
    if not any(self.augment):
      return super().train_transform(aug)
    return LandmarkTrainTransform(self.fields(), aug, self.augment)

  # Steps (traced under jit).
  def preprocess(self, batch: Batch) -> Dict[str, jax.Array]:
    """Normalised (and, in training, jittered) landmarks of the kept points; ``target`` (binary)."""
    out = dict(batch)
    o = self.options
    out["landmarks"] = landmark_features(batch["landmarks"], center=o.center, rotate=o.rotate, scale=o.scale,
                                         eyes=self.eyes, kept=self.kept, displacement=o.displacement,
                                         jitter=batch.get("jitter"))
    if self.binary and "label" in batch:
      out["target"] = (batch["label"] == int(self.positive_class)).astype(jnp.float32)
    return out

  def _logits(self, outputs: Batch) -> jax.Array:
    if "logits" not in outputs:
      raise KeyError(f"the landmark_sequence task reads the model output 'logits'; got {sorted(outputs)}")
    z = outputs["logits"].astype(jnp.float32)
    want = 1 if self.binary else self.num_classes
    if z.shape[-1] != want:
      raise ValueError(f"model output 'logits' has {z.shape[-1]} columns; task_options.positive_class="
                       f"{self.positive_class} needs {want} (head num_outputs)")
    return z

  def train_metrics(self, outputs: Batch, batch: Batch) -> Dict[str, jax.Array]:
    z = self._logits(outputs)
    if self.binary:
      return {"accuracy": jnp.mean((z[:, 0] >= 0) == (batch["target"] > 0.5))}
    return {"accuracy": jnp.mean(jnp.argmax(z, -1) == batch["label"])}

  def predict(self, apply_fn: ApplyFn, batch: Batch) -> Dict[str, jax.Array]:
    x = self.preprocess({"landmarks": batch["landmarks"], "label": batch["label"]})
    z = self._logits(apply_fn(x))
    if self.binary:
      return {"scores": z[:, 0], "labels": x["target"].astype(jnp.int32), "mask": batch["mask"]}
    return {"scores": z, "predictions": jnp.argmax(z, -1), "labels": batch["label"], "mask": batch["mask"]}
