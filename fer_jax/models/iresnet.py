"""iResNet face-recognition backbones of insightface's ArcFace (``recognition/arcface_torch/backbones/
iresnet.py``; Deng et al. 2019, "ArcFace", the "improved residual unit" of Sec. 3 after Duta et al. 2020,
"Improved Residual Networks"), and an importer of their ``backbone.pth`` state dicts.

Layout (112x112 RGB faces, normalised ``(x - 127.5) / 127.5`` by the user):

  stem: conv3x3/1 (widths[0], no bias) -> BN -> PReLU
  layer n = 1..4: ``depths[n-1]`` IBasicBlocks of width ``widths[n-1]``; the first one has stride 2 and a
         conv1x1/2 -> BN shortcut; block: BN -> conv3x3/1 -> BN -> PReLU -> conv3x3/s -> BN, + shortcut
         (no activation after the sum)
  head: BN (``bn2``) -> dropout -> flatten in torch's (C, H, W) order -> Linear(C*7*7, 512) ->
        BatchNorm1d ``features`` -> the embedding = our ``features``.

Sizes (depths, widths 64/128/256/512): r18 (2,2,2,2), r34 (3,4,6,3), r50 (3,4,14,3), r100 (3,13,30,3),
r200 (6,26,60,6). The fc is tied to the final 7x7 map, so the input must be ``input_size`` = 112 pixels
square (a custom ``input_size`` gives another fc, for small test models).

Differences from the torch module, none of which changes the function:
- insightface fixes the scale of ``features`` to 1 (``requires_grad = False``); ours has no scale
  (``use_scale=False``), so it is exactly 1 and cannot train. The importer accepts a ``features.weight``
  of ones and rejects any other.
- ``fp16=True`` (autocast of the body, fc and ``features`` in float32) is our ``dtype``: the body computes
  in ``dtype``, the fc and ``features`` in float32; parameters and BN statistics stay float32.
- PReLU slopes are per channel (init 0.25) in a param named ``negative_slope``.
- Init follows insightface: convs N(0, 0.1), BN 1 / 0, PReLU 0.25; the fc as torch's Linear default.
  (insightface's ``zero_init_residual``, off by default, is not offered.)
- BatchNorm: momentum 0.9 (torch's 0.1), eps 1e-5; flax keeps the biased batch variance in the running
  average where torch keeps the unbiased one (a factor n / (n - 1) in the update only).
"""

from __future__ import annotations

import functools
import re
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.registry import BACKBONES, PRETRAINED

