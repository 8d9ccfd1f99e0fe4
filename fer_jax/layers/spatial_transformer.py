"""Spatial Transformer (Jaderberg et al., NeurIPS 2015, arXiv 1506.02025) as used by EmoNeXt.

Pure functions (jit / vmap / grad friendly, NHWC, PyTorch semantics):

* ``affine_grid(theta, size, align_corners)``: the sampling grid of eq. (1),
  ``(x_s, y_s)^T = theta @ (x_t, y_t, 1)^T`` over the target's normalised coordinates, exactly as
  ``torch.nn.functional.affine_grid`` (our ``size`` is ``(N, H, W)`` or ``(N, H, W, C)``; torch's is
  ``(N, C, H, W)``). Target coordinates: ``align_corners=True``: ``-1 + 2 j / (W - 1)`` (pixel
  centres of the corner pixels at +-1); ``False``: ``(2 j + 1) / W - 1`` (image edges at +-1); a size-1
  axis gets coordinate 0 in both modes, as in torch.
* ``grid_sample(x, grid, align_corners, padding_mode, mode)``: bilinear (eq. 5) or nearest sampling of
  ``x`` (N, H, W, C) at ``grid`` (N, Hg, Wg, 2) of normalised (x, y), as
  ``torch.nn.functional.grid_sample``. Unnormalisation: ``ix = (gx + 1) (W - 1) / 2`` (align_corners)
  or ``(gx + 1) W / 2 - 1/2``. ``padding_mode='zeros'``: every corner tap outside the image reads 0
  (coordinates are not clamped); ``'border'``: coordinates are clamped to ``[0, W - 1]`` before
  interpolation (gradient 0 where clamped, as torch). Gathers are flat-index takes per example,
  so the x-gradient is a scatter-add and the grid-gradient is the analytic derivative of the
  bilinear weights (eq. 6-7), both equal to torch's autograd.
* ``affine_warp(x, theta, size, align_corners, padding_mode, mode)``: ``grid_sample(x,
  affine_grid(theta, size))`` fused in pixel space. Mathematically identical, but with theta
  folded into pixel units, e.g. for align_corners ``ix = t00 j r + t01 i r' + (W_in - 1)/2 (t02 + 1 -
  t00 - t01)`` with ``r = (W_in - 1)/(W_out - 1)``, so the identity theta lands on integer pixels
  exactly and the warp is an EXACT identity map. The two-step form (ours or torch's) rounds the
  normalised grid and is off by ~3e-5 at 224 px for images in [0, 1]. Differences from the
  two-step form are float32 rounding of the sample positions (~1e-5 px at 224 px).

``SpatialTransformer`` (Linen): EmoNeXt's STN (El Boudouri & Bohi 2023; official code
yelboudouri/EmoNeXt ``EmoNeXt.stn``): localisation ``Conv(8, 7x7, VALID) -> BN -> MaxPool 2 -> ReLU ->
Conv(10, 5x5, VALID) -> BN -> MaxPool 2 -> ReLU -> flatten -> Dense 32 -> ReLU -> Dense 6`` (flatten
size 10*52*52 = 27040 at 224 px; Flax's Dense infers it at other sizes, e.g. 10*12*12 at 64 px), the
last Dense initialised to the identity transform (kernel 0, bias [1, 0, 0, 0, 1, 0]), then
``affine_warp`` with align_corners=True and zero padding. Initialisation as the official code:
every conv / dense kernel ``trunc_normal_(std=0.02)`` in torch, which truncates at +-2 ABSOLUTE,
i.e. +-100 std: a plain normal(0.02) here (Flax's ``truncated_normal(0.02)`` would cut at +-2 std and
give std 0.0176), biases 0, BN scale 1 / bias 0. BN: PyTorch defaults (momentum 0.1 -> Flax 0.9,
eps 1e-5), statistics in the 'batch_stats' collection; the one difference is that torch updates its
running variance with the unbiased batch variance, Flax with the biased one (factor n/(n-1), n = B*H*W
~ 10^4 per channel: negligible).

Parameter names (for converters) and their official PyTorch counterparts (``prefix`` is '' for
``EmoNeXt.state_dict()``, 'module.' for a DataParallel checkpoint):

  =================================  ============================  =================================
  Flax (params / batch_stats)        torch                         transform
  =================================  ============================  =================================
  loc_conv_0/{kernel,bias}           localization.0.{weight,bias}  OIHW -> HWIO
  loc_bn_0/{scale,bias}, {mean,var}  localization.1.{weight,bias,  as is (num_batches_tracked
                                     running_mean,running_var}     dropped)
  loc_conv_1/{kernel,bias}           localization.4.{weight,bias}  OIHW -> HWIO
  loc_bn_1/...                       localization.5.*              as loc_bn_0
  fc_loc_0/{kernel,bias}             fc_loc.0.{weight,bias}        (32, C*H*W) -> (H*W*C, 32): torch
                                                                   flattens NCHW in (C, H, W) order,
                                                                   we flatten NHWC in (H, W, C) order
  fc_loc_1/{kernel,bias}             fc_loc.2.{weight,bias}        (6, 32) -> (32, 6)
  =================================  ============================  =================================

``stn_from_torch_state_dict`` applies this table.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

PADDING_MODES = ("zeros", "border")
MODES = ("bilinear", "nearest")
IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# ----------------------------------------------------------------------------------------------
# Argument checks.


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not supported; expected one of {tuple(choices)}")


def _check_theta(theta: Array) -> None:
  if theta.ndim != 3 or theta.shape[1:] != (2, 3):
    raise ValueError(f"theta must have shape (N, 2, 3) (2-D affine matrices); got {theta.shape}")


def _out_hw(theta: Array, size: Sequence[int]) -> Tuple[int, int]:
  """(H, W) from ``size`` = (N, H, W) or (N, H, W, C), checked against theta's batch."""
  try:
    size = tuple(int(s) for s in size)
  except TypeError as e:
    raise ValueError(f"size must be a tuple of ints (N, H, W) or (N, H, W, C); got {size!r}") from e
  if len(size) not in (3, 4) or any(s < 1 for s in size):
    raise ValueError(f"size must be (N, H, W) or (N, H, W, C) with positive entries (NHWC "
                     f"convention, unlike torch's (N, C, H, W)); got {size}")
  if size[0] != theta.shape[0]:
    raise ValueError(f"size[0]={size[0]} does not match theta's batch size {theta.shape[0]}")
  return size[1], size[2]


