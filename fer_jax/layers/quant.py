"""Binarized (larq-style) quantizers, layers and latent-weight clipping.

Quantizers are pure functions ``q(x) -> array`` with a surrogate ("pseudo") gradient, written as
``jax.custom_jvp`` rules, so they work under ``jit``, ``grad``, ``vjp``, ``jvp`` and ``vmap``.
All sign quantizers map 0 (and -0.0) to +1, never to 0, and propagate NaN.

==========================  ===========================================  ======================
name                        backward d q / d x                           source
==========================  ===========================================  ======================
``ste_sign``                1 for |x| <= clip_value else 0 (identity     Courbariaux, Hubara
                            when ``clip_value=None``)                    et al. 2016 (BNN)
``approx_sign``             2 - 2|x| for |x| <= 1 else 0                 Liu et al. 2018
                                                                         (Bi-Real Net)
``swish_sign``              beta (2 - beta x tanh(beta x / 2))           Darabi et al. 2018
                            / (1 + cosh(beta x))                         (BNN+, SignSwish)
``magnitude_aware_sign``    STE; forward mean|x| * sign(x) per output    Liu et al. 2018
                            channel (last axis), constant scale          (larq's form)
==========================  ===========================================  ======================

``QUANTIZERS`` maps names to these functions; ``get_quantizer(spec)`` resolves ``None`` / a name /
a callable. ``is_binary_quantizer(spec)`` is True when the output is exactly in {-1, +1} (what an
XNOR-popcount kernel needs); ``is_sign_quantizer(spec)`` is True for every sign-based quantizer
(binary or magnitude-scaled), i.e. whenever a latent kernel needs clipping. Custom callables can
declare themselves with attributes ``precision = 1`` (sign-based) and ``scaled = True`` (output
in {-a, +a}, not binary); ``functools.partial`` of a registered quantizer is recognised.

Layers ``QuantDense`` / ``QuantConv`` quantize their input (``input_quantizer``) and their kernel
(``kernel_quantizer``) on every call. The kernel parameter is the float LATENT kernel with the
shape of ``nn.Dense`` / ``nn.Conv``: (in, out) / (kh, kw, in, out).

Design: how latent binary kernels are identified and clipped
  * The kernel parameter is named ``'latent_kernel'`` when ``kernel_quantizer`` is sign-based
    (``is_sign_quantizer``) and ``'kernel'`` otherwise, so a layer without quantizers is
    checkpoint-compatible with ``nn.Dense`` / ``nn.Conv``, and a params tree alone tells which
    kernels are latent (``latent_kernel_mask``, ``is_latent_kernel_path``).
  * Latent kernels must be kept in [-clip, clip] after every update (else they drift out of the
    region where the STE passes gradient and "starve"; Courbariaux et al. 2016). This is
    done in the optimizer by ``clip_latent_kernels(clip_value, mask)``, an optax transform to
    chain AFTER the optimizer (it projects ``params + updates``; see its docstring).
  * Each layer declares its bound in ``kernel_clip_value`` (default 1.0). ``None`` means
    "deliberately unclipped": the layer warns (``warnings.warn`` naming the layer) at init.
    ``latent_clip_values(model, *init_args)`` collects the declared bounds per latent kernel
    path; pass the result as ``clip_latent_kernels(clip_value=...)`` to honour per-layer bounds
    (None entries are left unclipped). With a plain float, every latent kernel is clipped to it.
  * ``check_latent_clipping(params)`` warns, naming each offending layer, when latent kernels lie
    outside their bound -- which is what happens when the clip was left out of the optimizer.

Kernel scaling ``'mean_abs'`` (XNOR-Net, Rastegari et al. 2016, eq. 2-4): the quantized kernel
is ``alpha_j * q(W)[..., j]`` with ``alpha_j = mean_i |W_ij|`` over the fan-in of output channel
``j`` of the latent kernel. It is applied to the layer output (``alpha * (q(x) * q(W))``, the same
function), so the product of binary operands stays integer-valued. ``alpha`` is differentiated
by the exact chain rule: dC/dW_ij = alpha_j g_ij q'(W_ij) + sign(W_ij) / n sum_k g_kj q(W_kj)
with g = dC/d(alpha q(W)); XNOR-Net sec. 3.1 keeps only the k = i term, 1/n + alpha q'(W_ij).
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

__all__ = [
    "ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign", "QUANTIZERS",
    "get_quantizer", "is_binary_quantizer", "is_sign_quantizer", "KERNEL_SCALINGS",
    "LATENT_KERNEL_NAME", "QuantDense", "QuantConv", "is_latent_kernel_path", "latent_kernel_mask",
    "latent_clip_values", "clip_latent_kernels", "check_latent_clipping", "conv_padding",
]

Quantizer = Callable[[jax.Array], jax.Array]
QuantizerSpec = Union[None, str, Quantizer]
LATENT_KERNEL_NAME = "latent_kernel"
KERNEL_SCALINGS = (None, "mean_abs")


# ----------------------------------------------------------------------------------------------
# Quantizers.


def _sign(x: jax.Array) -> jax.Array:
  """sign with sign(0) = sign(-0.0) = +1; NaN stays NaN."""
  return jnp.sign(jnp.sign(x) + 0.5).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _ste_sign(x, clip_value):
  return _sign(x)


@_ste_sign.defjvp
def _ste_sign_jvp(clip_value, primals, tangents):
  (x,), (t,) = primals, tangents
  if clip_value is None:
    return _sign(x), t
  return _sign(x), jnp.where(jnp.abs(x) <= clip_value, t, jnp.zeros_like(t))


@jax.custom_jvp
def _approx_sign(x):
  return _sign(x)


@_approx_sign.defjvp
def _approx_sign_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  ax = jnp.abs(x)
  return _sign(x), t * jnp.where(ax <= 1, 2 - 2 * ax, jnp.zeros_like(ax))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _swish_sign(x, beta):
  return _sign(x)


@_swish_sign.defjvp
def _swish_sign_jvp(beta, primals, tangents):
  (x,), (t,) = primals, tangents
  bx = beta * x
  # The derivative underflows to 0 beyond |beta x| ~ 40 (e^-40 ~ 4e-18); masking avoids inf/inf.
  far = jnp.abs(bx) > 40
  bx = jnp.where(far, jnp.zeros_like(bx), bx)
  d = beta * (2 - bx * jnp.tanh(bx / 2)) / (1 + jnp.cosh(bx))
  return _sign(x), t * jnp.where(far, jnp.zeros_like(d), d)


def ste_sign(x: jax.Array, clip_value: Optional[float] = 1.0) -> jax.Array:
  """Sign with a straight-through estimator (BNN, Courbariaux, Hubara et al. 2016, sec. 1.3).

  Forward ``q(x) = +1 if x >= 0 else -1``. Backward ``g_x = g_q 1_{|x| <= clip_value}`` (the
  "hard tanh" STE of the paper, with clip_value 1); ``clip_value=None`` passes the gradient
  unchanged (identity STE). Same semantics as larq's ``ste_sign``.
  ``clip_value`` must be a Python float (it is static).
  """
  if clip_value is not None:
    clip_value = float(clip_value)
    if not clip_value > 0:
      raise ValueError(f"ste_sign: clip_value must be > 0 or None, got {clip_value}")
  return _ste_sign(jnp.asarray(x), clip_value)


def approx_sign(x: jax.Array) -> jax.Array:
  """Sign with the ApproxSign gradient (Bi-Real Net, Liu et al. 2018).

  Forward ``q(x) = +1 if x >= 0 else -1``; backward ``dq/dx = 2 - 2|x|`` for ``|x| <= 1``, else 0:
  the derivative of the piecewise quadratic ``F(x) = -1 (x < -1); 2x + x^2 (-1 <= x < 0);
  2x - x^2 (0 <= x < 1); 1 (x >= 1)``.
  """
  return _approx_sign(jnp.asarray(x))


def swish_sign(x: jax.Array, beta: float = 5.0) -> jax.Array:
  """Sign with the SignSwish gradient (BNN+, Darabi et al. 2018).

  Forward ``q(x) = +1 if x >= 0 else -1``; backward (derivative of ``2 sigmoid(beta x)
  (1 + beta x (1 - sigmoid(beta x))) - 1``)::

    dq/dx = beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)).

  ``beta`` must be a Python float (it is static).
  """
  beta = float(beta)
  if not beta > 0:
    raise ValueError(f"swish_sign: beta must be > 0, got {beta}")
  return _swish_sign(jnp.asarray(x), beta)


def magnitude_aware_sign(x: jax.Array, clip_value: Optional[float] = 1.0) -> jax.Array:
  """Magnitude-aware sign for kernels (Bi-Real Net, Liu et al. 2018; larq's form).

  Forward ``mean_i |x_i..j| * sign(x)``: the mean absolute value over every axis but the last
  (the output channel), times ``ste_sign(x)``. The scale is a constant for the gradient
  (``stop_gradient``), so ``dq/dx = scale_j * 1_{|x| <= clip_value}``. A 0-d or 1-d input uses
  one scale over all entries. Output is in {-a_j, +a_j}: sign-based, but not binary.
  """
  x = jnp.asarray(x)
  axes = tuple(range(x.ndim - 1)) if x.ndim > 1 else None
  scale = lax.stop_gradient(jnp.mean(jnp.abs(x), axis=axes, keepdims=x.ndim > 1))
  return scale * ste_sign(x, clip_value)


for _fn, _scaled in ((ste_sign, False), (approx_sign, False), (swish_sign, False),
                     (magnitude_aware_sign, True)):
  _fn.precision = 1
  _fn.scaled = _scaled

QUANTIZERS: Dict[str, Quantizer] = {
    "ste_sign": ste_sign,
    "approx_sign": approx_sign,
    "swish_sign": swish_sign,
    "magnitude_aware_sign": magnitude_aware_sign,
}


def get_quantizer(spec: QuantizerSpec) -> Optional[Quantizer]:
  """Resolves None (no quantization), a registered name (``QUANTIZERS``) or a callable."""
  if spec is None or callable(spec):
    return spec
  if isinstance(spec, str) and spec in QUANTIZERS:
    return QUANTIZERS[spec]
  raise ValueError(f"Unknown quantizer {spec!r}; expected None, a callable or one of "
                   f"{sorted(QUANTIZERS)}")


def _unwrap(fn: Any) -> Any:
  while isinstance(fn, functools.partial):
    fn = fn.func
  return fn


def is_sign_quantizer(spec: QuantizerSpec) -> bool:
  """True for sign-based quantizers (``precision == 1``): their latent kernels need clipping."""
  fn = _unwrap(get_quantizer(spec))
  return fn is not None and getattr(fn, "precision", None) == 1


def is_binary_quantizer(spec: QuantizerSpec) -> bool:
  """True when the quantizer's output is exactly in {-1, +1} (sign-based and not scaled)."""
  fn = _unwrap(get_quantizer(spec))
  return is_sign_quantizer(fn) and not getattr(fn, "scaled", False)


# ----------------------------------------------------------------------------------------------
# Layers.


def _check_config(layer: nn.Module) -> Tuple[Optional[Quantizer], Optional[Quantizer]]:
  name = f"{type(layer).__name__} {layer.name!r}"
  if layer.kernel_scaling not in KERNEL_SCALINGS:
    raise ValueError(f"{name}: unknown kernel_scaling {layer.kernel_scaling!r}; expected one of "
                     f"{list(KERNEL_SCALINGS)}")
  c = layer.kernel_clip_value
  if c is not None and not (isinstance(c, (int, float)) and c > 0):
    raise ValueError(f"{name}: kernel_clip_value must be a float > 0 or None, got {c!r}")
  return get_quantizer(layer.input_quantizer), get_quantizer(layer.kernel_quantizer)


def _latent_kernel(layer: nn.Module, shape: Tuple[int, ...]) -> Tuple[jax.Array, bool]:
  """Creates the (latent) kernel param; warns at init when a latent kernel has no clip bound."""
  latent = is_sign_quantizer(layer.kernel_quantizer)
  name = LATENT_KERNEL_NAME if latent else "kernel"
  if latent and layer.kernel_clip_value is None and layer.is_initializing():
    path = "/".join(str(p) for p in layer.scope.path) or layer.name or "<top level>"
    warnings.warn(
        f"{type(layer).__name__} {path!r}: kernel quantizer {layer.kernel_quantizer!r} is "
        "sign-based but kernel_clip_value=None, so its latent kernel will not be clipped; latent "
        "weights that leave the STE range get no gradient ('starved weights'). Set "
        "kernel_clip_value (e.g. 1.0) and chain clip_latent_kernels() into the optimizer.",
        UserWarning, stacklevel=4)
  kernel = layer.param(name, layer.kernel_init, shape, layer.param_dtype)
  return kernel, latent


def _params_and_input(layer: nn.Module, x: jax.Array, kernel_shape: Tuple[int, ...],
                      iq: Optional[Quantizer]):
  """Creates the kernel and bias params, promotes dtypes and quantizes x: (qi(x), kernel, bias)."""
  kernel, _ = _latent_kernel(layer, kernel_shape)
  bias = layer.param("bias", layer.bias_init, (layer.features,), layer.param_dtype) \
      if layer.use_bias else None
  x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=layer.dtype)
  if iq is not None:
    x = iq(x)
  return x, kernel, bias


