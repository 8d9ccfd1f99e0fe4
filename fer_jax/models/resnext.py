"""ImageNet ResNet / ResNeXt in torchvision's and timm's layout (He et al. 2016, "Deep Residual Learning",
Table 1; Xie et al. 2017, "Aggregated Residual Transformations", Table 1), so that timm / torchvision
weights (``resnet18`` ... ``resnext101_32x8d``) load by name.

Architecture (torchvision ``resnet.py`` = timm ``ResNet`` with its defaults)::

  stem:  conv7x7/2 (pad 3, no bias) -> BN -> ReLU -> max-pool 3x3/2 (pad 1)
  stage s (planes 64, 128, 256, 512; every stage but the first starts with stride 2):
    BasicBlock (resnet18/34):  conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU
    Bottleneck (resnet50+, ResNeXt): conv1x1 -> BN -> ReLU -> grouped conv3x3(stride, ``groups``) -> BN
      -> ReLU -> conv1x1 (4 x planes) -> BN, + shortcut, ReLU; inner width
      ``int(planes * base_width / 64) * groups`` (ResNeXt-50 32x4d: 128, 256, 512, 1024)
    shortcut: identity, or conv1x1(stride) -> BN when the stride or the width changes
  features: global average pool -> (B, 4 x 512 or 512) float32;  classifier: ``fc`` Dense.

Parameters mirror the PyTorch names with '.' -> '_' for the block index: ``conv1``, ``bn1``,
``layer{1..4}_{i}/{conv1,bn1,conv2,bn2[,conv3,bn3][,downsample_conv,downsample_bn]}``, ``fc``; BatchNorm
statistics live in ``batch_stats`` (momentum 0.9 = torch's 0.1, eps 1e-5). ``load_pretrained`` (registered
in ``PRETRAINED`` as 'resnext') converts timm / torchvision state dicts.

Convolutions and the stem's max-pool are ``fer_jax.layers.conv``'s (``conv_impl='auto'``: exact CPU-fast
implementations on XLA:CPU, XLA's convolutions on GPU / TPU; benchmarks/grouped_conv.py,
benchmarks/resnext_train_step.py).
"""

from __future__ import annotations

import functools
import re
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.layers.conv import Conv2d, max_pool_3x3_s2
from fer_jax.registry import BACKBONES, PRETRAINED, register

BN_MOMENTUM = 0.9  # flax: new = m * old + (1 - m) * batch  (torch momentum 0.1)
BN_EPS = 1e-5
# torch.nn.Linear's default kernel init (kaiming_uniform_, a=sqrt(5): U(+-1/sqrt(fan_in))).
fc_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

BLOCKS = ("basic", "bottleneck")
EXPANSION = {"basic": 1, "bottleneck": 4}
# name -> (block, depths, widths (planes per stage), groups, base_width, stem_width): torchvision / timm.
SIZES: Dict[str, Tuple[str, Tuple[int, ...], Tuple[int, ...], int, int, int]] = {
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512), 1, 64, 64),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512), 1, 64, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 1, 64, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), 1, 64, 64),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 32, 4, 64),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), 32, 8, 64),
    "resnext101_64x4d": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), 64, 4, 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 1, 128, 64),
}
ARCH_FIELDS = ("block", "depths", "widths", "groups", "base_width", "stem_width")
Arch = Tuple[str, Tuple[int, ...], Tuple[int, ...], int, int, int]


# ----------------------------------------------------------------------------- blocks


def _norm(train: bool, dtype: Any, name: str, zero: bool = False) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype,
                      scale_init=nn.initializers.zeros if zero else nn.initializers.ones, name=name)