# ----------------------------------------------------------------------------------------------
# affine_grid / grid_sample (torch semantics).


def _base_coords(n: int, align_corners: bool, dtype: Dtype) -> Array:
  """Normalised target coordinates along one axis of size n (torch's linspace_from_neg_one)."""
  if n <= 1:
    return jnp.zeros((n,), dtype)
  r = jnp.linspace(-1.0, 1.0, n, dtype=dtype)
  if not align_corners:
    r = r * ((n - 1) / n)
  return r


def affine_grid(theta: Array, size: Sequence[int], align_corners: bool = False) -> Array:
  """Sampling grid of the affine transform (Jaderberg et al. 2015, eq. 1), torch semantics.

  Args:
    theta: (N, 2, 3) affine matrices mapping target (x_t, y_t, 1) to source (x_s, y_s).
    size: output size ``(N, H, W)`` or ``(N, H, W, C)`` (NHWC; C is ignored). Static ints.
    align_corners: as ``torch.nn.functional.affine_grid``.

  Returns:
    (N, H, W, 2) grid of normalised source (x, y), x along W, in the dtype of theta (float32 at least).
  """
  theta = jnp.asarray(theta)
  _check_theta(theta)
  h, w = _out_hw(theta, size)
  dtype = jnp.promote_types(theta.dtype, jnp.float32)
  theta = theta.astype(dtype)
  xs = _base_coords(w, align_corners, dtype)[None, :]   # (1, W)
  ys = _base_coords(h, align_corners, dtype)[:, None]   # (H, 1)
  t = theta[:, :, :, None, None]                        # (N, 2, 3, 1, 1)
  grid = t[:, :, 0] * xs + t[:, :, 1] * ys + t[:, :, 2]  # (N, 2, H, W)
  return jnp.moveaxis(grid, 1, -1)


