"""PyTorch weights -> ``fer_jax.models.emonext.EmoNeXt`` variables.

Two entry points:

* ``load_convnext_backbone(variables, state_dict)``: what the official code does with its
  ImageNet ConvNeXt checkpoints (``load_state_dict(strict=False)``, then a new head): the ConvNeXt
  tensors of a timm or official (facebookresearch) state dict replace the backbone of freshly
  initialised EmoNeXt variables; STN, SE, attention (and by default the head) stay as initialised.
* ``emonext_from_torch_state_dict(state_dict)``: a whole EmoNeXt state dict, official naming
  (yelboudouri/EmoNeXt ``models.EmoNeXt``) or the timm-based naming of
  ``benchmarks/emonext_torch_reference.py``; every tensor must find its place.

Key mapping beyond ``fer_jax.models.convert`` (ConvNeXt) and
``fer_jax.layers.spatial_transformer.stn_from_torch_state_dict`` (``localization.*``, ``fc_loc.*``,
incl. the (C, H, W) -> (H, W, C) flatten-order permutation of ``fc_loc.0``):

====================================================  ===========================================
torch                                                 ours
====================================================  ===========================================
downsample_layers.{i}.2.fc.{0,2}.weight  (official)   stage_{i}/downsample_se/{fc1,fc2}/kernel
stages.{i}.downsample.2.fc.{0,2}.weight  (timm-based) stage_{i}/downsample_se/{fc1,fc2}/kernel
stages.{i}.se.fc.{0,2}.weight  (paper placement)      stage_{i}/stage_se/{fc1,fc2}/kernel
attention.{norm,query,key}.{weight,bias}              attention/{norm,query,key}/{scale|kernel,bias}
attention.value.*                                     dropped (its output is unused; see emonext.py)
====================================================  ===========================================

Loading goes through ``fer_jax.models.convert.load_torch_weights`` (safetensors, or
``torch.load(weights_only=True)``): no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from fer_jax.layers.spatial_transformer import stn_from_torch_state_dict
from fer_jax.models.convert import (check_tree_against, convnext_from_torch_state_dict,
                                    infer_convnext_config, load_torch_weights, map_state_dict,
                                    map_torch_params, strip_module_prefix)

Variables = Dict[str, Any]

_STN = re.compile(r"(?:localization|fc_loc)\..+")
_SE = (
    (re.compile(r"downsample_layers\.([1-9]\d*)\.2\.fc\.([02])\.weight"), "downsample_se"),
    (re.compile(r"stages\.([1-9]\d*)\.downsample\.2\.fc\.([02])\.weight"), "downsample_se"),
    (re.compile(r"stages\.(\d+)\.se\.fc\.([02])\.weight"), "stage_se"),
)
_ATTN = re.compile(r"attention\.(norm|query|key)\.(weight|bias)")
_DROPPED = re.compile(r"attention\.value\.(weight|bias)|.*num_batches_tracked")
# The non-ConvNeXt parts of an EmoNeXt params tree (top level and inside stages).
_EXTRA_TOP = ("stn", "attention")
_EXTRA_STAGE = ("downsample_se", "stage_se")


def _strip_module(sd: Mapping[str, Any]) -> Dict[str, Any]:
  return {strip_module_prefix(k): v for k, v in sd.items()}


def backbone_of(params: Mapping[str, Any]) -> Dict[str, Any]:
  """The ConvNeXt part of an EmoNeXt params tree (drops stn, attention and the SE blocks)."""
  out = {}
  for k, v in params.items():
    if k in _EXTRA_TOP:
      continue
    if k.startswith("stage_") and isinstance(v, Mapping):
      v = {n: s for n, s in v.items() if n not in _EXTRA_STAGE}
    out[k] = v
  return out


def _map_extra_key(key: str) -> Optional[Tuple[Tuple[str, ...], str, str]]:
  """``convert.map_state_dict`` key map of the SE and attention tensors; None for other keys."""
  m = _ATTN.fullmatch(key)
  if m:
    layer, leaf = m[1], m[2]
    kind = "norm" if layer == "norm" else "linear"
    ours = "bias" if leaf == "bias" else ("scale" if kind == "norm" else "kernel")
    return ("attention", layer), ours, kind
  for pattern, name in _SE:
    m = pattern.fullmatch(key)
    if m:  # bias-free Linear layers fc.0 / fc.2
      return (f"stage_{m[1]}", name, "fc1" if m[2] == "0" else "fc2"), "kernel", "linear"
  return None


def _split(sd: Mapping[str, Any]):
  """Splits an EmoNeXt state dict into (convnext, stn, extras) dicts; drops the unused.

  ``extras`` holds the SE and attention tensors, converted as (params tree, unexpected keys) by
  ``map_state_dict(extras, _map_extra_key)``.
  """
  convnext, stn, extras = {}, {}, {}
  for key, value in sd.items():
    if _DROPPED.fullmatch(key):
      continue
    if _STN.fullmatch(key):
      stn[key] = value
    elif _map_extra_key(key) is not None:
      extras[key] = value
    else:
      convnext[key] = value
  return convnext, stn, extras


def _merge(dst: Dict[str, Any], src: Mapping[str, Any]) -> None:
  for k, v in src.items():
    if isinstance(v, Mapping):
      _merge(dst.setdefault(k, {}), v)
    else:
      dst[k] = v


def infer_emonext_config(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """EmoNeXt kwargs read off a state dict: the ConvNeXt ones plus use_stn, se_placement,
  se_reduction and sa_mode ('batch' when attention weights exist: the 'feature' reading has the
  same parameters, so it cannot be told apart)."""
  sd = _strip_module(state_dict)
  convnext, stn, extras = _split(sd)
  params, _ = map_torch_params(convnext)
  config = infer_convnext_config(params)
  if config.pop("in_channels") != 3:
    raise ValueError("EmoNeXt's STN expects 3 input channels")
  config["use_stn"] = bool(stn)
  extra, _ = map_state_dict(extras, _map_extra_key)
  se = {(s, name): node[name] for s, node in extra.items() if s.startswith("stage_")
        for name in _EXTRA_STAGE if name in node}
  names = {name for _, name in se}
  if len(names) > 1:
    raise ValueError(f"state dict mixes SE placements: {sorted(names)}")
  config["se_placement"] = {"downsample_se": "downsample", "stage_se": "stage"}.get(
      names.pop() if names else "", "none")
  # hidden = C // r: keep the reductions every SE block agrees with; prefer 16 (the default).
  candidates = None
  for block in se.values():
    if "fc1" in block:
      c, hidden = block["fc1"]["kernel"].shape  # (in, out) = (C, C // r)
      ok = {r for r in range(1, c + 1) if c // r == hidden}
      candidates = ok if candidates is None else candidates & ok
  if candidates is not None and not candidates:
    raise ValueError("the SE blocks' hidden widths fit no single reduction C // r")
  # Every candidate builds the same model; prefer 16, then a power of two, then the smallest.
  if not candidates or 16 in candidates:
    config["se_reduction"] = 16
  else:
    pow2 = [r for r in candidates if r & (r - 1) == 0]
    config["se_reduction"] = max(pow2) if pow2 else min(candidates)
  config["sa_mode"] = "batch" if "attention" in extra else None
  return config


def emonext_from_torch_state_dict(
    state_dict: Mapping[str, Any],
    target: Optional[Mapping[str, Any]] = None,
    include_head: bool = True,
    loc_hw: Optional[Tuple[int, int]] = None,
) -> Variables:
  """Converts a full EmoNeXt torch state dict to ``{'params': ..., ['batch_stats': ...]}``.

  Args:
    state_dict: torch key -> tensor (official naming or the timm-based reference naming, see the
      module docstring); a leading 'module.' is stripped.
    target: EmoNeXt variables or ``jax.eval_shape`` shapes to check against (recommended: the
      STN's flatten size is only checked here). Default: the ConvNeXt part is checked against the
      config inferred from the state dict, the rest only for internal consistency.
    include_head: False drops the classifier (and ``target``'s) for fine-tuning on new classes.
    loc_hw: (H, W) of the STN's localisation output, default square (see ``stn_from_torch_state_dict``).

  Raises:
    ValueError naming every missing, unexpected or mis-shaped tensor.
  """
  sd = _strip_module(state_dict)
  convnext, stn, extras = _split(sd)
  tparams = None
  if target is not None:
    tparams = dict(target["params"] if "params" in target else target)
    if not include_head:
      tparams.pop("head", None)
  params = convnext_from_torch_state_dict(
      convnext, target=backbone_of(tparams) if tparams is not None else None,
      include_head=include_head)
  _merge(params, map_state_dict(extras, _map_extra_key)[0])
  variables: Variables = {"params": params}
  if stn:
    stn_vars = stn_from_torch_state_dict(stn, loc_hw=loc_hw)
    params["stn"] = stn_vars["params"]
    variables["batch_stats"] = {"stn": stn_vars["batch_stats"]}
  if tparams is not None:
    check_tree_against(params, tparams, "EmoNeXt parameters")
    if "params" in target:  # full variables given: check the STN statistics too.
      check_tree_against(variables.get("batch_stats", {}), target.get("batch_stats", {}),
                         "EmoNeXt batch statistics")
  else:  # internal consistency of the parts the ConvNeXt check does not cover.
    dims = {int(k.split("_")[1]): params[k]["block_0"]["norm"]["scale"].shape[0]
            for k in params if k.startswith("stage_")}
    for s, node in params.items():
      for name in _EXTRA_STAGE:
        if s.startswith("stage_") and name in node:
          c = dims[int(s.split("_")[1])]
          fc1, fc2 = node[name]["fc1"]["kernel"], node[name]["fc2"]["kernel"]
          if fc1.shape[0] != c or fc2.shape != fc1.shape[::-1]:
            raise ValueError(f"{s}/{name}: fc1 {fc1.shape} / fc2 {fc2.shape} do not fit {c} channels")
    if "attention" in params:
      c = dims[max(dims)]
      for layer in ("norm", "query", "key"):
        if layer not in params["attention"]:
          raise ValueError(f"attention.{layer} weights are missing")
      if params["attention"]["query"]["kernel"].shape != (c, c):
        raise ValueError(f"attention.query is {params['attention']['query']['kernel'].shape}, "
                         f"expected ({c}, {c})")
  return variables


def load_convnext_backbone(variables: Mapping[str, Any], state_dict: Mapping[str, Any],
                           include_head: bool = False,
                           ignore_keys: Iterable[str] = ()) -> Variables:
  """Pretrained ConvNeXt (timm or official naming) -> the backbone of EmoNeXt ``variables``.

  As the official code: stem, stages, final norm come from the checkpoint; STN, SE, attention and
  (unless ``include_head``, which then needs a matching class count) the head keep the values in
  ``variables`` (a fresh ``model.init``). Returns new variables; the input is not modified.
  ``ignore_keys``: regexes of torch keys to drop (see ``convnext_from_torch_state_dict``).
  """
  wrapped = "params" in variables
  params = variables["params"] if wrapped else variables
  converted = convnext_from_torch_state_dict(state_dict, target=backbone_of(params),
                                             include_head=include_head, ignore_keys=ignore_keys)
  new_params = _copy_tree(params)  # new nested dicts; the untouched arrays are shared.
  _merge(new_params, converted)
  return {**variables, "params": new_params} if wrapped else new_params


def _copy_tree(tree: Mapping[str, Any]) -> Dict[str, Any]:
  return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def load_emonext_variables(path: str | os.PathLike, **kwargs) -> Variables:
  """``emonext_from_torch_state_dict(load_torch_weights(path), **kwargs)``."""
  return emonext_from_torch_state_dict(load_torch_weights(path), **kwargs)
