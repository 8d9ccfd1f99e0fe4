"""The EMOTIC baseline of Kosti, Alvarez, Recasens and Lapedriza ("Context Based Emotion Recognition using
EMOTIC Dataset", TPAMI 2019, sec. 5, Fig. 6), the model SeLiNet compares with (EMOTIC mAP 27.38).

Two ResNet-18 feature extractors, one on the body crop (128 px) and one on the whole image (224 px), each
global-average-pooled to 512 features; the fusion network concatenates them (context first, as the public
re-implementation Tandon-A/emotic), then Dense 256 -> BatchNorm -> ReLU -> Dropout 0.5; the heads (configured
as the ``multitask`` head: Dense 26 ``multilabel_logits`` for the categories, Dense 3 ``vad``) are the
composite model's. Losses: ``emotic_l2`` (dynamically weighted squared error) and ``smooth_l1``.

Paper says: the branches are "low-rank filter" CNNs trained on ImageNet (body) and Places (context)
(their first version), ResNet-18 in the TPAMI version and the public code. We chose: each branch is
``fer_jax.models.resnext``'s ResNet-18 (timm / torchvision layout), so timm / torchvision weights load into
either (``PRETRAINED`` 'emotic_baseline': one state dict into both branches; Kosti et al. used ImageNet for
the body and Places365 for the context, which needs two files: import a Places365 ResNet-18 into
``params['context']`` with ``fer_jax.models.resnext.load_pretrained`` yourself). ``branch`` may also be a
custom ResNet (fields of ``ResNeXtBackbone``) for small-scale runs.

Parameters: ``body/...`` and ``context/...`` (timm names, see resnext.py), ``fuse`` (Dense), ``fuse_bn``.
Outputs: ``features`` (B, 256, after dropout), ``body_features`` and ``context_features`` (B, 512 each).
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models import resnext
from fer_jax.registry import BACKBONES, PRETRAINED

BranchSpec = Union[str, Mapping[str, Any]]


def branch_fields(spec: BranchSpec) -> Dict[str, Any]:
  """'resnet18' (a ``resnext.SIZES`` name) or {block, depths, widths, ...} -> ``ResNeXtBackbone`` fields."""
  if isinstance(spec, str):
    if spec not in resnext.SIZES:
      raise ValueError(f"emotic_baseline branch={spec!r}; expected a ResNet / ResNeXt size "
                       f"{sorted(resnext.SIZES)} or a dict of {resnext.ARCH_FIELDS}")
    return {"size": spec}
  if not hasattr(spec, "keys"):
    raise ValueError(f"emotic_baseline branch={spec!r}; expected a size name or a dict of "
                     f"{resnext.ARCH_FIELDS}")
  fields = dict(spec)
  unknown = sorted(set(fields) - set(resnext.ARCH_FIELDS) - {"size"})
  if unknown:
    raise ValueError(f"emotic_baseline branch has unknown field(s) {unknown}; expected 'size' or "
                     f"{resnext.ARCH_FIELDS}")
  return fields


class EmoticBaseline(nn.Module):
  """Kosti et al.'s body + context network up to the heads (registered as 'emotic_baseline').

  Attributes:
    branch: both branches' architecture (default ResNet-18); ``body_branch`` / ``context_branch`` override
      one of them.
    fusion_width: the fusion Dense width (256).
    dropout_rate: dropout after the fusion (0.5).
    zero_init_residual: ResNet blocks start as the identity (timm's default; irrelevant once pretrained).
    conv_impl: ``fer_jax.layers.conv`` implementation of every convolution ('auto').
    dtype: compute dtype (parameters and BatchNorm statistics stay float32).
  """

  input_names: ClassVar[Tuple[str, ...]] = ("body", "context")

  branch: BranchSpec = "resnet18"
  body_branch: Optional[BranchSpec] = None
  context_branch: Optional[BranchSpec] = None
  fusion_width: int = 256
  dropout_rate: float = 0.5
  zero_init_residual: bool = True
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, body: jax.Array, context: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"emotic_baseline dropout_rate={self.dropout_rate!r}; expected [0, 1)")
    feats = {}
    for name, x, spec in (("body", body, self.body_branch), ("context", context, self.context_branch)):
      trunk = resnext.ResNeXtBackbone(**branch_fields(self.branch if spec is None else spec),
                                      zero_init_residual=self.zero_init_residual, conv_impl=self.conv_impl,
                                      dtype=self.dtype, name=name)
      feats[name] = trunk(x, train=train)["features"]
    x = jnp.concatenate([feats["context"], feats["body"]], -1)
    x = nn.Dense(self.fusion_width, dtype=self.dtype, kernel_init=resnext.fc_init, name="fuse")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=resnext.BN_MOMENTUM, epsilon=resnext.BN_EPS,
                     dtype=self.dtype, name="fuse_bn")(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
    return {"features": x.astype(jnp.float32), "body_features": feats["body"],
            "context_features": feats["context"]}


BACKBONES.register("emotic_baseline", EmoticBaseline)


def load_pretrained(params: Any, weights: Any, *, batch_stats: Any = None):
  """``PRETRAINED`` importer of 'emotic_baseline': one timm / torchvision ResNet state dict (its ``fc``
  dropped) into both branches; the fusion layers keep their fresh parameters and statistics.

  Raises:
    ValueError (``resnext.load_pretrained``'s) when the checkpoint does not fit a branch.
  """
  from fer_jax.models import convert
  params = dict(params)
  new_params, new_stats = dict(params), dict(batch_stats or {})
  for branch in ("body", "context"):
    got = resnext.load_pretrained(params[branch], weights)
    new_params[branch], new_stats[branch] = got.params, got.batch_stats
  return convert.BackboneVariables(params=new_params, batch_stats=new_stats if batch_stats is not None
                                   else {k: new_stats[k] for k in ("body", "context")})


PRETRAINED.register("emotic_baseline", load_pretrained)