def _gather(x: Array, iy: Array, ix: Array) -> Array:
  """x (N, H, W, C) at integer (iy, ix) of shape (N, P) (already in range) -> (N, P, C)."""
  n, h, w, c = x.shape
  flat = x.reshape(n, h * w, c)
  idx = iy * w + ix
  return jax.vmap(lambda f, i: jnp.take(f, i, axis=0, mode="clip"))(flat, idx)


def _clip_coords(v: Array, size: int) -> Array:
  """Border clamp to [0, size-1] with torch's gradient (1 strictly inside, 0 on or past the edges)."""
  return jnp.where(v <= 0, jnp.zeros_like(v), jnp.where(v >= size - 1, jnp.full_like(v, size - 1), v))


def _sample_pixels(x: Array, ix: Array, iy: Array, padding_mode: str, mode: str) -> Array:
  """Samples x (N, H, W, C) at pixel coordinates ix, iy (N, P) -> (N, P, C)."""
  _, h, w, _ = x.shape
  if padding_mode == "border":
    ix, iy = _clip_coords(ix, w), _clip_coords(iy, h)
  # Keep floor/round finite and in int32 range for wild coordinates; the taps there are invalid
  # (zeros) or clamped (border) anyway, so the sampled value is unaffected.
  bx = lambda v: jnp.clip(v, -2.0, w + 1.0)
  by = lambda v: jnp.clip(v, -2.0, h + 1.0)

  def tap(yi, xi):
    valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    xc = jnp.clip(xi, 0, w - 1).astype(jnp.int32)
    yc = jnp.clip(yi, 0, h - 1).astype(jnp.int32)
    return _gather(x, yc, xc), valid[..., None]

  if mode == "nearest":
    xn = jax.lax.stop_gradient(jnp.round(bx(ix)))  # round half to even, as torch's nearbyint
    yn = jax.lax.stop_gradient(jnp.round(by(iy)))
    v, valid = tap(yn, xn)
    return jnp.where(valid, v, jnp.zeros_like(v))

  x0 = jax.lax.stop_gradient(jnp.floor(bx(ix)))
  y0 = jax.lax.stop_gradient(jnp.floor(by(iy)))
  x1, y1 = x0 + 1, y0 + 1
  # Weights as torch writes them (nw = (x_se - x) (y_se - y), ...): exact 1/0 at integer positions.
  wx0, wx1 = (x1 - ix)[..., None], (ix - x0)[..., None]
  wy0, wy1 = (y1 - iy)[..., None], (iy - y0)[..., None]
  out = None
  for (yy, xx, wgt) in ((y0, x0, wx0 * wy0), (y0, x1, wx1 * wy0),
                        (y1, x0, wx0 * wy1), (y1, x1, wx1 * wy1)):
    v, valid = tap(yy, xx)
    term = jnp.where(valid, v * wgt, jnp.zeros((), v.dtype))
    out = term if out is None else out + term
  return out


def _check_image(x: Array, name: str = "x") -> None:
  if x.ndim != 4:
    raise ValueError(f"{name} must be an NHWC image batch (N, H, W, C); got shape {x.shape}")


def _sampler_inputs(x: Array, coords: Array, padding_mode: str, mode: str) -> Tuple[Array, Array]:
  """Checks the sampling options and the image batch ``x``; returns ``x``, ``coords`` as arrays."""
  _check_choice("padding_mode", padding_mode, PADDING_MODES)
  _check_choice("mode", mode, MODES)
  x, coords = jnp.asarray(x), jnp.asarray(coords)
  _check_image(x)
  return x, coords


def _promote(x: Array, coords: Array) -> Tuple[Array, Array]:
  """``x`` and ``coords`` cast to their promoted dtype (float32 at least)."""
  dtype = jnp.promote_types(jnp.promote_types(x.dtype, coords.dtype), jnp.float32)
  return x.astype(dtype), coords.astype(dtype)