class Block(nn.Module):
  """A BasicBlock or Bottleneck (torchvision's), with the stride on its 3x3 convolution."""

  block: str
  planes: int
  stride: int = 1
  groups: int = 1
  base_width: int = 64
  zero_init_residual: bool = True
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out_c = self.planes * EXPANSION[self.block]
    conv = functools.partial(Conv2d, impl=self.conv_impl, dtype=self.dtype)
    if self.block == "basic":
      y = conv(self.planes, 3, self.stride, 1, name="conv1")(x)
      y = nn.relu(_norm(train, self.dtype, "bn1")(y))
      y = conv(self.planes, 3, 1, 1, name="conv2")(y)
      # Zero-init of the last BN's scale: every block starts as the identity (Goyal et al. 2017).
      y = _norm(train, self.dtype, "bn2", self.zero_init_residual)(y)
    else:
      width = int(self.planes * (self.base_width / 64.0)) * self.groups
      y = conv(width, 1, name="conv1")(x)
      y = nn.relu(_norm(train, self.dtype, "bn1")(y))
      y = conv(width, 3, self.stride, 1, self.groups, name="conv2")(y)
      y = nn.relu(_norm(train, self.dtype, "bn2")(y))
      y = conv(out_c, 1, name="conv3")(y)
      y = _norm(train, self.dtype, "bn3", self.zero_init_residual)(y)
    if self.stride != 1 or x.shape[-1] != out_c:
      x = conv(out_c, 1, self.stride, name="downsample_conv")(x)
      x = _norm(train, self.dtype, "downsample_bn")(x)
    return nn.relu(x + y)


# ----------------------------------------------------------------------------- backbone and classifier


def _positive_ints(name: str, value: Any) -> Tuple[int, ...]:
  t = tuple(value) if isinstance(value, (list, tuple)) else None
  if not t or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in t):
    raise ValueError(f"resnext {name}={value!r}; expected a non-empty sequence of positive ints")
  return tuple(int(v) for v in t)


def resolve_arch(size: Optional[str], block: Optional[str] = None, depths: Optional[Sequence[int]] = None,
                 widths: Optional[Sequence[int]] = None, groups: Optional[int] = None,
                 base_width: Optional[int] = None, stem_width: Optional[int] = None) -> Arch:
  """(block, depths, widths, groups, base_width, stem_width) from a ``SIZES`` name or from the fields
  (block, depths and widths required; groups 1, base_width 64, stem_width 64 by default), validated."""
  fields = dict(block=block, depths=depths, widths=widths, groups=groups, base_width=base_width,
                stem_width=stem_width)
  given = sorted(k for k, v in fields.items() if v is not None)
  if size is not None:
    if size not in SIZES:
      raise ValueError(f"resnext size={size!r}; expected one of {sorted(SIZES)} or None")
    if given:
      raise ValueError(f"resnext size={size!r} fixes {', '.join(ARCH_FIELDS)}; give either a size or "
                       f"those fields (got {given})")
    return SIZES[size]
  if block is None or depths is None or widths is None:
    raise ValueError(f"resnext: give a size (one of {sorted(SIZES)}) or at least block, depths and widths "
                     f"(got {given or 'none'})")
  if block not in BLOCKS:
    raise ValueError(f"resnext block={block!r}; expected one of {BLOCKS}")
  depths, widths = _positive_ints("depths", depths), _positive_ints("widths", widths)
  if len(depths) != len(widths):
    raise ValueError(f"resnext depths={depths} and widths={widths} differ in length")
  groups, base_width, stem_width = (_positive_ints(k, (v,))[0] for k, v in (
      ("groups", 1 if groups is None else groups), ("base_width", 64 if base_width is None else base_width),
      ("stem_width", 64 if stem_width is None else stem_width)))
  if block == "basic" and (groups, base_width) != (1, 64):
    raise ValueError(f"resnext block='basic' supports only groups=1 and base_width=64 (torchvision's "
                     f"BasicBlock); got groups={groups}, base_width={base_width}")
  if block == "bottleneck" and any(int(p * base_width / 64.0) < 1 for p in widths):
    raise ValueError(f"resnext widths={widths} with base_width={base_width} give an empty group width "
                     "int(planes * base_width / 64)")
  return block, depths, widths, groups, base_width, stem_width


