"""Streaming per-dimension mean absolute error (a clu ``Metric``), for AU intensity regression."""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics


@flax.struct.dataclass
class MeanAbsoluteError(clu_metrics.Metric):
  """MAE per dimension over kept rows: predictions / labels (B, D), mask None or (B,)."""

  total: jnp.ndarray
  count: jnp.ndarray

  @classmethod
  def empty(cls, num_dims: int = 1) -> "MeanAbsoluteError":
    return cls(total=jnp.zeros((num_dims,), jnp.float32), count=jnp.zeros((), jnp.float32))

  @classmethod
  def from_model_output(cls, *, predictions: jnp.ndarray, labels: jnp.ndarray,
                        mask: Optional[jnp.ndarray] = None, **_) -> "MeanAbsoluteError":
    p, y = jnp.asarray(predictions, jnp.float32), jnp.asarray(labels, jnp.float32)
    if p.shape != y.shape or p.ndim != 2:
      raise ValueError(f"predictions {p.shape} and labels {y.shape} must be equal and (B, D)")
    w = jnp.ones(p.shape[:1], jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32).reshape(-1)
    return cls(total=(jnp.abs(p - y) * w[:, None]).sum(0), count=w.sum())

  def merge(self, other: "MeanAbsoluteError") -> "MeanAbsoluteError":
    return type(self)(total=self.total + other.total, count=self.count + other.count)

  def compute(self) -> np.ndarray:
    n = float(self.count)
    return np.asarray(self.total, np.float64) / n if n else np.full(self.total.shape, np.nan)