def grid_sample(x: Array, grid: Array, align_corners: bool = False, padding_mode: str = "zeros",
                mode: str = "bilinear") -> Array:
  """Samples ``x`` at ``grid``, as ``torch.nn.functional.grid_sample`` (2-D, NHWC).

  Args:
    x: (N, H, W, C) images.
    grid: (N, Hg, Wg, 2) normalised source coordinates (x, y) in [-1, 1] (outside is allowed).
    align_corners: whether -1 / +1 are the centres (True) or the outer edges (False) of the corner
      pixels.
    padding_mode: 'zeros' (taps outside read 0) or 'border' (coordinates clamped to the image).
    mode: 'bilinear' or 'nearest' (round half to even; no gradient w.r.t. grid).

  Returns:
    (N, Hg, Wg, C) in the promoted dtype of x and grid (float32 at least).
  """
  x, grid = _sampler_inputs(x, grid, padding_mode, mode)
  if grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != x.shape[0]:
    raise ValueError(f"grid must have shape (N, Hg, Wg, 2) with N = x.shape[0] = {x.shape[0]}; "
                     f"got {grid.shape}")
  x, grid = _promote(x, grid)
  n, h, w, c = x.shape
  hg, wg = grid.shape[1:3]
  gx = grid[..., 0].reshape(n, hg * wg)
  gy = grid[..., 1].reshape(n, hg * wg)
  if align_corners:
    ix, iy = (gx + 1) * ((w - 1) / 2), (gy + 1) * ((h - 1) / 2)
  else:
    ix, iy = (gx + 1) * (w / 2) - 0.5, (gy + 1) * (h / 2) - 0.5
  return _sample_pixels(x, ix, iy, padding_mode, mode).reshape(n, hg, wg, c)


def _pixel_coords(n_out: int, n_in: int, align_corners: bool) -> Tuple[np.ndarray, float, float]:
  """(k (x_t + 1) for each target index, k, offset) with ix = k (x_s + 1) + offset along an axis.

  k = (n_in - 1)/2, offset 0 (align_corners) or k = n_in/2, offset -1/2. The first array is built
  from ratios so that n_out == n_in gives exactly j (align_corners) or j + 1/2.
  """
  j = np.arange(n_out, dtype=np.float64)
  if align_corners:
    k, off = (n_in - 1) / 2, 0.0
    u = j * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.full((n_out,), k)
  else:
    k, off = n_in / 2, -0.5
    u = (j + 0.5) * (n_in / n_out)
  return u, k, off


def affine_warp(x: Array, theta: Array, size: Optional[Sequence[int]] = None,
                align_corners: bool = False, padding_mode: str = "zeros",
                mode: str = "bilinear") -> Array:
  """``grid_sample(x, affine_grid(theta, size))`` computed in pixel space (exact at identity).

  Args:
    x: (N, H, W, C) images.
    theta: (N, 2, 3) affine matrices (normalised coordinates, as ``affine_grid``).
    size: output ``(N, Ho, Wo)`` or ``(N, Ho, Wo, C)``; default x's size.
    align_corners, padding_mode, mode: as ``grid_sample``.

  Returns:
    (N, Ho, Wo, C) in the promoted dtype of x and theta (float32 at least).
  """
  x, theta = _sampler_inputs(x, theta, padding_mode, mode)
  _check_theta(theta)
  if theta.shape[0] != x.shape[0]:
    raise ValueError(f"theta batch {theta.shape[0]} does not match x batch {x.shape[0]}")
  n, h, w, c = x.shape
  ho, wo = _out_hw(theta, size if size is not None else x.shape)
  x, theta = _promote(x, theta)
  dtype = x.dtype
  ux, kx, off = _pixel_coords(wo, w, align_corners)   # target x in source-x pixel units
  vx, _, _ = _pixel_coords(ho, w, align_corners)      # target y in source-x pixel units
  uy, ky, _ = _pixel_coords(wo, h, align_corners)     # target x in source-y pixel units
  vy, _, _ = _pixel_coords(ho, h, align_corners)      # target y in source-y pixel units
  t = theta[:, :, :, None, None]                      # (N, 2, 3, 1, 1)
  cst = lambda a: jnp.asarray(a, dtype)
  # ix = kx (x_s + 1) + off with x_s = t00 x_t + t01 y_t + t02, regrouped per pixel-unit term.
  ix = (t[:, 0, 0] * cst(ux)[None, :] + t[:, 0, 1] * cst(vx)[:, None]
        + kx * (t[:, 0, 2] + 1 - t[:, 0, 0] - t[:, 0, 1]) + off)
  iy = (t[:, 1, 0] * cst(uy)[None, :] + t[:, 1, 1] * cst(vy)[:, None]
        + ky * (t[:, 1, 2] + 1 - t[:, 1, 0] - t[:, 1, 1]) + off)
  ix, iy = ix.reshape(n, ho * wo), iy.reshape(n, ho * wo)
  return _sample_pixels(x, ix, iy, padding_mode, mode).reshape(n, ho, wo, c)