BN_MOMENTUM = 0.9  # flax: new = m * old + (1 - m) * batch  (torch momentum 0.1)
BN_EPS = 1e-5
WIDTHS = (64, 128, 256, 512)
SIZES: Dict[str, Tuple[int, ...]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
conv_init = nn.initializers.normal(0.1)  # insightface: nn.init.normal_(conv.weight, 0, 0.1)


def _torch_linear_init(fan_in: int):
  """torch.nn.Linear's default: weight and bias uniform in +-1 / sqrt(fan_in)."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def final_map_side(input_size: int, num_layers: int) -> int:
  """Side of the last feature map: every layer halves it as a stride-2 3x3 conv with padding 1 does."""
  side = input_size
  for _ in range(num_layers):
    side = (side + 1) // 2
  return side


class PReLU(nn.Module):
  """Per-channel PReLU (torch.nn.PReLU(C)): x if x >= 0 else a_c * x; a initialised to 0.25."""

  init_value: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.param("negative_slope", nn.initializers.constant(self.init_value), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, a.astype(x.dtype) * x)


class IBasicBlock(nn.Module):
  """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, + shortcut (insightface ``IBasicBlock``)."""

  width: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPS, dtype=self.dtype)
    y = norm(name="bn1")(x)
    y = conv(self.width, (3, 3), padding=1, name="conv1")(y)
    y = PReLU(name="prelu")(norm(name="bn2")(y))
    y = conv(self.width, (3, 3), self.stride, padding=1, name="conv2")(y)
    y = norm(name="bn3")(y)
    if self.downsample:
      x = conv(self.width, (1, 1), self.stride, padding=0, name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return x + y


def _check_ints(name: str, value: Any, length: Optional[int] = None) -> Tuple[int, ...]:
  t = tuple(value) if isinstance(value, (list, tuple)) else None
  if not t or not all(isinstance(v, int) and v >= 1 for v in t) or (length is not None and len(t) != length):
    want = f"{length} " if length is not None else ""
    raise ValueError(f"iresnet {name}={value!r}; expected a sequence of {want}positive ints")
  return t


class IResNet(nn.Module):
  """iResNet backbone (registered as 'iresnet'): faces (B, 112, 112, 3) -> {'features': (B, 512)}.

  Attributes:
    size: 'r18', 'r34', 'r50', 'r100' or 'r200' (insightface's ``get_model`` names), or None to give
      ``depths`` (and ``widths``, default 64/128/256/512, one per layer; the stem has ``widths[0]``).
    input_size: image side the fc is built for (112: a 7x7 final map).
    embedding_size: size of the embedding (insightface's ``num_features``).
    dropout_rate: dropout before the fc (insightface's ``dropout``, 0 in its configs).
    dtype: compute dtype of the convolutional body (insightface's ``fp16``); fc and ``features`` run in
      float32, parameters and BatchNorm statistics stay float32.
  """

  input_names: ClassVar[Tuple[str, ...]] = ("image",)

  size: Optional[str] = None
  depths: Optional[Sequence[int]] = None
  widths: Optional[Sequence[int]] = None
  input_size: int = 112
  embedding_size: int = 512
  dropout_rate: float = 0.0
  dtype: Any = None

  def resolved(self) -> Tuple[Tuple[int, ...], Tuple[int, ...], int, int]:
    """(depths, widths, input_size, embedding_size), validated."""
    if self.size is not None:
      if self.size not in SIZES:
        raise ValueError(f"iresnet size={self.size!r}; expected one of {list(SIZES)} or None")
      if self.depths is not None or self.widths is not None:
        raise ValueError(f"iresnet size={self.size!r} fixes depths and widths; give either a size or depths "
                         "(and widths)")
      depths, widths = SIZES[self.size], WIDTHS
    else:
      if self.depths is None:
        raise ValueError(f"iresnet needs a size (one of {list(SIZES)}) or depths")
      depths = _check_ints("depths", self.depths)
      widths = _check_ints("widths", WIDTHS if self.widths is None else self.widths, len(depths))
    for name in ("input_size", "embedding_size"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"iresnet {name}={v!r}; expected a positive int")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"iresnet dropout_rate={self.dropout_rate!r}; expected a value in [0, 1)")
    return depths, widths, self.input_size, self.embedding_size

  @nn.compact
  def __call__(self, image: jax.Array, *, train: bool = False) -> Dict[str, jax.Array]:
    """Returns {'features': float32 (B, embedding_size)}; ``train`` uses and updates batch statistics."""
    depths, widths, input_size, embedding_size = self.resolved()
    if image.ndim != 4 or image.shape[1:3] != (input_size, input_size):
      side = final_map_side(input_size, len(widths))
      raise ValueError(f"iresnet expects images (B, {input_size}, {input_size}, C) (its fc is tied to the "
                       f"{side}x{side} final map); got shape {tuple(image.shape)}")
    if train and image.shape[0] < 2:
      raise ValueError(f"iresnet in train mode needs a batch of at least 2 (BatchNorm1d 'features' "
                       f"normalises over the batch); got shape {tuple(image.shape)}")
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPS)
    x = image.astype(self.dtype) if self.dtype is not None else image
    x = nn.Conv(widths[0], (3, 3), 1, padding=1, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                name="conv1")(x)
    x = PReLU(name="prelu")(norm(dtype=self.dtype, name="bn1")(x))
    for n, (w, d) in enumerate(zip(widths, depths), start=1):
      for i in range(d):
        x = IBasicBlock(w, 2 if i == 0 else 1, i == 0, self.dtype, name=f"layer{n}_{i}")(x, train)
    x = norm(dtype=self.dtype, name="bn2")(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train or self.dropout_rate == 0.0)(x)
    # torch.flatten of NCHW: (C, H, W) order, so that insightface's fc weight applies unchanged.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # fc and features in float32 (or float64)
    x = nn.Dense(embedding_size, kernel_init=_torch_linear_init(x.shape[-1]),
                 bias_init=_torch_linear_init(x.shape[-1]), name="fc")(x)
    x = norm(use_scale=False, name="features")(x)  # scale fixed to 1, as insightface's
    return {"features": x.astype(jnp.float32)}


BACKBONES.register("iresnet", IResNet)


# ---------------------------------------------------------------------------------------------------------
# insightface state dicts -> our variables.

_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(bn1|conv1|bn2|prelu|conv2|bn3|downsample\.0|downsample\.1)\.(\w+)")
_TOP = re.compile(r"(conv1|bn1|prelu|bn2|fc|features)\.(\w+)")


def map_key(key: str) -> Optional[Tuple[str, Tuple[str, ...], str, str]]:
  """insightface key (without 'module.') -> (collection, our module path, our leaf, kind); None if unknown.

  kind: 'conv' (OIHW -> HWIO), 'linear' ((out, in) -> (in, out)) or 'vector' (1-D, as is).
  """
  m = _BLOCK.fullmatch(key)
  if m:
    path, module, leaf = (f"layer{m[1]}_{m[2]}",), m[3], m[4]
  else:
    m = _TOP.fullmatch(key)
    if not m:
      return None
    path, module, leaf = (), m[1], m[2]
  module = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(module, module)
  path += (module,)
  if module.startswith("conv") or module == "downsample_conv":
    return ("params", path, "kernel", "conv") if leaf == "weight" else None
  if module == "prelu":
    return ("params", path, "negative_slope", "vector") if leaf == "weight" else None
  if module == "fc":
    return {"weight": ("params", path, "kernel", "linear"),
            "bias": ("params", path, "bias", "vector")}.get(leaf)
  if leaf in _BN_LEAVES:
    collection, ours = _BN_LEAVES[leaf]
    return collection, path, ours, "vector"
  return None


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch here.
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _convert(kind: str, key: str, a: np.ndarray) -> np.ndarray:
  want = {"conv": 4, "linear": 2, "vector": 1}[kind]
  if a.ndim != want:
    raise ValueError(f"iresnet importer: {key} has shape {a.shape}; expected a {want}-D tensor")
  if kind == "conv":
    return np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0)))  # OIHW -> HWIO
  return np.ascontiguousarray(a.T) if kind == "linear" else a


def map_state_dict(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], list]:
  """insightface state dict -> ({'params': ..., 'batch_stats': ...}, unexpected keys).

  'module.' prefixes are stripped, ``num_batches_tracked`` dropped; ``features.weight`` must be all ones
  (insightface fixes it; ours has no scale) and is dropped. No completeness check (``load_pretrained``).
  """
  from fer_jax.models import convert
  tree: Dict[str, Any] = {"params": {}, "batch_stats": {}}
  unexpected = []
  for key, value in state_dict.items():
    name = convert.strip_module_prefix(key)
    if name.endswith("num_batches_tracked"):
      continue
    if name == "features.weight":
      a = _to_numpy(value)
      if np.any(a != 1.0):
        raise ValueError(f"iresnet importer: {key} holds values other than 1 (range [{a.min():.6g}, "
                         f"{a.max():.6g}]); insightface fixes this BatchNorm1d scale to 1 and ours has none")
      continue
    mapped = map_key(name)
    if mapped is None:
      unexpected.append(key)
      continue
    collection, path, leaf, kind = mapped
    node = tree[collection]
    for p in path:
      node = node.setdefault(p, {})
    if leaf in node:
      raise ValueError(f"iresnet importer: {key} maps to {'/'.join(path + (leaf,))}, which another key "
                       "already set (a key with and one without 'module.'?)")
    node[leaf] = _convert(kind, key, _to_numpy(value))
  return tree, unexpected


def infer_architecture(state_dict: Mapping[str, Any]) -> str:
  """A description of the iResNet a state dict holds: 'r100 (depths (3, 13, 30, 3), ...)' or custom."""
  sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
  blocks: Dict[int, int] = {}
  for k in sd:
    m = re.match(r"layer(\d+)\.(\d+)\.", k)
    if m:
      blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
  depths = tuple(blocks.get(n, 0) for n in range(1, max(blocks, default=0) + 1))
  widths = tuple(int(sd[f"layer{n}.0.conv1.weight"].shape[0]) if f"layer{n}.0.conv1.weight" in sd else None
                 for n in range(1, len(depths) + 1))
  fc = sd.get("fc.weight")
  desc = f"depths {depths}, widths {widths}"
  if fc is not None and len(fc.shape) == 2:
    desc += f", fc {tuple(int(s) for s in fc.shape)}"
    if widths and widths[-1]:
      side = np.sqrt(int(fc.shape[1]) / widths[-1])
      desc += f" ({int(fc.shape[0])}-d embedding of a {side:g}x{side:g} final map)"
  name = next((n for n, d in SIZES.items() if d == depths and widths == WIDTHS), None)
  return f"{name} ({desc})" if name else f"custom ({desc})"


def _describe_model(params: Mapping[str, Any]) -> str:
  depths = []
  n = 1
  while any(k.startswith(f"layer{n}_") for k in params):
    depths.append(sum(1 for k in params if k.startswith(f"layer{n}_")))
    n += 1
  widths = tuple(int(params[f"layer{i}_0"]["conv1"]["kernel"].shape[-1]) for i in range(1, n)
                 if "conv1" in params.get(f"layer{i}_0", {}))
  fc = params.get("fc", {}).get("kernel")
  name = next((s for s, d in SIZES.items() if d == tuple(depths) and widths == WIDTHS), None)
  desc = f"depths {tuple(depths)}, widths {widths}" + (f", fc {tuple(fc.shape[::-1])}" if fc is not None else "")
  return f"{name} ({desc})" if name else f"custom ({desc})"


def load_pretrained(params: Any, weights: Mapping[str, Any], *, batch_stats: Any = None):
  """``PRETRAINED`` importer of 'iresnet': an insightface ``backbone.pth`` state dict (or the
  ``{'params', 'batch_stats'}`` of a fer_jax iresnet backbone) -> ``BackboneVariables``.

  ``params`` / ``batch_stats`` are the fresh backbone's (shape templates). Raises one ValueError naming the
  checkpoint's architecture (e.g. 'r100 (depths (3, 13, 30, 3), ...)') and the model's, and every missing,
  unexpected and mis-shaped tensor.
  """
  from fer_jax.models import convert
  if not hasattr(weights, "keys"):
    raise ValueError(f"iresnet importer: expected a state dict (name -> tensor); got {type(weights).__name__}")
  if "params" in weights and isinstance(weights["params"], Mapping):  # one of our own models
    tree, unexpected = {"params": weights["params"], "batch_stats": weights.get("batch_stats") or {}}, []
    source = "a fer_jax iresnet"
  else:
    tree, unexpected = map_state_dict(weights)
    source = infer_architecture(weights)
  target = {"params": params}
  if batch_stats is not None:
    target["batch_stats"] = batch_stats
  got = {c: tree[c] for c in target}
  try:
    convert.check_tree_against(got, target, "The iresnet weights", unexpected)
  except ValueError as e:
    raise ValueError(f"iresnet importer: the checkpoint is {source}; the model is {_describe_model(params)}.\n"
                     f"{e}") from None
  return convert.BackboneVariables(params=tree["params"], batch_stats=tree["batch_stats"] or None)


PRETRAINED.register("iresnet", load_pretrained)
