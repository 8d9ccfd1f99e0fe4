"""Action-unit intensity regression (``config.task = 'action_units'``), added by registration only.

Record fields: ``image`` and the AU intensities (``au.key``, a (K,) float vector in [0, 1], e.g. the
``action_units`` of ``synthetic_expressions``, FACS intensity A-E scaled to [0, 1] for real data).
Registers its head (``action_units``: Dense -> sigmoid -> ``au_intensity``), its loss term
(``au_mse``: mean squared error over AUs, optionally weighting rows where the AU is present) and uses
the ``action_units`` evaluator (per-AU Pearson CC and MAE, AU presence AP / mAP).
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp

from fer_jax.data import pipeline
from fer_jax.models.heads import RegressionHead
from fer_jax.registry import HEADS, LOSSES, TASKS
from fer_jax.train.tasks.base import ApplyFn, Batch, Task

OUTPUT = "au_intensity"


@HEADS.register("action_units")
class ActionUnitHead(RegressionHead):
  """Per-AU intensity in [0, 1]: Dense(num_outputs) -> sigmoid -> ``au_intensity``."""

  output: str = OUTPUT
  activation: str = "sigmoid"


@LOSSES.register("au_mse")
def au_mse_term(outputs: Batch, batch: Batch, *, prediction: str = OUTPUT, target: str = OUTPUT,
                present_weight: float = 1.0, threshold: float = 0.0) -> jax.Array:
  """mean_{b, k} w_bk (p_bk - y_bk)^2 / mean(w), w = ``present_weight`` where y > threshold else 1."""
  if prediction not in outputs:
    raise KeyError(f"loss term 'au_mse' needs the model output {prediction!r}; got {sorted(outputs)}")
  if target not in batch:
    raise KeyError(f"loss term 'au_mse' needs the batch field {target!r}; the batch fields are {sorted(batch)}")
  p = outputs[prediction].astype(jnp.float32)
  y = batch[target].astype(jnp.float32)
  w = jnp.where(y > threshold, present_weight, 1.0)
  return (w * jnp.square(p - y)).sum() / w.sum()


@TASKS.register("action_units")
class ActionUnitTask(Task):
  """Regresses K action-unit intensities from a face image."""

  name = "action_units"
  default_loss = {"au_mse": {"weight": 1.0}}
  default_evaluator = "action_units"
  metric_names = ("mae",)

  def __init__(self, config):
    if "au" not in config:
      raise ValueError("config.task='action_units' needs a config.au section: "
                       "dict(key='action_units', names=(...), threshold=0.0)")
    super().__init__(config)
    self.au_names = tuple(config.au.names)
    self.threshold = float(config.au.get("threshold", 0.0))

  def fields(self) -> Dict[str, pipeline.Field]:
    ds, au = self.config.dataset, self.config.au
    return {"image": pipeline.Field(ds.get("image_key", "image"), "image"),
            OUTPUT: pipeline.Field(au.get("key", "action_units"), "float", shape=(len(self.au_names),))}

  def bind(self, builder) -> None:
    super().bind(builder)
    shape = builder.info.features[self.config.au.get("key", "action_units")].shape
    if tuple(shape) != (len(self.au_names),):
      raise ValueError(f"config.au.names lists {len(self.au_names)} AUs; the dataset's "
                       f"{self.config.au.get('key', 'action_units')!r} field has shape {tuple(shape)}")

  def train_metrics(self, outputs: Batch, batch: Batch) -> Dict[str, jax.Array]:
    return {"mae": jnp.mean(jnp.abs(outputs[OUTPUT] - batch[OUTPUT]))}

  def predict(self, apply_fn: ApplyFn, batch: Batch) -> Dict[str, jax.Array]:
    out = apply_fn(self.preprocess({"image": batch["image"]}))
    return {"predictions": out[OUTPUT].astype(jnp.float32), "targets": batch[OUTPUT],
            "mask": batch["mask"]}