# ----------------------------------------------------------------------------------------------
# EmoNeXt's spatial transformer.


def _identity_bias(key, shape, dtype=jnp.float32):
  del key
  if tuple(shape) != (6,):
    raise ValueError(f"the theta head bias must have shape (6,); got {shape}")
  return jnp.asarray(IDENTITY_THETA, dtype)


def localization_output_hw(height: int, width: int, kernel_sizes: Sequence[int] = (7, 5)
                           ) -> Tuple[int, int]:
  """Spatial size after the localisation net (VALID conv k, then 2x2/2 max-pool, per stage)."""
  for k in kernel_sizes:
    height, width = (height - k + 1) // 2, (width - k + 1) // 2
  return height, width


class SpatialTransformer(nn.Module):
  """EmoNeXt's STN: localisation net -> theta (N, 2, 3) -> affine warp of the input (same shape).

  Attributes:
    channels: conv widths of the localisation net (official: (8, 10)).
    kernel_sizes: their square VALID kernels (official: (7, 5)).
    hidden: width of the first regressor Dense (official: 32).
    bn_momentum, bn_epsilon: Flax BatchNorm settings (PyTorch defaults translated).
    align_corners, padding_mode, mode: of the warp (official: True, 'zeros', 'bilinear').
    kernel_init: conv / first Dense kernels (official: normal std 0.02, see above; biases zero).
    dtype: computation dtype of the localisation net (None: from inputs / params). theta and the
      sampling positions are always float32; the warped output has x's dtype.
    param_dtype: parameter dtype.
  """
  channels: Sequence[int] = (8, 10)
  kernel_sizes: Sequence[int] = (7, 5)
  hidden: int = 32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  align_corners: bool = True
  padding_mode: str = "zeros"
  mode: str = "bilinear"
  kernel_init: Callable[..., Array] = nn.initializers.normal(stddev=0.02)
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, return_theta: bool = False):
    """x (B, H, W, C) -> warped x (B, H, W, C) [, theta (B, 2, 3) float32]."""
    _check_choice("padding_mode", self.padding_mode, PADDING_MODES)
    _check_choice("mode", self.mode, MODES)
    if len(self.channels) != len(self.kernel_sizes):
      raise ValueError(f"channels={tuple(self.channels)} and kernel_sizes={tuple(self.kernel_sizes)}"
                       " must have the same length")
    _check_image(x)
    hl, wl = localization_output_hw(x.shape[1], x.shape[2], self.kernel_sizes)
    if hl < 1 or wl < 1:
      raise ValueError(f"input of {x.shape[1]}x{x.shape[2]} px is too small for the localisation "
                       f"net (kernels {tuple(self.kernel_sizes)}, each followed by a 2x2 max-pool)")
    h = x
    for i, (c, k) in enumerate(zip(self.channels, self.kernel_sizes)):
      h = nn.Conv(c, (k, k), padding="VALID", kernel_init=self.kernel_init, dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f"loc_conv_{i}")(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"loc_bn_{i}")(h)
      h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
      h = nn.relu(h)
    h = h.reshape(h.shape[0], -1)  # (H, W, C) order; see the module docstring for torch's (C, H, W)
    h = nn.relu(nn.Dense(self.hidden, kernel_init=self.kernel_init, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="fc_loc_0")(h))
    theta = nn.Dense(6, kernel_init=nn.initializers.zeros, bias_init=_identity_bias,
                     dtype=jnp.float32, param_dtype=self.param_dtype, name="fc_loc_1")(
                         h.astype(jnp.float32))
    theta = theta.reshape(-1, 2, 3)
    y = affine_warp(x, theta, align_corners=self.align_corners, padding_mode=self.padding_mode,
                    mode=self.mode).astype(x.dtype)
    return (y, theta) if return_theta else y