def _scale_and_bias(y: jax.Array, alpha: Optional[jax.Array],
                    bias: Optional[jax.Array]) -> jax.Array:
  """``y * alpha + bias``, each factor only when given."""
  if alpha is not None:
    y = y * alpha
  if bias is not None:
    y = y + bias
  return y


def _quantize_kernel(layer: nn.Module, kernel: jax.Array, kq: Optional[Quantizer]):
  """Returns (q(W), alpha or None); alpha_j = mean |W| over all axes but the last (XNOR eq. 4)."""
  alpha = None
  if layer.kernel_scaling == "mean_abs":
    alpha = jnp.mean(jnp.abs(kernel), axis=tuple(range(kernel.ndim - 1)))
  if kq is not None:
    kernel = kq(kernel)
  return kernel, alpha


class QuantDense(nn.Module):
  """Dense layer with quantized input and kernel (larq ``QuantDense``).

  ``y = s * (qi(x) @ qk(W)) + b`` with ``s = alpha`` for ``kernel_scaling='mean_abs'`` (XNOR-Net
  eq. 2-4), else 1. Params: ``'latent_kernel'`` (sign-based ``kernel_quantizer``) or ``'kernel'``,
  shape (in, features); ``'bias'`` (features,). See the module docstring for clipping.
  """
  features: int
  use_bias: bool = True
  input_quantizer: QuantizerSpec = None
  kernel_quantizer: QuantizerSpec = None
  kernel_scaling: Optional[str] = None
  kernel_clip_value: Optional[float] = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    iq, kq = _check_config(self)
    x, kernel, bias = _params_and_input(self, x, (jnp.shape(x)[-1], self.features), iq)
    kernel, alpha = _quantize_kernel(self, kernel, kq)
    y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)
    return _scale_and_bias(y, alpha, bias)


