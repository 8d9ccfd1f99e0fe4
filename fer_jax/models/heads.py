"""Heads: a backbone's outputs ({'features': (..., F), aux...}) -> named model outputs.

Every head is a Linen module registered in ``fer_jax.registry.HEADS`` and called as
``head(backbone_outputs, train=train)``; it returns a dict whose keys name what it predicts, so that
loss terms and evaluators find their inputs by name:

=============  =================================================================================
``linear``     [dropout] -> Dense -> ``logits`` (softmax classifier; ConvNeXt / EmoNeXt heads)
``cosine``     cosine classifier (ArcFace eq. 1-3, ``fer_jax.layers.arcface.CosineHead``) ->
               ``cosine``; the ``arcface`` loss term applies the label-dependent margin
``tanh``       [dropout] -> Dense -> tanh -> ``valence_arousal`` (Hasani & Mahoor's output layer)
``multilabel`` [dropout] -> Dense -> ``multilabel_logits`` (sigmoid per label; EMOTIC categories)
``regression`` [dropout] -> Dense [-> activation] -> a named output (e.g. ``au_intensity``)
``multitask``  several of the above side by side (e.g. 26 categories + 3 sentiments)
=============  =================================================================================

A head's ``output`` field renames its output (``output='sentiment_logits'``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.layers.arcface import CosineHead as _CosineLayer
from fer_jax.registry import HEADS

trunc_normal_init = nn.initializers.truncated_normal(stddev=0.02)
ACTIVATIONS = {"none": lambda x: x, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
               "relu": jax.nn.relu, "softplus": jax.nn.softplus}


def _features(outputs: Mapping[str, jax.Array]) -> jax.Array:
  if "features" not in outputs:
    raise KeyError(f"A head needs the backbone output 'features'; got {sorted(outputs)}")
  return outputs["features"]


class _DenseHead(nn.Module):
  """[dropout] -> Dense(num_outputs) [-> activation], float32 out."""

  num_outputs: int
  output: str = "logits"
  dropout_rate: float = 0.0
  init_scale: float = 1.0  # multiplies the initial kernel (ConvNeXt's head_init_scale)
  kernel_init: str = "trunc_normal"  # or 'lecun' (Inception-ResNet's Dense layers)
  activation: str = "none"
  dtype: Any = None

  @nn.compact
  def __call__(self, outputs: Mapping[str, jax.Array], *, train: bool = False) -> Dict[str, jax.Array]:
    if not isinstance(self.num_outputs, int) or self.num_outputs < 1:
      raise ValueError(f"head num_outputs must be an int >= 1, got {self.num_outputs!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"head dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"head activation={self.activation!r}; expected one of {sorted(ACTIVATIONS)}")
    inits = {"trunc_normal": nn.initializers.truncated_normal(stddev=0.02 * self.init_scale),
             "lecun": nn.initializers.variance_scaling(self.init_scale, "fan_in", "truncated_normal")}
    if self.kernel_init not in inits:
      raise ValueError(f"head kernel_init={self.kernel_init!r}; expected one of {sorted(inits)}")
    x = _features(outputs)
    x = x.astype(self.dtype) if self.dtype is not None else x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    y = nn.Dense(self.num_outputs, dtype=self.dtype, kernel_init=inits[self.kernel_init],
                 name="dense")(x)
    return {self.output: ACTIVATIONS[self.activation](y.astype(jnp.float32))}


@HEADS.register("linear")
class LinearHead(_DenseHead):
  """Softmax classifier: ``logits`` (..., num_outputs)."""


@HEADS.register("tanh")
class TanhHead(_DenseHead):
  """Bounded regression (valence / arousal in [-1, 1]): ``valence_arousal`` (..., num_outputs)."""

  output: str = "valence_arousal"
  activation: str = "tanh"
  kernel_init: str = "lecun"


@HEADS.register("multilabel")
class MultiLabelHead(_DenseHead):
  """Independent sigmoid per label: ``multilabel_logits`` (..., num_outputs) (pre-sigmoid)."""

  output: str = "multilabel_logits"


@HEADS.register("regression")
class RegressionHead(_DenseHead):
  """Unbounded (or ``activation``-bounded) regression, e.g. action-unit intensities."""

  output: str = "regression"


@HEADS.register("cosine")
class CosineHead(nn.Module):
  """ArcFace cosine classifier: ``cosine`` (..., num_outputs) in [-1, 1]; argmax = the class.

  The margin needs the labels, so it is applied by the ``arcface`` loss term, not here.
  """

  num_outputs: int
  output: str = "cosine"
  dropout_rate: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, outputs: Mapping[str, jax.Array], *, train: bool = False) -> Dict[str, jax.Array]:
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"head dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(_features(outputs))
    cos = _CosineLayer(self.num_outputs, dtype=self.dtype, name="cosine")(x)
    return {self.output: cos.astype(jnp.float32)}


@HEADS.register("multitask")
class MultiTaskHead(nn.Module):
  """Several heads on the same features: ``heads = {param_name: {'name': <head>, **kwargs}}``.

  The outputs of all heads are merged (their ``output`` names must differ).
  """

  heads: Mapping[str, Mapping[str, Any]]
  dtype: Any = None

  @nn.compact
  def __call__(self, outputs: Mapping[str, jax.Array], *, train: bool = False) -> Dict[str, jax.Array]:
    if not self.heads:
      raise ValueError("multitask head: heads is empty")
    merged: Dict[str, jax.Array] = {}
    for param_name, spec in self.heads.items():
      head = build_head(dict(spec), dtype=self.dtype, name=param_name)
      out = head(outputs, train=train)
      clash = set(out) & set(merged)
      if clash:
        raise ValueError(f"multitask head {param_name!r} outputs {sorted(clash)} already produced by "
                         "another head; give it another 'output'")
      merged.update(out)
    return merged


def build_head(spec: Mapping[str, Any], dtype: Optional[Any] = None, name: Optional[str] = "head"):
  """``{'name': 'linear', 'num_outputs': 7, ...}`` -> the head module."""
  spec = dict(spec)
  if "name" not in spec:
    raise ValueError(f"head spec {spec} has no 'name'; known heads: {HEADS.names()}")
  cls = HEADS.get(spec.pop("name"))
  if dtype is not None:
    spec.setdefault("dtype", dtype)
  try:
    return cls(**spec, name=name)
  except TypeError as e:
    raise TypeError(f"head {cls.__name__}: {e}") from None
