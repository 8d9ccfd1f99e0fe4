"""A model = a registered backbone + a registered head, called with named inputs.

``Model(backbone, head).apply(variables, train=False, image=x)`` -> ``{'features', 'logits', ...}``:
the backbone reads the inputs it declares (``input_names``: 'image', 'frames', 'body', 'context',
'landmarks', ...), returns ``{'features', <aux outputs such as 'sa_loss'>}``, and the head adds its
named outputs. Parameters live under ``backbone/`` and ``head/``, so pretrained weights are imported per
backbone (``fer_jax.registry.PRETRAINED``).

Configs name both parts::

    config.model = dict(backbone=dict(name='convnext', size='atto', stem_patch_size=2),
                        head=dict(name='linear', num_outputs=7))

``backbone_frozen=True`` (a linear probe) runs the backbone as at inference in training too (BatchNorm on its
running statistics, no dropout or drop path) and stops the gradient at its outputs, so a training step costs
a forward pass of the backbone; pair it with ``config.optimizer.frozen='^backbone/'`` so that no update
(weight decay included) touches the backbone's parameters.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models.heads import build_head
from fer_jax.registry import BACKBONES


# Inputs that hold pixels: integer arrays there are raw images that skipped preprocessing.
IMAGE_INPUTS = ("image", "frames", "body", "context", "face")


class Model(nn.Module):
  """backbone -> head; named inputs in, named outputs out (float32)."""

  backbone: nn.Module
  head: nn.Module
  backbone_frozen: bool = False

  @property
  def input_names(self) -> Tuple[str, ...]:
    return tuple(type(self.backbone).input_names)

  @nn.compact
  def __call__(self, *, train: bool = False, **inputs: jax.Array) -> Dict[str, jax.Array]:
    missing = [k for k in self.input_names if k not in inputs]
    if missing:
      raise ValueError(f"{type(self.backbone).__name__} needs the input(s) {missing}; got "
                       f"{sorted(inputs)}")
    for k in self.input_names:
      dtype = getattr(inputs[k], "dtype", None)
      if k in IMAGE_INPUTS and dtype is not None and jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{type(self.backbone).__name__} expects float inputs; input {k!r} has dtype "
                        f"{jnp.dtype(dtype).name} (raw pixels 0..255?). Preprocess with "
                        "fer_jax.train.preprocess.preprocess_images first.")
    backbone_train = train and not self.backbone_frozen
    outputs = dict(self.backbone(**{k: inputs[k] for k in self.input_names}, train=backbone_train))
    if self.backbone_frozen:
      outputs = jax.lax.stop_gradient(outputs)
    head_out = self.head(outputs, train=train)
    clash = set(head_out) & set(outputs)
    if clash:
      raise ValueError(f"head outputs {sorted(clash)} clash with the backbone's outputs")
    outputs.update(head_out)
    return outputs


def build_backbone(spec: Mapping[str, Any], dtype: Optional[Any] = None, name: Optional[str] = None):
  """``{'name': 'convnext', 'size': 'atto', ...}`` -> the backbone module."""
  spec = dict(spec)
  if "name" not in spec:
    raise ValueError(f"backbone spec {spec} has no 'name'; known backbones: {BACKBONES.names()}")
  cls = BACKBONES.get(spec.pop("name"))
  if dtype is not None:
    spec["dtype"] = dtype
  try:
    return cls(**spec, name=name)
  except TypeError as e:
    raise TypeError(f"backbone {cls.__name__}: {e}") from None


def build_model(model_config: Mapping[str, Any], dtype: Optional[Any] = None) -> Model:
  """``config.model`` (``backbone`` and ``head`` specs) -> :class:`Model`."""
  for part in ("backbone", "head"):
    if part not in model_config:
      raise ValueError(f"config.model has no {part!r} section; it has {sorted(model_config)} "
                       "(expected model=dict(backbone=dict(name=...), head=dict(name=...)))")
  extra = set(model_config) - {"backbone", "head", "backbone_frozen"}
  if extra:
    raise ValueError(f"config.model has unknown field(s) {sorted(extra)}; expected 'backbone', 'head' and "
                     "optionally 'backbone_frozen'")
  frozen = model_config.get("backbone_frozen", False)
  if not isinstance(frozen, bool):
    raise ValueError(f"config.model.backbone_frozen={frozen!r}; expected True or False")
  return Model(backbone=build_backbone(model_config["backbone"], dtype),
               head=build_head(model_config["head"], dtype, name=None), backbone_frozen=frozen)