def conv_padding(padding: Any, in_sizes: Sequence[int], kernel_sizes: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
  """Explicit (lo, hi) pads per spatial dim for 'SAME' (XLA convention) / 'VALID' / int / pairs."""
  n = len(in_sizes)
  eff = [(k - 1) * d + 1 for k, d in zip(kernel_sizes, dilations)]
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return ((0, 0),) * n
    if mode == "SAME":
      pads = []
      for size, k, s in zip(in_sizes, eff, strides):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
      return tuple(pads)
  elif isinstance(padding, int):
    return ((padding, padding),) * n
  elif isinstance(padding, Sequence) and len(padding) == n:
    if all(isinstance(p, int) for p in padding):
      return tuple((p, p) for p in padding)
    if all(isinstance(p, Sequence) and len(p) == 2 and all(isinstance(q, int) for q in p)
           for p in padding):
      return tuple((int(lo), int(hi)) for lo, hi in padding)
  raise ValueError(f"Invalid padding {padding!r}; expected 'SAME', 'VALID', an int, {n} ints or "
                   f"{n} (low, high) pairs")


def _tuple(v: Union[int, Sequence[int]], n: int, what: str) -> Tuple[int, ...]:
  t = (v,) * n if isinstance(v, int) else tuple(v)
  if len(t) != n or not all(isinstance(i, (int, np.integer)) and i >= 1 for i in t):
    raise ValueError(f"{what} must be a positive int or {n} positive ints, got {v!r}")
  return tuple(int(i) for i in t)


class QuantConv(nn.Module):
  """N-d convolution (NHWC / channels-last) with quantized input and kernel (larq ``QuantConv``).

  The input is quantized FIRST, then padded explicitly with ``pad_values`` (``padding`` as in
  ``nn.Conv``: 'SAME' with XLA's split, 'VALID', an int, or per-dim ints / (lo, hi) pairs), then
  convolved with ``qk(W)`` with VALID padding; ``kernel_scaling='mean_abs'`` multiplies output
  channel j by alpha_j (XNOR-Net eq. 2-4). ``pad_values=1.0`` keeps a binary conv purely +-1
  (larq's recommendation); the default 0.0 matches ``nn.Conv``. Params: ``'latent_kernel'``
  (sign-based ``kernel_quantizer``) or ``'kernel'`` of shape (*kernel_size, in, features) and
  ``'bias'`` (features,). An int ``kernel_size`` means a square 2-D kernel (larq's Conv2D).
  """
  features: int
  kernel_size: Union[int, Sequence[int]]
  strides: Union[int, Sequence[int]] = 1
  padding: Any = "SAME"
  pad_values: float = 0.0
  kernel_dilation: Union[int, Sequence[int]] = 1
  use_bias: bool = True
  input_quantizer: QuantizerSpec = None
  kernel_quantizer: QuantizerSpec = None
  kernel_scaling: Optional[str] = None
  kernel_clip_value: Optional[float] = 1.0
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    iq, kq = _check_config(self)
    ks = self.kernel_size
    n = len(ks) if isinstance(ks, Sequence) else 2
    if x.ndim < n + 2:
      raise ValueError(f"QuantConv {self.name!r}: expected input of shape (B, *spatial[{n}], C), "
                       f"got shape {x.shape}")
    ks = _tuple(ks, n, "kernel_size")
    strides = _tuple(self.strides, n, "strides")
    dil = _tuple(self.kernel_dilation, n, "kernel_dilation")
    batch_shape = x.shape[:-(n + 1)]
    x = x.reshape((-1,) + x.shape[-(n + 1):])
    pads = conv_padding(self.padding, x.shape[1:-1], ks, strides, dil)
    x, kernel, bias = _params_and_input(self, x, ks + (x.shape[-1], self.features), iq)
    if any(lo or hi for lo, hi in pads):
      x = jnp.pad(x, ((0, 0),) + pads + ((0, 0),), constant_values=self.pad_values)
    kernel, alpha = _quantize_kernel(self, kernel, kq)
    y = lax.conv_general_dilated(x, kernel, strides, "VALID", rhs_dilation=dil,
                                 dimension_numbers=_dimension_numbers(n),
                                 precision=self.precision)
    y = _scale_and_bias(y, alpha, bias)
    return y.reshape(batch_shape + y.shape[1:])


def _dimension_numbers(n: int) -> lax.ConvDimensionNumbers:
  """Channels-last dimension numbers for n spatial dims: (N, *S, C), (*S, I, O), (N, *S, C)."""
  spatial = tuple(range(1, n + 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, n + 1) + spatial, rhs_spec=(n + 1, n) +
                                  tuple(range(n)), out_spec=(0, n + 1) + spatial)


# ----------------------------------------------------------------------------------------------
# Latent-kernel clipping.


def _path_names(path) -> Tuple[str, ...]:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)