def size_name(arch: Sequence[Any]) -> Optional[str]:
  """The ``SIZES`` name of a resolved architecture, or None."""
  arch = tuple(arch)
  return next((k for k, v in SIZES.items() if v == arch), None)


def feature_dim(arch: Arch) -> int:
  return arch[2][-1] * EXPANSION[arch[0]]


def _out_dtype(image: jax.Array, dtype: Any) -> Any:
  """float32, or float64 for float64 images and compute dtype (jax_enable_x64 parity runs)."""
  return jnp.promote_types(dtype or image.dtype, jnp.float32)


def resnext_trunk(m, image: jax.Array, train: bool, arch: Arch, what: str, return_map: bool = False):
  """Stem -> stages -> global average pool: features (B, feature_dim), float32 (float64 for float64
  images without a compute dtype); ``return_map=True``: (features, the last stage's map (B, h, w,
  feature_dim) in the compute dtype). Call from the
  ``@nn.compact`` method of ``m`` (fields dtype, zero_init_residual, conv_impl); creates
  ``conv1``, ``bn1`` and ``layer{s}_{i}`` in m's scope."""
  block, depths, widths, groups, base_width, stem_width = arch
  if image.ndim != 4:
    raise ValueError(f"{what} expects images (B, H, W, C); got shape {image.shape}")
  x = image.astype(m.dtype) if m.dtype is not None else image
  x = Conv2d(stem_width, 7, 2, 3, impl=m.conv_impl, dtype=m.dtype, name="conv1")(x)
  x = nn.relu(_norm(train, m.dtype, "bn1")(x))
  x = max_pool_3x3_s2(x, m.conv_impl)
  for s, (planes, depth) in enumerate(zip(widths, depths)):
    for i in range(depth):
      x = Block(block, planes, 2 if (i == 0 and s > 0) else 1, groups, base_width, m.zero_init_residual,
                m.conv_impl, m.dtype, name=f"layer{s + 1}_{i}")(x, train)
  features = jnp.mean(x.astype(_out_dtype(image, m.dtype)), axis=(1, 2))
  return (features, x) if return_map else features


class ResNeXtBackbone(nn.Module):
  """ResNet / ResNeXt backbone (registered as 'resnext'): images (B, H, W, C) -> {'features': (B, D)},
  D = 512 (basic blocks) or 2048 (bottlenecks) for the standard widths.

  Attributes:
    size: a ``SIZES`` name ('resnet18' ... 'resnext50_32x4d', 'resnext101_32x8d'), or None to give
      ``block`` ('basic' | 'bottleneck'), ``depths``, ``widths`` (planes per stage) and optionally
      ``groups`` (1), ``base_width`` (64), ``stem_width`` (64).
    zero_init_residual: start every block as the identity (scale of its last BN = 0; timm's default).
    conv_impl: ``CONV_IMPLS`` key of every convolution, or 'auto' ('split' on CPU, 'xla' elsewhere);
      the parameters are the same for every impl.
    dtype: compute dtype (parameters and BN statistics stay float32).
    return_feature_map: also return the last stage's map as 'feature_map' (B, h, w, D) (the AU
      autoencoder's encoder, ``fer_jax.models.au_autoencoder``).
  """

  input_names: ClassVar[Tuple[str, ...]] = ("image",)

  size: Optional[str] = None
  block: Optional[str] = None
  depths: Optional[Sequence[int]] = None
  widths: Optional[Sequence[int]] = None
  groups: Optional[int] = None
  base_width: Optional[int] = None
  stem_width: Optional[int] = None
  zero_init_residual: bool = True
  conv_impl: str = "auto"
  dtype: Any = None
  return_feature_map: bool = False

  def resolved(self) -> Arch:
    """(block, depths, widths, groups, base_width, stem_width), validated."""
    return resolve_arch(self.size, self.block, self.depths, self.widths, self.groups, self.base_width,
                        self.stem_width)

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    """Returns {'features': float32 (B, D)[, 'feature_map']}; ``train`` uses and updates batch statistics."""
    if self.return_feature_map:
      features, fmap = resnext_trunk(self, image, train, self.resolved(), "ResNeXt backbone", return_map=True)
      return {"features": features, "feature_map": fmap}
    return {"features": resnext_trunk(self, image, train, self.resolved(), "ResNeXt backbone")}


