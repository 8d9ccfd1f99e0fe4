"""PyTorch ConvNeXt state dicts -> ``fer_jax.models.convnext.ConvNeXt`` parameter trees.

Two namings are understood (mixed use is allowed, each key is mapped on its own):

========================================  ==========================================
timm (``timm.models.convnext``)             official (facebookresearch/ConvNeXt)
========================================  ==========================================
stem.0 (conv), stem.1 (LN)                  downsample_layers.0.0, downsample_layers.0.1
stages.N.downsample.0 (LN), .1 (conv)       downsample_layers.N.0, downsample_layers.N.1
stages.N.blocks.M.conv_dw                   stages.N.M.dwconv
stages.N.blocks.M.norm                      stages.N.M.norm
stages.N.blocks.M.mlp.fc1 / mlp.fc2         stages.N.M.pwconv1 / pwconv2
stages.N.blocks.M.gamma                     stages.N.M.gamma
head.norm, head.fc                          norm, head
========================================  ==========================================

Conv weights go OIHW -> HWIO (depthwise (C,1,kh,kw) -> (kh,kw,1,C)); Linear weights (out, in) ->
(in, out), also when stored as 1x1 convs (out, in, 1, 1) as in timm's ``conv_mlp`` variants;
LayerNorm weight -> ``scale``. All values become float32 NumPy arrays.

The pieces are shared with ``fer_jax.models.emonext_convert``: ``map_state_dict`` (rename and
re-lay-out by a key map) and ``check_tree_against`` (one error listing every missing, unexpected
and mis-shaped tensor).

``load_torch_weights`` reads ``.safetensors`` files, or torch checkpoints with
``torch.load(weights_only=True)`` (never unpickling arbitrary objects).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

Params = Dict[str, Any]


@dataclasses.dataclass
class BackboneVariables:
  """What a BatchNorm backbone's ``PRETRAINED`` importer returns: parameters and running statistics.

  Importers of backbones without BatchNorm return the parameter tree alone. Those with it accept a
  ``batch_stats`` keyword (the fresh running statistics, as a shape template) and return this, so that
  ``config.init_weights`` replaces both ``params['backbone']`` and ``batch_stats['backbone']``.
  """

  params: Params
  batch_stats: Optional[Params] = None

# (regex on the torch key less '.weight'/'.bias', match -> (our module path, layer kind)).
_RULES = (
    (r"stem\.0", lambda m: (("stem_conv",), "conv")),
    (r"stem\.1", lambda m: (("stem_norm",), "norm")),
    (r"downsample_layers\.0\.0", lambda m: (("stem_conv",), "conv")),
    (r"downsample_layers\.0\.1", lambda m: (("stem_norm",), "norm")),
    (r"stages\.(\d+)\.downsample\.0", lambda m: ((f"stage_{m[1]}", "downsample_norm"), "norm")),
    (r"stages\.(\d+)\.downsample\.1", lambda m: ((f"stage_{m[1]}", "downsample_conv"), "conv")),
    (r"downsample_layers\.([1-9]\d*)\.0", lambda m: ((f"stage_{m[1]}", "downsample_norm"), "norm")),
    (r"downsample_layers\.([1-9]\d*)\.1", lambda m: ((f"stage_{m[1]}", "downsample_conv"), "conv")),
    (r"stages\.(\d+)\.(?:blocks\.)?(\d+)\.(?:conv_dw|dwconv)",
     lambda m: ((f"stage_{m[1]}", f"block_{m[2]}", "dwconv"), "conv")),
    (r"stages\.(\d+)\.(?:blocks\.)?(\d+)\.norm",
     lambda m: ((f"stage_{m[1]}", f"block_{m[2]}", "norm"), "norm")),
    (r"stages\.(\d+)\.(?:blocks\.)?(\d+)\.(?:mlp\.fc1|pwconv1)",
     lambda m: ((f"stage_{m[1]}", f"block_{m[2]}", "pwconv1"), "linear")),
    (r"stages\.(\d+)\.(?:blocks\.)?(\d+)\.(?:mlp\.fc2|pwconv2)",
     lambda m: ((f"stage_{m[1]}", f"block_{m[2]}", "pwconv2"), "linear")),
    (r"head\.norm|norm", lambda m: (("head_norm",), "norm")),
    (r"head\.fc|head", lambda m: (("head",), "linear")),
)
_GAMMA = re.compile(r"stages\.(\d+)\.(?:blocks\.)?(\d+)\.gamma")
_COMPILED = tuple((re.compile(p), f) for p, f in _RULES)
# Torch-side keys that hold no parameters of ours and are safe to drop.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch here.
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


def _convert_array(kind: str, leaf: str, key: str, a: np.ndarray) -> np.ndarray:
  """Converts one torch weight to our layout; raises a ValueError naming ``key`` on bad ranks."""
  if leaf == "bias" or kind in ("norm", "gamma"):
    if a.ndim != 1:
      raise ValueError(f"{key}: expected a 1-D tensor, got shape {a.shape}")
    return a
  if kind == "conv":
    if a.ndim != 4:
      raise ValueError(f"{key}: expected a 4-D conv weight (O, I, kh, kw), got shape {a.shape}")
    return np.transpose(a, (2, 3, 1, 0))  # OIHW -> HWIO.
  # linear: (out, in) or 1x1 conv (out, in, 1, 1).
  if a.ndim == 4 and a.shape[2:] == (1, 1):
    a = a[:, :, 0, 0]
  if a.ndim != 2:
    raise ValueError(f"{key}: expected a Linear weight (out, in) or 1x1 conv (out, in, 1, 1), "
                     f"got shape {a.shape}")
  return np.ascontiguousarray(a.T)


def map_torch_key(key: str) -> Optional[Tuple[Tuple[str, ...], str, str]]:
  """Maps a torch key to (module path, our leaf name, layer kind); None if not a ConvNeXt key."""
  m = _GAMMA.fullmatch(key)
  if m:
    return (f"stage_{m[1]}", f"block_{m[2]}"), "gamma", "gamma"
  base, _, leaf = key.rpartition(".")
  if leaf not in ("weight", "bias"):
    return None
  for pattern, fn in _COMPILED:
    m = pattern.fullmatch(base)
    if m:
      path, kind = fn(m)
      ours = "bias" if leaf == "bias" else ("scale" if kind == "norm" else "kernel")
      return path, ours, kind
  return None


def strip_module_prefix(key: str) -> str:
  """``key`` without a leading 'module.' (DataParallel / DDP checkpoints)."""
  return key[len("module."):] if key.startswith("module.") else key


KeyMap = Callable[[str], Optional[Tuple[Tuple[str, ...], str, str]]]


def map_state_dict(state_dict: Mapping[str, Any], map_key: KeyMap) -> Tuple[Params, list]:
  """Renames and re-lays-out torch tensors by ``map_key``; returns (nested params, unexpected keys).

  ``map_key(name)`` gives (module path, our leaf name, layer kind) (see ``map_torch_key``) or None
  for a key it does not know, which is returned in the unexpected list. ``name`` is the key less
  a leading 'module.' (DataParallel); keys ending in 'num_batches_tracked' are dropped. Each
  tensor is converted by ``_convert_array`` (kind 'conv', 'linear', 'norm' or 'gamma'); two keys
  mapping to the same place raise a ValueError. Performs no completeness check (see
  ``check_tree_against``).
  """
  params: Params = {}
  unexpected = []
  for key, value in state_dict.items():
    name = strip_module_prefix(key)
    if name.endswith(_IGNORED_SUFFIXES):
      continue
    mapped = map_key(name)
    if mapped is None:
      unexpected.append(key)
      continue
    path, leaf, kind = mapped
    node = params
    for p in path:
      node = node.setdefault(p, {})
    if leaf in node:
      raise ValueError(f"{key}: maps to {'/'.join(path + (leaf,))}, which another key already set "
                       "(mixed or duplicated namings?)")
    node[leaf] = _convert_array(kind, leaf, key, _to_numpy(value))
  return params, unexpected


def map_torch_params(state_dict: Mapping[str, Any]) -> Tuple[Params, list]:
  """Renames and re-lays-out every ConvNeXt tensor; returns (nested params, unexpected keys).

  Performs no completeness check (see ``convnext_from_torch_state_dict``). A leading 'module.'
  (DataParallel) is stripped from keys.
  """
  return map_state_dict(state_dict, map_torch_key)


def _flatten(tree: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> Dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out["/".join(prefix + (k,))] = v
  return out


def check_tree_against(got: Mapping[str, Any], target: Mapping[str, Any], what: str,
                       unexpected: Iterable[str] = ()) -> None:
  """Raises one ValueError listing how the converted tree ``got`` differs from ``target``.

  Both are nested dicts whose leaves have a ``.shape`` (arrays or ``jax.ShapeDtypeStruct``s). The
  report (headed ``'<what> do not match the model:'``) names the leaves of ``target`` missing from
  ``got``, the ``unexpected`` torch keys (those no mapping knew), the leaves of ``got`` that the
  model lacks, and the leaves whose shapes differ; nothing is raised when there is none of these.
  """
  got_f, want_f = _flatten(got), _flatten(target)
  unexpected = sorted(unexpected)
  missing = sorted(set(want_f) - set(got_f))
  extra = sorted(set(got_f) - set(want_f))
  shaped = sorted(f"{k}: checkpoint {tuple(got_f[k].shape)} vs model {tuple(want_f[k].shape)}"
                  for k in set(got_f) & set(want_f)
                  if tuple(got_f[k].shape) != tuple(want_f[k].shape))
  if unexpected or missing or extra or shaped:
    lines = [f"{what} do not match the model:"]
    if missing:
      lines.append(f"  missing (our names): {missing}")
    if unexpected:
      lines.append(f"  unexpected torch keys: {unexpected}")
    if extra:
      lines.append(f"  in the checkpoint but not in the model (our names): {extra}")
    if shaped:
      lines.append(f"  wrong shape (our layout): {shaped}")
    raise ValueError("\n".join(lines))


def infer_convnext_config(params: Mapping[str, Any]) -> Dict[str, Any]:
  """Infers ConvNeXt kwargs (depths, dims, stem patch, classes, ...) from mapped params."""
  def need(cond, what):
    if not cond:
      raise ValueError(f"cannot infer the ConvNeXt config: {what}")

  need("stem_conv" in params and "kernel" in params["stem_conv"], "no stem conv weight "
       "(expected 'stem.0.weight' or 'downsample_layers.0.0.weight')")
  stem = params["stem_conv"]["kernel"]
  stage_ids = sorted(int(k.split("_")[1]) for k in params if re.fullmatch(r"stage_\d+", k))
  need(stage_ids, "no stage weights found")
  need(stage_ids == list(range(len(stage_ids))), f"stage indices {stage_ids} are not 0..n-1")
  depths, dims, layer_scale = [], [], False
  for i in stage_ids:
    stage = params[f"stage_{i}"]
    blocks = sorted(int(k.split("_")[1]) for k in stage if k.startswith("block_"))
    need(blocks, f"stage {i} has no blocks")
    depths.append(max(blocks) + 1)
    dim = None
    for b in blocks:
      for leaf in (("dwconv", "bias"), ("norm", "scale"), ("norm", "bias"), ("pwconv2", "bias")):
        node = stage[f"block_{b}"].get(leaf[0], {})
        if leaf[1] in node:
          dim = int(node[leaf[1]].shape[0])
          break
      layer_scale |= "gamma" in stage[f"block_{b}"]
      if dim is not None:
        break
    need(dim is not None, f"no block of stage {i} has a dwconv/norm/pwconv2 bias to read its width")
    dims.append(dim)
  config = dict(depths=tuple(depths), dims=tuple(dims), stem_patch_size=int(stem.shape[0]),
                in_channels=int(stem.shape[2]))
  config["layer_scale_init_value"] = 1e-6 if layer_scale else None
  head = params.get("head", {})
  if "kernel" in head:
    config["num_classes"] = int(head["kernel"].shape[1])
  elif "bias" in head:
    config["num_classes"] = int(head["bias"].shape[0])
  else:
    config["num_classes"] = 0
  return config


def _target_shapes(config: Mapping[str, Any]) -> Params:
  """The ``params`` tree of ``jax.ShapeDtypeStruct``s of the ConvNeXt built from ``config``."""
  import jax
  import jax.numpy as jnp
  from fer_jax.models.convnext import ConvNeXt

  kwargs = dict(config)
  in_ch = kwargs.pop("in_channels")
  model = ConvNeXt(**kwargs)
  size = kwargs["stem_patch_size"] * 2 ** (len(kwargs["dims"]) - 1)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, in_ch)))
  return shapes["params"]


def convnext_from_torch_state_dict(
    state_dict: Mapping[str, Any],
    target: Optional[Mapping[str, Any]] = None,
    include_head: bool = True,
    ignore_keys: Iterable[str] = (),
) -> Params:
  """Converts a timm or official ConvNeXt state dict into our ``params`` tree (no 'params' wrapper).

  Args:
    state_dict: torch key -> tensor (torch.Tensor or array).
    target: our params tree (arrays or ``jax.ShapeDtypeStruct``s, e.g. from ``jax.eval_shape``) to
      check against. Default: the ConvNeXt whose config is inferred from the state dict.
    include_head: if False, drops the classifier ('head.fc' / 'head') so the result can be merged
      into a model with another ``num_classes``; ``target``'s 'head' entry is then ignored.
    ignore_keys: regexes (full match) of torch keys to drop silently (e.g. EmoNeXt extras).

  Raises:
    ValueError listing every missing, unexpected and mis-shaped key.
  """
  ignore = [re.compile(p) for p in ignore_keys]
  state_dict = {k: v for k, v in state_dict.items() if not any(p.fullmatch(k) for p in ignore)}
  params, unexpected = map_torch_params(state_dict)
  if not include_head:
    params.pop("head", None)
  if target is None:
    config = infer_convnext_config(params)
    if not include_head:
      config["num_classes"] = 0
    expected = _target_shapes(config)
  else:
    expected = dict(target["params"] if "params" in target else target)
    if not include_head:
      expected.pop("head", None)
  check_tree_against(params, expected, "ConvNeXt weights", unexpected)
  return params


def load_torch_weights(path: str | os.PathLike) -> Dict[str, Any]:
  """Loads a state dict from ``.safetensors`` or a torch checkpoint (``weights_only=True``).

  Checkpoints that wrap the state dict (``{'model': ...}``, ``{'state_dict': ...}``,
  ``{'model_ema': ...}``) are unwrapped. Values are NumPy arrays or torch tensors.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"weights file {path!r} does not exist")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
      return dict(load_file(path))
    except (TypeError, ValueError):  # e.g. bfloat16, which NumPy cannot hold: go through torch.
      from safetensors.torch import load_file as load_torch_file
      return dict(load_torch_file(path))
  import torch
  ckpt = torch.load(path, map_location="cpu", weights_only=True)
  for wrapper in ("model", "state_dict", "model_ema"):
    if isinstance(ckpt, Mapping) and wrapper in ckpt and isinstance(ckpt[wrapper], Mapping):
      ckpt = ckpt[wrapper]
      break
  if not isinstance(ckpt, Mapping):
    raise ValueError(
        f"{path!r} holds a {type(ckpt).__name__}, expected a state dict (name -> tensor)")
  return dict(ckpt)


def load_convnext_params(path: str | os.PathLike, **kwargs) -> Params:
  """``convnext_from_torch_state_dict(load_torch_weights(path), **kwargs)``."""
  return convnext_from_torch_state_dict(load_torch_weights(path), **kwargs)
