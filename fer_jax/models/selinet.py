"""SeLiNet (Khargonkar, Choudhary, Kumar and KR, "SeLiNet: Sentiment enriched Lightweight Network for
Emotion Recognition in Images", ISCAS 2023, arXiv 2307.02773; no public code).

Paper says: three blocks, a body feature extractor (on the person crop), an image-aesthetics feature
extractor (on the whole image) and a learning-based fusion network, trained multitask on EMOTIC's 26
categories (multi-label, mAP 27.17) and human sentiment; >85% smaller than the EMOTIC baseline (27.38), and an
on-device model >93% smaller (26.42). It does not give the backbones, the fusion design, widths or losses.

We chose (registered backbone 'selinet'; heads are the composite model's ``multitask`` head)::

  body (B, b, b, 3) ---- body backbone (any registered image backbone; MobileNetV3) ---- f_b (B, D_b)
  context (B, s, s, 3) - AestheticsNet: conv3x3/2 -> [dw3x3/2 -> pw1x1] x n -> pool -- f_a (B, D_a)
                                        \\-> Dense 5 -> sigmoid = ``aesthetics`` (auxiliary targets)
  GatedFusion(f_b, f_a) -> Dense ``hidden`` -> ReLU -> Dropout -> ``features``
  heads: Dense 26 ``multilabel_logits``, Dense 3 ``sentiment_logits`` (+ Dense 3 sigmoid ``vad``)

* Body branch: MobileNetV3 (``fer_jax.models.mobilenetv3``, timm layout, ImageNet weights importable):
  Large 0.75 for SeLiNet, Small 0.5 for the on-device model (``ARCHS``), GMU width 128 for both: the
  largest MobileNetV3 that keeps SeLiNet >85% smaller than the baseline (Large 1.0 with a 256-wide fusion
  is 5.0M parameters, 78% smaller; Large 0.75 / 128 is 3.1M, 86% smaller; Small 0.5 / 128 0.9M, 96%).
* Aesthetics branch: paper says a pre-trained image-aesthetics network; no aesthetics dataset is
  available here, so a small depthwise-separable CNN learns five classical aesthetics attributes of the
  whole image (colourfulness, brightness, contrast, sharpness, rule-of-thirds distance;
  ``fer_jax.data.aesthetics``), computed on the accelerator, through the ``aesthetics`` loss term.
* Fusion: the Gated Multimodal Unit (Arevalo et al., ICLR-W 2017, eq. 1-4): h_b = tanh(W_b f_b),
  h_a = tanh(W_a f_a), z = sigmoid(W_z [f_b, f_a]) (per unit), h = z * h_b + (1 - z) * h_a; it learns, per
  example and per unit, how much the body and the scene contribute.
* Every op has an int8 TFLite kernel (conv / depthwise conv, fully connected, ReLU, hard-swish, tanh,
  logistic, mul, add, mean), so the model quantizes whole (``fer_jax.export.tflite``).

``parameter_table()`` counts the EMOTIC baseline, SeLiNet and on-device SeLiNet from the models
(``python -m fer_jax.models.selinet``).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.data.aesthetics import NUM_AESTHETICS
from fer_jax.layers.conv import Conv2d
from fer_jax.layers.depthwise import DepthwiseConv
from fer_jax.models import composite
from fer_jax.models.efficientnet import conv_init, depthwise_init
from fer_jax.registry import BACKBONES, PRETRAINED

BN_MOMENTUM, BN_EPS = 0.9, 1e-5


def _bn(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype,
                      name=name)


class AestheticsNet(nn.Module):
  """A small CNN over the whole image: features (B, widths[-1]) and ``num_outputs`` sigmoid attributes.

  conv 3x3 / 2 (widths[0]) -> BN -> ReLU, then per further width a depthwise-separable block
  (dw 3x3 / 2 -> BN -> ReLU -> pw 1x1 -> BN -> ReLU), global average pool; ``head``: Dense -> sigmoid.
  """

  widths: Sequence[int] = (16, 32, 64, 128)
  num_outputs: int = NUM_AESTHETICS
  conv_impl: str = "auto"
  depthwise_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Tuple[jax.Array, jax.Array]:
    widths = tuple(int(w) for w in self.widths)
    if not widths or min(widths) < 1:
      raise ValueError(f"AestheticsNet widths={self.widths!r}; expected a non-empty sequence of positive "
                       "ints")
    x = x.astype(self.dtype) if self.dtype is not None else x
    x = Conv2d(widths[0], 3, 2, 1, impl=self.conv_impl, dtype=self.dtype, kernel_init=conv_init,
               name="stem")(x)
    x = nn.relu(_bn(train, self.dtype, "stem_bn")(x))
    for i, w in enumerate(widths[1:]):
      x = DepthwiseConv((3, 3), 2, ((1, 1), (1, 1)), use_bias=False, impl=self.depthwise_impl,
                        dtype=self.dtype, kernel_init=depthwise_init, name=f"block{i}_dw")(x)
      x = nn.relu(_bn(train, self.dtype, f"block{i}_dw_bn")(x))
      x = nn.Dense(w, use_bias=False, dtype=self.dtype, kernel_init=conv_init, name=f"block{i}_pw")(x)
      x = nn.relu(_bn(train, self.dtype, f"block{i}_pw_bn")(x))
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    out = nn.Dense(self.num_outputs, dtype=self.dtype, name="head")(features)
    return features, jax.nn.sigmoid(out.astype(jnp.float32))


class GatedFusion(nn.Module):
  """Gated Multimodal Unit (Arevalo et al. 2017): z * tanh(W_a a) + (1 - z) * tanh(W_b b),
  z = sigmoid(W_z [a, b]); Dense layers ``proj_a``, ``proj_b`` (no bias, as the paper's eq. 1-2) and
  ``gate``."""

  width: int
  dtype: Any = None

  @nn.compact
  def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
    ha = jnp.tanh(nn.Dense(self.width, use_bias=False, dtype=self.dtype, name="proj_a")(a))
    hb = jnp.tanh(nn.Dense(self.width, use_bias=False, dtype=self.dtype, name="proj_b")(b))
    z = jax.nn.sigmoid(nn.Dense(self.width, dtype=self.dtype, name="gate")(jnp.concatenate([a, b], -1)))
    return z * ha + (1.0 - z) * hb


class SeLiNet(nn.Module):
  """SeLiNet up to the heads (registered as 'selinet'): {'features', 'aesthetics'} from body + context.

  Attributes:
    body: the body branch, a registered image backbone spec ({'name': 'mobilenetv3', 'size': 'large_100'};
      'efficientnet' / 'resnext' work as well).
    aesthetics_widths: ``AestheticsNet`` widths.
    fusion_width: GMU width; hidden_width: the Dense after it (0: none); dropout_rate: before the heads.
    conv_impl / depthwise_impl: convolution implementations of the aesthetics branch ('auto').
    dtype: compute dtype.
  """

  input_names: ClassVar[Tuple[str, ...]] = ("body", "context")

  body: Optional[Mapping[str, Any]] = None  # None: ARCHS['selinet']['body']
  aesthetics_widths: Sequence[int] = (16, 32, 64, 128)
  fusion_width: int = 256
  hidden_width: int = 256
  dropout_rate: float = 0.2
  num_aesthetics: int = NUM_AESTHETICS
  conv_impl: str = "auto"
  depthwise_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, body: jax.Array, context: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"selinet dropout_rate={self.dropout_rate!r}; expected [0, 1)")
    spec = dict(self.body or ARCHS["selinet"]["body"])
    if tuple(getattr(BACKBONES.get(spec.get("name", "")), "input_names", ())) != ("image",):
      raise ValueError(f"selinet body={spec!r}: the body branch must be an image backbone (input 'image')")
    fb = composite.build_backbone(spec, self.dtype, name="body")(body, train=train)["features"]
    fa, aesthetics = AestheticsNet(self.aesthetics_widths, self.num_aesthetics, self.conv_impl,
                                   self.depthwise_impl, self.dtype, name="aesthetics")(context, train)
    x = GatedFusion(self.fusion_width, self.dtype, name="fusion")(fb, fa)
    if self.hidden_width:
      x = nn.relu(nn.Dense(self.hidden_width, dtype=self.dtype, name="hidden")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return {"features": x.astype(jnp.float32), "aesthetics": aesthetics}


BACKBONES.register("selinet", SeLiNet)


def body_family(body_params: Mapping[str, Any]) -> str:
  """The registered backbone family of a body branch's parameters: 'resnext' (``layer1_0``), 'mobilenetv3'
  (``conv_head`` with a bias: its efficient last stage) or 'efficientnet' (``conv_head`` without one)."""
  if "layer1_0" in body_params:
    return "resnext"
  head = body_params.get("conv_head")
  if head is not None:
    return "mobilenetv3" if "bias" in head else "efficientnet"
  raise ValueError(f"selinet: cannot tell the body branch's family from its parameters "
                   f"{sorted(body_params)}; expected a ResNet, MobileNetV3 or EfficientNet body")


def load_pretrained(params: Any, weights: Any, *, batch_stats: Any = None):
  """``PRETRAINED`` importer of 'selinet': an ImageNet checkpoint of the body branch's family (timm /
  torchvision state dict, e.g. ``mobilenetv3_large_075``) into ``params['body']`` through that family's
  importer; the aesthetics branch and the fusion keep their fresh parameters and statistics."""
  from fer_jax.models import convert
  params, stats = dict(params), dict(batch_stats or {})
  got = PRETRAINED.get(body_family(params["body"]))(params["body"], weights, batch_stats=stats.get("body"))
  if isinstance(got, convert.BackboneVariables):
    params["body"] = got.params
    if got.batch_stats is not None:
      stats["body"] = got.batch_stats
  else:
    params["body"] = got
  return convert.BackboneVariables(params=params, batch_stats=stats if batch_stats is not None else None)


PRETRAINED.register("selinet", load_pretrained)

# arch -> the 'selinet' backbone fields (experiments/selinet_emotic.py's ``arch=``).
ARCHS: Dict[str, Dict[str, Any]] = {
    "selinet": dict(body=dict(name="mobilenetv3", size="large_075"), aesthetics_widths=(16, 32, 64, 128),
                    fusion_width=128, hidden_width=128),
    "ondevice": dict(body=dict(name="mobilenetv3", size="small_050"), aesthetics_widths=(8, 16, 32, 64),
                     fusion_width=128, hidden_width=128),
}


def heads(num_categories: int = 26, vad: bool = False) -> Dict[str, Any]:
  """The ``multitask`` head spec: categories (``multilabel_logits``), sentiment (``sentiment_logits``)
  and optionally VAD (``vad``, sigmoid: EMOTIC's scaled ratings are in [0, 1])."""
  spec = {"categories": dict(name="multilabel", num_outputs=num_categories),
          "sentiment": dict(name="linear", num_outputs=3, output="sentiment_logits")}
  if vad:
    spec["vad"] = dict(name="regression", num_outputs=3, output="vad", activation="sigmoid")
  return dict(name="multitask", heads=spec)


def baseline_heads(num_categories: int = 26) -> Dict[str, Any]:
  """Kosti et al.'s heads: Dense 26 (categories) and Dense 3 (VAD, unbounded as their code)."""
  return dict(name="multitask", heads={"categories": dict(name="multilabel", num_outputs=num_categories),
                                       "vad": dict(name="regression", num_outputs=3, output="vad")})


def count_params(model_config: Mapping[str, Any], body_size: int = 128,
                 context_size: int = 224) -> Dict[str, int]:
  """Parameters of ``config.model`` (backbone + head), per top-level part: {'total', 'backbone/body', ...}."""
  model = composite.build_model(model_config)
  inputs = {"body": jnp.zeros((1, body_size, body_size, 3)),
            "context": jnp.zeros((1, context_size, context_size, 3))}
  shapes = jax.eval_shape(functools.partial(model.init, train=False), {"params": jax.random.key(0)}, **inputs)
  out = {"total": 0}
  for part, tree in shapes["params"].items():
    for name, sub in tree.items():
      n = int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(sub)))
      out[f"{part}/{name}"] = n
      out["total"] += n
  return out