def is_latent_kernel_path(path: Sequence[Any]) -> bool:
  """True when a param path (names or jax key entries) ends in ``'latent_kernel'``."""
  names = _path_names(path) if path and not isinstance(path[0], str) else tuple(path)
  return bool(names) and names[-1] == LATENT_KERNEL_NAME


def latent_kernel_mask(params: Any, exclude: Optional[str] = None) -> Any:
  """Bool tree like ``params``: True at latent (binary) kernels, optionally minus paths matching
  the regex ``exclude`` (searched in the '/'-joined path, e.g. ``'QuantDense_0/'``)."""
  rx = re.compile(exclude) if exclude is not None else None

  def keep(path, _):
    if not is_latent_kernel_path(path):
      return False
    return rx is None or not rx.search("/".join(_path_names(path)))

  return jax.tree_util.tree_map_with_path(keep, params)


def latent_clip_values(model: nn.Module, *init_args, rngs: Any = None,
                       **init_kwargs) -> Dict[Tuple[str, ...], Optional[float]]:
  """The ``kernel_clip_value`` each Quant layer of ``model`` declares, by latent-kernel param path.

  Runs ``model.init`` abstractly (``jax.eval_shape``; no FLOPs) with the given arguments and
  returns ``{('Block_0', 'QuantConv_1', 'latent_kernel'): 1.0, ...}`` (None where a layer opts
  out). Pass it to ``clip_latent_kernels(clip_value=...)``.
  """
  found: Dict[Tuple[str, ...], Optional[float]] = {}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if isinstance(mod, (QuantDense, QuantConv)) and context.method_name == "__call__" \
        and is_sign_quantizer(mod.kernel_quantizer):
      path = tuple(str(p) for p in mod.scope.path) + (LATENT_KERNEL_NAME,)
      found[path] = None if mod.kernel_clip_value is None else float(mod.kernel_clip_value)
    return next_fun(*args, **kwargs)

  rngs = jax.random.key(0) if rngs is None else rngs
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with nn.intercept_methods(interceptor):
      jax.eval_shape(lambda: model.init(rngs, *init_args, **init_kwargs))
  return found


