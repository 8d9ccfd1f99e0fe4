"""Single-label image classification (``config.task = 'classification'``).

Record fields: ``image`` (``dataset.image_key``) and ``label`` (``dataset.label_key``). Default loss:
softmax cross-entropy (``ce``); EmoNeXt adds ``sa``, ArcFace heads use ``arcface`` instead. The class
scores are the model output ``logits`` (or ``cosine`` for cosine heads); ten-crop evaluation batches
(B, 10, H, W, C) average them over the crops.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

from fer_jax.data import pipeline
from fer_jax.registry import TASKS
from fer_jax.train.tasks.base import ApplyFn, Batch, Task

SCORE_KEYS = ("logits", "cosine")


def class_scores(outputs: Batch) -> jax.Array:
  for k in SCORE_KEYS:
    if k in outputs:
      return outputs[k].astype(jnp.float32)
  raise KeyError(f"A classification model must output one of {SCORE_KEYS}; it outputs {sorted(outputs)}")


@TASKS.register("classification")
class ClassificationTask(Task):
  """Cross-entropy (or margin) training of an image classifier."""

  name = "classification"
  default_loss = {"ce": {"weight": 1.0}}
  default_evaluator = "classification"
  label_field = "label"
  metric_names = ("accuracy",)

  def __init__(self, config):
    super().__init__(config)
    self.num_classes = int(config.dataset.num_classes)
    self.class_names = [str(i) for i in range(self.num_classes)]

  def bind(self, builder) -> None:
    super().bind(builder)
    if len(self.class_names) != self.num_classes:
      self.class_names = [str(i) for i in range(self.num_classes)]

  def fields(self) -> Dict[str, pipeline.Field]:
    ds = self.config.dataset
    return {"image": pipeline.Field(ds.get("image_key", "image"), "image"),
            "label": pipeline.Field(ds.get("label_key", "label"), "int")}

  def train_metrics(self, outputs: Batch, batch: Batch) -> Dict[str, jax.Array]:
    return {"accuracy": jnp.mean(jnp.argmax(class_scores(outputs), -1) == batch["label"])}

  def predict(self, apply_fn: ApplyFn, batch: Batch) -> Dict[str, jax.Array]:
    images = batch["image"]
    crops = images.ndim == 5
    if crops:
      b, n = images.shape[:2]
      images = images.reshape((b * n,) + images.shape[2:])
    x = self.preprocess({"image": images})
    scores = class_scores(apply_fn(x))
    if crops:
      scores = scores.reshape(b, n, -1).mean(1)
    return {"scores": scores, "predictions": jnp.argmax(scores, -1), "labels": batch["label"],
            "mask": batch["mask"]}