def parameter_table(vad: bool = False) -> Dict[str, Dict[str, Any]]:
  """{model: {'params', 'parts', 'reduction_vs_baseline', 'float32_mib'}} for the EMOTIC baseline (two
  ResNet-18s), SeLiNet and on-device SeLiNet, counted from the models themselves. The paper's reductions:
  >85% (SeLiNet) and >93% (on-device; its "model size" may include quantization, which parameters do not)."""
  from fer_jax.models import emotic_baseline  # noqa: F401  (registers 'emotic_baseline')
  configs = {"baseline": dict(backbone=dict(name="emotic_baseline", branch="resnet18"),
                              head=baseline_heads()),
             "selinet": dict(backbone=dict(name="selinet", **ARCHS["selinet"]), head=heads(vad=vad)),
             "ondevice": dict(backbone=dict(name="selinet", **ARCHS["ondevice"]), head=heads(vad=vad))}
  counts = {k: count_params(v) for k, v in configs.items()}
  base = counts["baseline"]["total"]
  return {k: {"params": c["total"], "parts": {p: n for p, n in c.items() if p != "total"},
              "reduction_vs_baseline": 1.0 - c["total"] / base, "float32_mib": 4 * c["total"] / 2**20}
          for k, c in counts.items()}


def format_parameter_table(table: Mapping[str, Mapping[str, Any]]) -> str:
  lines = ["| model | parameters | float32 MiB | smaller than the baseline | parts |",
           "|---|---|---|---|---|"]
  for name, row in table.items():
    parts = ", ".join(f"{p} {n:,}" for p, n in row["parts"].items())
    lines.append(f"| {name} | {row['params']:,} | {row['float32_mib']:.2f} | "
                 f"{100 * row['reduction_vs_baseline']:.1f}% | {parts} |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(format_parameter_table(parameter_table()))