def _bound(clip_value, names) -> Optional[float]:
  if isinstance(clip_value, Mapping):
    # Paths from model.init are relative to 'params'; accept trees with or without that level.
    for key in (names, names[1:] if names and names[0] == "params" else None):
      if key is not None and key in clip_value:
        return clip_value[key]
    raise ValueError(f"clip_latent_kernels: no clip value for latent kernel {'/'.join(names)!r}; "
                     f"known paths: {sorted('/'.join(k) for k in clip_value)}")
  return clip_value


def clip_latent_kernels(clip_value: Union[float, Mapping[Tuple[str, ...], Optional[float]]] = 1.0,
                        mask: Any = None) -> optax.GradientTransformation:
  """Optax transform projecting latent kernels into [-c, c] after the update (BNN, Courbariaux,
  Hubara et al. 2016, Alg. 1: ``W <- clip(W - eta g, -1, 1)``).

  Chain it LAST (after the optimizer / learning rate): it returns ``u'`` with
  ``params + u' == clip(params + u, -c, c)`` (to within rounding; the result is nudged by one
  ulp where rounding would leave ``[-c, c]``) at masked leaves and ``u`` unchanged elsewhere.
  ``clip_value``: a float for every latent kernel, or the mapping of ``latent_clip_values`` (None
  entries are not clipped). ``mask``: None (``latent_kernel_mask(params)``), a bool tree like
  params, or a callable ``params -> bool tree``. ``update`` needs ``params``.
  """
  if not isinstance(clip_value, Mapping) and not (isinstance(clip_value, (int, float)) and
                                                  clip_value > 0):
    raise ValueError(f"clip_latent_kernels: clip_value must be a float > 0 or a mapping from "
                     f"latent_clip_values, got {clip_value!r}")

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("clip_latent_kernels: update() needs params (tx.update(grads, state, "
                       "params))")
    m = latent_kernel_mask(params) if mask is None else mask(params) if callable(mask) else mask

    def project(path, u, p, keep):
      if not keep:
        return u
      c = _bound(clip_value, _path_names(path))
      if c is None:
        return u
      c = jnp.asarray(c, p.dtype)
      new = jnp.clip(p + u.astype(p.dtype), -c, c)
      u2 = new - p
      r = p + u2
      u2 = jnp.where(r > c, jnp.nextafter(u2, -jnp.inf), u2)
      u2 = jnp.where(r < -c, jnp.nextafter(u2, jnp.inf), u2)
      return u2.astype(u.dtype)

    return jax.tree_util.tree_map_with_path(project, updates, params, m), state

  return optax.GradientTransformation(init_fn, update_fn)


def check_latent_clipping(params: Any, clip_value: Union[float, Mapping] = 1.0,
                          atol: float = 1e-6) -> list:
  """Warns (naming each layer) where a latent kernel exceeds its clip bound; returns those paths.

  Call it on trained params (e.g. at evaluation): violations mean ``clip_latent_kernels`` is
  missing from the optimizer chain.
  """
  bad = []

  def visit(path, p):
    if is_latent_kernel_path(path):
      names = _path_names(path)
      c = _bound(clip_value, names)
      if c is not None:
        m = float(jnp.max(jnp.abs(p)))
        if m > c + atol:
          bad.append("/".join(names))
          warnings.warn(f"latent kernel {'/'.join(names)!r} has max |w| = {m:.4g} > clip value "
                        f"{c}: add clip_latent_kernels() to the optimizer chain", UserWarning,
                        stacklevel=3)

  jax.tree_util.tree_map_with_path(visit, params)
  return bad