# ----------------------------------------------------------------------------------------------
# PyTorch weights.


def _np(t) -> np.ndarray:
  if hasattr(t, "detach"):
    t = t.detach().cpu().float().numpy()
  return np.asarray(t, np.float32)


def stn_from_torch_state_dict(sd: Mapping[str, Any], prefix: str = "",
                              loc_hw: Optional[Tuple[int, int]] = None,
                              conv_indices: Sequence[int] = (0, 4),
                              ) -> dict:
  """Official EmoNeXt STN weights (torch state dict) -> ``{'params': ..., 'batch_stats': ...}``.

  Args:
    sd: a state dict holding ``{prefix}localization.{0,1,4,5}.*`` and ``{prefix}fc_loc.{0,2}.*``
      (torch tensors or arrays); other keys are ignored.
    prefix: key prefix ('' for ``EmoNeXt.state_dict()``, 'module.' under DataParallel).
    loc_hw: (H, W) of the localisation output that ``fc_loc.0`` was built for; default: square,
      inferred from its input width (52 x 52 for the official 224 px model).
    conv_indices: Sequential indices of the convs; each BN is at index + 1.

  Returns:
    Variables for ``SpatialTransformer()`` (default fields), numpy float32.
  """
  def get(name):
    key = prefix + name
    if key not in sd:
      near = sorted(k for k in sd if k.startswith(prefix + name.split(".")[0]))[:10]
      raise KeyError(f"{key!r} not in the state dict (keys with that stem: {near})")
    return _np(sd[key])

  params, stats = {}, {}
  c_last = None
  for i, ci in enumerate(conv_indices):
    wt = get(f"localization.{ci}.weight")  # (O, I, kh, kw)
    c_last = wt.shape[0]
    params[f"loc_conv_{i}"] = {"kernel": wt.transpose(2, 3, 1, 0),
                               "bias": get(f"localization.{ci}.bias")}
    b = ci + 1
    params[f"loc_bn_{i}"] = {"scale": get(f"localization.{b}.weight"),
                             "bias": get(f"localization.{b}.bias")}
    stats[f"loc_bn_{i}"] = {"mean": get(f"localization.{b}.running_mean"),
                            "var": get(f"localization.{b}.running_var")}
  w0 = get("fc_loc.0.weight")  # (hidden, C*H*W), flattened in (C, H, W) order
  hidden, fan_in = w0.shape
  if loc_hw is None:
    side = math.isqrt(fan_in // c_last)
    if side * side * c_last != fan_in:
      raise ValueError(f"fc_loc.0 input width {fan_in} is not {c_last} * side^2; pass loc_hw")
    loc_hw = (side, side)
  hl, wl = loc_hw
  if hl * wl * c_last != fan_in:
    raise ValueError(f"loc_hw={loc_hw} with {c_last} channels gives {hl * wl * c_last} features, "
                     f"but fc_loc.0 takes {fan_in}")
  w0 = w0.reshape(hidden, c_last, hl, wl).transpose(2, 3, 1, 0).reshape(hl * wl * c_last, hidden)
  params["fc_loc_0"] = {"kernel": w0, "bias": get("fc_loc.0.bias")}
  params["fc_loc_1"] = {"kernel": get("fc_loc.2.weight").T, "bias": get("fc_loc.2.bias")}
  return {"params": params, "batch_stats": stats}
