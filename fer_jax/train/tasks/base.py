"""The task contract: what a paper's objective declares to the shared trainer.

A task says which record fields it reads (``fields``: record key -> batch field, with the kind of
each: image, frames, int label, float targets, arrays), how they are preprocessed on the accelerator
(``model_inputs``), how the model is called (named inputs, ``Model.input_names``), its loss as named
terms with config weights (``config.loss.<term>.weight``, ``fer_jax.losses.terms``), the training
metrics it logs, and what one evaluation batch hands to the evaluators (``predict``). The trainer
passes ONE task object into the train and eval steps; a new task is a registration in
``fer_jax.registry.TASKS``, never an edit of the trainer.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fer_jax.data import pipeline
from fer_jax.losses.terms import build_loss
from fer_jax.train.preprocess import preprocess_images

Batch = Mapping[str, jax.Array]
ApplyFn = Callable[[Dict[str, jax.Array]], Dict[str, jax.Array]]


class Task:
  """Base class: image fields are preprocessed on device, everything else passes through.

  Subclasses set ``name``, ``default_loss``, ``default_evaluator`` and implement ``fields`` (and
  override the hooks they need).
  """

  name: ClassVar[str] = ""
  default_loss: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
  default_evaluator: ClassVar[str] = ""
  label_field: ClassVar[Optional[str]] = None  # batch field with class labels (for samplers)

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    loss_config = config.get("loss") or {}
    self.loss_config = dict(loss_config) if loss_config else dict(self.default_loss)
    self.loss_fn = build_loss(self.loss_config)
    self.class_names: Sequence[str] = ()

  # -------------------------------------------------------------------------------- declarations
  def fields(self) -> Dict[str, pipeline.Field]:
    """Batch field name -> where it comes from in a record and what kind it is."""
    raise NotImplementedError

  def eval_fields(self) -> Dict[str, pipeline.Field]:
    return self.fields()

  @property
  def train_log_keys(self) -> Tuple[str, ...]:
    return ("loss",) + tuple(f"loss/{t}" for t in self.loss_terms) + tuple(self.metric_names)

  @property
  def loss_terms(self) -> Tuple[str, ...]:
    return tuple(k for k, v in self.loss_config.items() if float(dict(v).get("weight", 1.0)))

  metric_names: ClassVar[Tuple[str, ...]] = ()
  images_per_example: int = 1

  def bind(self, builder) -> None:
    """Checks the dataset has the declared record fields; reads class names when it has them."""
    features = builder.info.features
    wanted = {f.key for f in {**self.fields(), **self.eval_fields()}.values()}
    missing = sorted(k for k in wanted if k not in features)
    if missing:
      raise ValueError(f"Task {self.name!r} needs the record field(s) {missing}, which dataset "
                       f"{builder.info.full_name} does not have; its fields: {sorted(features.keys())}. "
                       "Set the config.dataset.*_key options to the dataset's names.")
    if self.label_field:
      key = self.fields()[self.label_field].key
      names = list(getattr(features[key], "names", None) or [])
      if names:
        self.class_names = names

  input_names: Tuple[str, ...] = ("image",)

  def bind_model(self, input_names: Sequence[str]) -> None:
    """Records the model's named inputs (e.g. 'image' vs 'frames' decides frame vs clip models)."""
    self.input_names = tuple(input_names)

  # -------------------------------------------------------------------------------- host pipelines
  def train_transform(self, aug: pipeline.AugmentConfig):
    return pipeline.RecordTrainTransform(self.fields(), aug)

  def eval_transform(self, aug: pipeline.AugmentConfig):
    return pipeline.RecordEvalTransform(self.eval_fields(), aug)

  def train_dataset(self, source, aug: pipeline.AugmentConfig, **kwargs):
    return pipeline.train_dataset(source, aug, transform=self.train_transform(aug), **kwargs)

  def eval_dataset(self, source, aug: pipeline.AugmentConfig, **kwargs):
    return pipeline.eval_dataset(source, aug, transform=self.eval_transform(aug), **kwargs)

  # -------------------------------------------------------------------------------- device (traced)
  def preprocess(self, batch: Batch) -> Dict[str, jax.Array]:
    """uint8 image / frames fields -> normalised float32 (``config.input``); others unchanged."""
    out = dict(batch)
    for name, f in self.fields().items():
      if f.kind in ("image", "frames") and name in out:
        out[name] = preprocess_images(out[name], self.config)
    return out

  def model_inputs(self, batch: Batch, input_names: Sequence[str]) -> Dict[str, jax.Array]:
    """The named model inputs of a preprocessed batch."""
    missing = [k for k in input_names if k not in batch]
    if missing:
      raise ValueError(f"Task {self.name!r} gives the model {sorted(batch)}; the model needs {missing}")
    return {k: batch[k] for k in input_names}

  def loss(self, outputs: Batch, batch: Batch) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Weighted sum of the configured terms; metrics = each term plus ``train_metrics``."""
    total, terms = self.loss_fn(outputs, batch)
    metrics = {f"loss/{k}": v for k, v in terms.items()}
    metrics.update(self.train_metrics(outputs, batch))
    return total, metrics

  def train_metrics(self, outputs: Batch, batch: Batch) -> Dict[str, jax.Array]:
    return {}

  def train_step_outputs(self, apply_fn: ApplyFn, batch: Batch):
    """(loss, metrics) of one training batch; ``apply_fn(inputs) -> outputs`` (train mode)."""
    batch = self.preprocess(batch)
    outputs = apply_fn(batch)
    return self.loss(outputs, batch)

  def predict(self, apply_fn: ApplyFn, batch: Batch) -> Dict[str, jax.Array]:
    """What the evaluators receive for one evaluation batch (inference mode)."""
    raise NotImplementedError

  # -------------------------------------------------------------------------------- shapes
  frames_per_example: int = 0  # T of 'frames' fields (clips)

  def example_batch(self, input_names: Sequence[str], source=None) -> Dict[str, jax.Array]:
    """Zero model inputs (batch 1) for ``init`` / ``jax.eval_shape``.

    With a data ``source`` the shapes are those of its first record after the training transform
    (any image size, any field); without one they come from the config (square images).
    """
    aug = pipeline.aug_from_config(self.config.input)
    if source is not None:
      ex = self.train_transform(aug).random_map(source[0], np.random.default_rng(0))
      batch = {k: np.zeros((1,) + np.shape(v), np.asarray(v).dtype) for k, v in ex.items()}
    else:
      batch = {}
      for name, f in self.fields().items():
        if f.kind in ("image", "frames"):
          shape = image_shape(self.config, f.aug)
          lead = (1, self.frames_per_example) if f.kind == "frames" else (1,)
          batch[name] = np.zeros(lead + shape, np.uint8)
        elif f.kind == "int":
          batch[name] = np.zeros((1,) + tuple(f.shape or ()), np.int32)
        else:
          batch[name] = np.zeros((1,) + tuple(f.shape or ()), np.float32)
    return self.model_inputs(self.preprocess({k: jnp.asarray(v) for k, v in batch.items()}), input_names)


def image_shape(config: ml_collections.ConfigDict, aug: Optional[pipeline.AugmentConfig] = None,
                image_size: Optional[int] = None) -> Tuple[int, int, int]:
  """(H, W, C) an image field has on the device: its crop, else resize, else the dataset's size."""
  aug = aug or pipeline.aug_from_config(config.input)
  size = aug.crop or aug.resize or image_size or config.dataset.image_size
  return (size, size, config.input.get("channels", 3))