BACKBONES.register("resnext", ResNeXtBackbone)


class ResNeXt(ResNeXtBackbone):
  """The whole classifier: ``ResNeXtBackbone``'s trunk + ``fc`` Dense(num_classes) (timm's ``fc``);
  ``model.apply(v, x, train=False)`` -> float32 logits (B, num_classes) (float64 for float64 images);
  ``return_features=True`` also returns the pooled features. ``num_classes=0``: the features only."""

  num_classes: int = 1000

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
    if self.num_classes < 0:
      raise ValueError(f"num_classes must be >= 0, got {self.num_classes!r}")
    features = resnext_trunk(self, x, train, self.resolved(), "ResNeXt")
    if self.num_classes == 0:
      return (features, features) if return_features else features
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=fc_init, name="fc")(features)
    logits = logits.astype(features.dtype)
    return (logits, features) if return_features else logits


VARIANTS = {name: functools.partial(ResNeXt, size=name) for name in SIZES}
for _name, _variant in VARIANTS.items():
  register(_name, _variant)
register("resnext", ResNeXt)


# ----------------------------------------------------------------------------- timm / torchvision weights

_TOP = re.compile(r"(conv1|bn1|fc)\.(weight|bias|running_mean|running_var)")
_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(weight|bias|running_mean|"
                    r"running_var)")
_MODULE = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}


def map_torch_key(key: str) -> Optional[Tuple[Tuple[str, ...], str, str]]:
  """torch key (no 'module.' prefix) -> (('params' | 'batch_stats', *module path), leaf, layer kind) for
  ``convert.map_state_dict``; None for a key that is not a ResNet / ResNeXt tensor."""
  m = _TOP.fullmatch(key)
  if m:
    path, leaf = (m[1],), m[2]
  else:
    m = _BLOCK.fullmatch(key)
    if m is None:
      return None
    path, leaf = (f"layer{m[1]}_{m[2]}", _MODULE.get(m[3], m[3])), m[4]
  kind = "linear" if path[-1] == "fc" else ("conv" if "conv" in path[-1] else "norm")
  if leaf in ("running_mean", "running_var"):
    if kind != "norm":
      return None
    return ("batch_stats",) + path, leaf[len("running_"):], "norm"
  if kind == "norm" or leaf == "bias":
    if kind == "conv":
      return None  # the convolutions have no bias
    return ("params",) + path, "scale" if (kind == "norm" and leaf == "weight") else "bias", kind
  return ("params",) + path, "kernel", kind


def torch_key(path: Sequence[str]) -> str:
  """Our 'params/layer1_0/conv2/kernel'-style name -> the torch key (for error messages)."""
  _, *mods, leaf = path
  mods = [re.sub(r"^layer(\d+)_(\d+)$", r"layer\1.\2", p) for p in mods]
  mods = [{"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(p, p) for p in mods]
  leaf = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}.get(leaf, leaf)
  return ".".join(mods + [leaf])


def map_torch_state_dict(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], list]:
  """Renames and re-lays-out a timm / torchvision state dict: ({'params', 'batch_stats'} of float32 NumPy
  arrays in our layout, unexpected keys). 'module.' prefixes are stripped, 'num_batches_tracked' dropped;
  no completeness check (see ``check_variables``)."""
  from fer_jax.models import convert
  tree, unexpected = convert.map_state_dict(state_dict, map_torch_key)
  return {"params": tree.get("params", {}), "batch_stats": tree.get("batch_stats", {})}, unexpected


def infer_arch(params: Mapping[str, Any]) -> Tuple[Arch, int]:
  """(architecture, num_classes (0 without ``fc``)) of a params tree in our layout (a model's or
  ``map_torch_state_dict``'s); raises ValueError saying what is missing or inconsistent."""
  def need(cond, what):
    if not cond:
      raise ValueError(f"cannot infer the ResNet / ResNeXt architecture: {what}")

  def kernel(*path):
    node = params
    for p in path:
      node = node.get(p, {}) if hasattr(node, "get") else {}
    need(hasattr(node, "shape"), f"no {'/'.join(path)} ({torch_key(('params',) + path)})")
    return tuple(node.shape)

  stem_width = kernel("conv1", "kernel")[-1]
  blocks = [re.fullmatch(r"layer(\d+)_(\d+)", k) for k in params]
  ids = sorted((int(m[1]), int(m[2])) for m in blocks if m)
  need(ids, "no layer{s}.{i} blocks")
  stages = sorted({s for s, _ in ids})
  need(stages == list(range(1, len(stages) + 1)), f"stage numbers {stages} are not 1..n")
  depths = []
  for s in stages:
    idx = sorted(i for t, i in ids if t == s)
    need(idx == list(range(len(idx))), f"layer{s} block indices {idx} are not 0..n-1")
    depths.append(len(idx))
  block = "bottleneck" if "conv3" in params["layer1_0"] else "basic"
  widths, groups, base_width = [], set(), set()
  for s in stages:
    if block == "basic":
      widths.append(kernel(f"layer{s}_0", "conv1", "kernel")[-1])
      groups.add(1)
      base_width.add(64)
      continue
    planes = kernel(f"layer{s}_0", "conv3", "kernel")[-1] // 4
    _, _, cin_g, width = kernel(f"layer{s}_0", "conv2", "kernel")
    g = width // cin_g
    bw = width // g * 64 // planes
    need(int(planes * bw / 64.0) * g == width, f"layer{s} conv2 width {width} is not "
         f"int(planes * base_width / 64) * groups for planes {planes}, groups {g}")
    widths.append(planes)
    groups.add(g)
    base_width.add(bw)
  need(len(groups) == 1 and len(base_width) == 1,
       f"stages differ in groups {sorted(groups)} or base width {sorted(base_width)}")
  fc = params.get("fc", {})
  num_classes = int(fc["bias"].shape[0]) if "bias" in fc else (int(fc["kernel"].shape[-1]) if "kernel" in fc
                                                               else 0)
  return (block, tuple(depths), tuple(widths), groups.pop(), base_width.pop(), stem_width), num_classes


def infer_size(state_dict: Mapping[str, Any]) -> Any:
  """The ``SIZES`` name of a timm / torchvision state dict ('resnext50_32x4d', ...), else its
  architecture as a dict of ``ResNeXtBackbone`` fields."""
  arch, _ = infer_arch(map_torch_state_dict(state_dict)[0]["params"])
  return size_name(arch) or dict(zip(ARCH_FIELDS, arch))


def _describe(arch: Arch) -> str:
  name = size_name(arch)
  fields = ", ".join(f"{k}={v}" for k, v in zip(ARCH_FIELDS, arch))
  return f"{name} ({fields})" if name else fields


def _stats_template(params: Mapping[str, Any]) -> Dict[str, Any]:
  """The batch_stats tree (mean / var shaped as the BN scale) of a params tree."""
  out = {}
  for k, v in params.items():
    if hasattr(v, "items"):
      if "scale" in v:
        out[k] = {"mean": v["scale"], "var": v["scale"]}
      else:
        sub = _stats_template(v)
        if sub:
          out[k] = sub
  return out


def check_variables(got: Mapping[str, Any], params: Mapping[str, Any], unexpected=(),
                    what: str = "ResNeXt weights") -> None:
  """Raises one ValueError when ``got`` ({'params', 'batch_stats'}) does not fit a model with ``params``,
  headed '<what> do not match the model:', saying first whether the checkpoint is another architecture
  (``infer_arch`` of both sides), then listing every missing (also as torch keys), unexpected and
  mis-shaped tensor (``convert.check_tree_against``)."""
  from fer_jax.models import convert
  try:
    theirs, ours = infer_arch(got["params"])[0], infer_arch(params)[0]
  except ValueError:
    theirs = ours = None
  lines = [f"{what} do not match the model:"]
  if theirs != ours:
    lines.append(f"  the checkpoint is {_describe(theirs)}; the model is {_describe(ours)}")
  target = {"params": params, "batch_stats": _stats_template(params)}
  try:
    convert.check_tree_against(got, target, what, unexpected)
  except ValueError as e:
    lines += str(e).splitlines()[1:]
    got_f, want_f = convert._flatten(got), convert._flatten(target)
    missing = sorted(torch_key(k.split("/")) for k in set(want_f) - set(got_f))
    if missing:
      lines.append(f"  missing torch keys: {missing}")
  if len(lines) > 1:
    raise ValueError("\n".join(lines))


def resnext_from_torch_state_dict(state_dict: Mapping[str, Any], model: Optional[nn.Module] = None,
                                  include_fc: bool = True) -> Dict[str, Any]:
  """A timm / torchvision ResNet or ResNeXt state dict -> ``{'params', 'batch_stats'}`` of ``model``
  (a ``ResNeXt``; default: the one of the inferred architecture and classes), float32 NumPy arrays.
  ``include_fc=False`` drops the classifier (for a ``ResNeXt`` with other classes, or the backbone).

  Raises:
    ValueError naming another architecture, or every missing, unexpected and mis-shaped tensor.
  """
  variables, unexpected = map_torch_state_dict(state_dict)
  if not include_fc:
    variables["params"].pop("fc", None)
  if model is None:
    arch, num_classes = infer_arch(variables["params"])
    model = ResNeXt(**dict(zip(ARCH_FIELDS, arch)), num_classes=num_classes if include_fc else 0)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  target = dict(shapes["params"])
  if not include_fc:
    target.pop("fc", None)
  check_variables(variables, target, unexpected)
  return variables


def load_pretrained(params: Any, weights: Any, *, batch_stats: Any = None):
  """``PRETRAINED`` importer of 'resnext': a timm / torchvision state dict (its ``fc`` dropped), or the
  ``{'params', 'batch_stats'}`` of a fer_jax 'resnext' backbone -> ``convert.BackboneVariables`` (float32
  NumPy) for a backbone whose fresh parameters are ``params``. ``batch_stats`` (the fresh statistics) is
  accepted for the trainer's call; the statistics' shapes are checked against ``params``' BatchNorms.

  Raises:
    ValueError naming another architecture, or every missing, unexpected and mis-shaped tensor.
  """
  from fer_jax.models import convert
  del batch_stats  # shapes follow from params
  if hasattr(weights, "keys") and "params" in weights and hasattr(weights["params"], "keys"):
    variables = {"params": jax.tree.map(lambda a: np.asarray(a, np.float32), dict(weights["params"])),
                 "batch_stats": jax.tree.map(lambda a: np.asarray(a, np.float32),
                                             dict(weights.get("batch_stats", {})))}
    unexpected = []
  else:
    variables, unexpected = map_torch_state_dict(weights)
    variables["params"].pop("fc", None)
  check_variables(variables, params, unexpected)
  return convert.BackboneVariables(params=variables["params"], batch_stats=variables["batch_stats"])


PRETRAINED.register("resnext", load_pretrained)
