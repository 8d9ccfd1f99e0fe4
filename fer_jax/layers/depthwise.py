"""Depthwise 2-D convolution with a choice of implementation.

Parameters are laid out exactly as ``nn.Conv(features=C, feature_group_count=C)`` (kernel
``(kh, kw, 1, C)``, bias ``(C,)``), so checkpoints are interchangeable between implementations.

Every implementation computes the same function: a depthwise cross-correlation of an NHWC input
with strides ``(s_h, s_w)`` and zero padding ``(p_t, p_b)`` rows, ``(p_l, p_r)`` columns,

  y[b, h, w, c] = sum_{i, j} x[b, s_h h + i - p_t, s_w w + j - p_l, c] * kernel[i, j, 0, c],   (1)

with x = 0 outside the input, output size ``H_out = (H + p_t + p_b - kh) // s_h + 1`` (same for W).
``padding`` is ``'SAME'`` (XLA's convention and the default: output ``ceil(H / s)``; at stride 1
``(k - 1) // 2`` before and ``k // 2`` after), ``'VALID'``, an int p (PyTorch's ``padding=p``: p on
every side; timm's EfficientNet pads ``k // 2``, which differs from 'SAME' at stride 2 on even
sizes), or ``((p_t, p_b), (p_l, p_r))``.

Implementations (``IMPLEMENTATIONS``; ``DepthwiseConv(impl='auto')`` picks ``'shift'`` on CPU and
``'xla'`` elsewhere):

* ``'xla'``: ``lax.conv_general_dilated(feature_group_count=C)``; differentiable in every mode, and
  the right choice on TPU/GPU, where XLA has fast grouped-conv kernels. On XLA:CPU (jax 0.10) the
  grouped convolution and, worse, its kernel gradient (a ``batch_group_count`` convolution) take a
  slow generic path: ~50 ms forward, ~135 ms forward+backward for one ConvNeXt-T stage-1 layer
  (batch 32, 64 px, 2 cores); at stride 2 the backward is slower still (~2 s for EfficientNet-B0's
  first 3x3 / 2 layer, batch 32, 112 px).
* ``'shift'`` (**default-worthy on CPU**; ~9 ms for the same ConvNeXt layer, 12-400x faster than
  ``'xla'`` forward+backward at the ConvNeXt stage shapes, 14-70x at EfficientNet-B0's): (1)
  written as a sum of kh*kw shifted (at stride s: strided) slices of the padded input times
  per-channel weights, which XLA fuses into one vectorised loop over the output. A
  ``jax.custom_vjp`` supplies a backward of the same kind. Input gradient: at stride 1, (1) applied
  to the output gradient padded the other way round, with the flipped kernel; at stride s, a
  polyphase decomposition: the padded input gradient's s_h*s_w phases (rows ``= a mod s_h``,
  columns ``= c mod s_w``) are each a stride-1 sum of this kind over the output gradient with the
  flipped sub-kernel ``kernel[a::s_h, c::s_w]``, interleaved by one reshape. Kernel gradient
  ``dk[i, j, c] = sum_{b,h,w} xpad[b, s_h h + i, s_w w + j, c] * g[b, h, w, c]``: accumulated by a
  ``lax.scan`` over blocks of output rows whose body adds (B, kh, kw, C) windows of ``xpad`` (at
  stride s, windows s apart) times single pixels of ``g`` -- a fused elementwise loop into a small
  (B, kh, kw, C) accumulator, so the kh*kw-times larger patch tensor is never materialised and XLA
  gets no reduction over a huge axis (XLA:CPU runs each of those as a separate memory-bound pass,
  50-100x slower). The forward and input-gradient sums are materialised (a scan over batch chunks
  for 7x7 kernels, an optimization barrier for <= 25 taps) so that XLA cannot re-fuse (recompute)
  them into each of their consumers. Taps that never overlap the input (H or W smaller than the
  kernel reach) are skipped. Low-precision (bf16) inputs are accumulated in float32 and the result
  cast back. Being a custom_vjp it supports reverse mode (grad/vjp,
  under jit and vmap), not forward mode (jvp/jacfwd); any kernel size, odd or even, any stride.
* ``'shift_ad'``: the forward of ``'shift'`` differentiated by plain JAX autodiff. Forward as fast
  as ``'shift'``; the backward is 5-15x slower than ``'shift'`` (XLA materialises every shifted
  slice for the kernel gradient) -- about as slow as ``'xla'`` at the larger spatial sizes. Use
  only where forward-mode autodiff is needed.

See ``benchmarks/depthwise_conv.py`` (``--preset convnext | efficientnet_b0``) and
``benchmarks/README.md`` for measured times.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

# Target number of shifted windows unrolled into one scan step of the kernel gradient.
_TAPS_PER_STEP = 48
# Forward / input-gradient sums of at most this many taps are materialised by an optimization barrier,
# larger ones by a scan over batch chunks (see ``_materialized``).
_BARRIER_MAX_TAPS = 25

Strides = Union[int, Sequence[int]]
Padding = Union[str, int, Sequence[Sequence[int]]]
_Pads = Tuple[Tuple[int, int], Tuple[int, int]]


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _normalize_strides(strides: Strides) -> Tuple[int, int]:
  s = (strides, strides) if _is_int(strides) else tuple(strides)
  if len(s) != 2 or not all(_is_int(v) and v >= 1 for v in s):
    raise ValueError(f"depthwise conv strides must be a positive int or a pair of them, got {strides!r}")
  return s


def _normalize_padding(padding: Padding, sizes: Tuple[int, int], ksize: Tuple[int, int],
                       strides: Tuple[int, int]) -> _Pads:
  """((p_t, p_b), (p_l, p_r)) for 'SAME' (XLA's convention), 'VALID', an int or explicit pairs."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return (0, 0), (0, 0)
    if mode == "SAME":
      pads = []
      for n, k, s in zip(sizes, ksize, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
      return tuple(pads)
  elif _is_int(padding) and padding >= 0:
    return (padding, padding), (padding, padding)
  else:
    try:
      pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
      pads = ()
    if len(pads) == 2 and all(_is_int(v) and v >= 0 for p in padding for v in p):
      return pads
  raise ValueError(f"depthwise conv padding must be 'SAME', 'VALID', an int >= 0 or "
                   f"((top, bottom), (left, right)) of ints >= 0, got {padding!r}")


def _check_inputs(x: jax.Array, kernel: jax.Array, strides: Strides = 1,
                  padding: Padding = "SAME") -> Tuple[Tuple[int, int], _Pads]:
  """Validates the shapes; returns the normalised (strides, pads)."""
  if x.ndim != 4:
    raise ValueError(f"depthwise conv expects x of shape (B, H, W, C), got shape {x.shape}")
  c = x.shape[-1]
  if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != c:
    raise ValueError(
        f"depthwise conv expects kernel of shape (kh, kw, 1, {c}) for x with {c} channels, "
        f"got kernel shape {kernel.shape}")
  if kernel.shape[0] < 1 or kernel.shape[1] < 1:
    raise ValueError(f"kernel spatial size must be >= 1, got {kernel.shape[:2]}")
  s = _normalize_strides(strides)
  pads = _normalize_padding(padding, x.shape[1:3], kernel.shape[:2], s)
  for n, k, (lo, hi) in zip(x.shape[1:3], kernel.shape[:2], pads):
    if n + lo + hi < k:
      raise ValueError(f"depthwise conv input {x.shape[1:3]} padded by {pads} is smaller than the "
                       f"kernel {kernel.shape[:2]}")
  return s, pads


def _out_size(n: int, k: int, pads: Tuple[int, int], s: int) -> int:
  return (n + pads[0] + pads[1] - k) // s + 1


def depthwise_conv2d_xla(x: jax.Array, kernel: jax.Array, strides: Strides = 1,
                         padding: Padding = "SAME") -> jax.Array:
  """(1) via ``lax.conv_general_dilated(feature_group_count=C)``.

  Args:
    x: (B, H, W, C) input.
    kernel: (kh, kw, 1, C) kernel.
    strides: int or (s_h, s_w).
    padding: 'SAME', 'VALID', int or ((p_t, p_b), (p_l, p_r)) (see the module docstring).
  """
  s, pads = _check_inputs(x, kernel, strides, padding)
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=s, padding=pads,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def _tap_range(k: int, n: int, pad_before: int | None = None, out: int | None = None,
               stride: int = 1) -> Tuple[int, int, int, int]:
  """Taps of a size-k kernel that touch a length-n axis, and the padding they need.

  Tap ``i`` reads input index ``stride * o + i - p`` for outputs ``0 <= o < out``, with
  ``p = pad_before`` (default ``(k - 1) // 2``: 'SAME' at stride 1) and ``out`` (default n). Returns
  ``(lo, hi, pad_lo, pad_hi)`` such that taps ``lo <= i < hi`` include every useful one (a tap is
  useful if it reads the input for some output) and the input padded by ``(pad_lo, pad_hi)`` (a
  negative value crops) satisfies ``xpad[stride * o + i - lo] = x[stride * o + i - p]``, its length
  being ``stride * (out - 1) + hi - lo``. ``lo == hi`` when no tap is useful.
  """
  p = (k - 1) // 2 if pad_before is None else pad_before
  out = n if out is None else out

  def useful(i):
    o = max(0, -(-(p - i) // stride))  # first output whose read index is >= 0
    return o < out and stride * o + i - p <= n - 1

  taps = [i for i in range(k) if useful(i)]
  lo, hi = (taps[0], taps[-1] + 1) if taps else (0, 0)
  return lo, hi, p - lo, stride * (out - 1) + hi - p - n


def _pad(x: jax.Array, rows: Tuple[int, int], cols: Tuple[int, int]) -> jax.Array:
  """Zero-pads (negative values crop) the H and W axes of x (B, H, W, C)."""
  if rows == (0, 0) and cols == (0, 0):
    return x
  return jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*rows, 0), (*cols, 0), (0, 0, 0)))


def _acc_dtype(dtype) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _shift_sum(xpad: jax.Array, k: jax.Array, h: int, w: int, sh: int = 1, sw: int = 1) -> jax.Array:
  """sum_{i,j} xpad[:, i::sh][:h, j::sw][:w] * k[i, j]; xpad (B, sh (h-1) + kh, sw (w-1) + kw, C)."""
  kh, kw = k.shape[:2]
  acc = None
  for i in range(kh):
    for j in range(kw):
      t = xpad[:, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw, :] * k[i, j]
      acc = t if acc is None else acc + t
  return acc


def _smallest_factor(n: int) -> int:
  """Smallest divisor > 1 of n (n itself if prime; 1 for n == 1)."""
  for d in range(2, int(n ** 0.5) + 1):
    if n % d == 0:
      return d
  return n


def _materialized(fn: Callable[[jax.Array], jax.Array], xpad: jax.Array, taps: int) -> jax.Array:
  """fn(xpad), computed exactly once (fn must act per example; ``taps``: kh * kw of the kernel).

  XLA:CPU otherwise treats the kh*kw-term elementwise sum as cheap and re-fuses (recomputes) it
  into each of its consumers (in ConvNeXt: LayerNorm mean, variance and normalisation, and their
  gradients; 3-5 copies per block). Kernels of more than ``_BARRIER_MAX_TAPS`` taps (ConvNeXt's 7x7)
  run in a ``lax.scan`` over >= 2 batch chunks: a while loop's result cannot be fused into its
  consumers; cost, one extra write pass over the output. Smaller ones (EfficientNet's 3x3, 5x5) go
  through ``lax.optimization_barrier``, which has the same effect without the loop. Measured, train
  steps on one XLA:CPU thread, interleaved: ConvNeXt-T (batch 32, 64 px) 4 % faster with the scan
  than with the barrier; EfficientNet-B0 (batch 32, 112 px) 5-10 % faster with the barrier.
  """
  if taps <= _BARRIER_MAX_TAPS:
    return jax.lax.optimization_barrier(fn(xpad))
  b = xpad.shape[0]
  n = _smallest_factor(b)
  if n == 1:
    return fn(xpad)
  _, ys = jax.lax.scan(lambda carry, xc: (carry, fn(xc)), None,
                       xpad.reshape(n, b // n, *xpad.shape[1:]))
  return ys.reshape(b, *ys.shape[2:])


def _conv(x: jax.Array, kernel: jax.Array, strides: Tuple[int, int], pads: _Pads,
          chunked: bool = True) -> jax.Array:
  """(1) by (strided) shifted sums over the useful taps, accumulated in float32 or wider."""
  b, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  sh, sw = strides
  ho, wo = _out_size(h, kh, pads[0], sh), _out_size(w, kw, pads[1], sw)
  ilo, ihi, pt, pb = _tap_range(kh, h, pads[0][0], ho, sh)
  jlo, jhi, pl, pr = _tap_range(kw, w, pads[1][0], wo, sw)
  if ihi == ilo or jhi == jlo:  # every output reads only padding
    return jnp.zeros((b, ho, wo, c), x.dtype)
  acc = _acc_dtype(x.dtype)
  k = kernel[ilo:ihi, jlo:jhi, 0, :].astype(acc)
  xpad = _pad(x, (pt, pb), (pl, pr))
  fn = lambda xp: _shift_sum(xp.astype(acc), k, ho, wo, sh, sw).astype(x.dtype)  # noqa: E731
  return _materialized(fn, xpad, kh * kw) if chunked else fn(xpad)


def _input_grad(g: jax.Array, kernel: jax.Array, x_shape: Tuple[int, ...],
                strides: Tuple[int, int], pads: _Pads) -> jax.Array:
  """Transpose of (1) in x, applied to the output gradient g.

  Stride 1: (1) on g padded the other way round, with the flipped kernel. Stride s: in padded
  coordinates ``t = s o + i``, the rows ``t = s u + a`` (phase a) receive ``sum_m g[u - m] k[a + s m]``,
  a stride-1 sum over g with the flipped sub-kernel ``k[a::s]``; the s_h * s_w phases are computed
  on g (per batch chunk), interleaved by a reshape and cropped to the input.
  """
  _, h, w, _ = x_shape
  kh, kw = kernel.shape[:2]
  (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
  if (sh, sw) == (1, 1):
    return _conv(g, kernel[::-1, ::-1], (1, 1), ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr)))
  ho, wo, c = g.shape[1:]
  u, v = -(-(h + pt) // sh), -(-(w + pl) // sw)  # phase sizes: s u >= h + p_t rows, s v columns

  def phases(gc):
    rows = []
    for a in range(sh):
      cols = []
      for cc in range(sw):
        sub = kernel[a::sh, cc::sw]
        ma, mc = sub.shape[:2]
        if ma == 0 or mc == 0:  # kernel smaller than the stride: this phase gets nothing
          cols.append(jnp.zeros((gc.shape[0], u, v, c), g.dtype))
        else:
          cols.append(_conv(gc, sub[::-1, ::-1], (1, 1), ((ma - 1, u - ho), (mc - 1, v - wo)),
                            chunked=False))
      rows.append(jnp.stack(cols, axis=3))              # (b, u, v, sw, C)
    full = jnp.stack(rows, axis=2)                       # (b, u, sh, v, sw, C)
    full = full.reshape(gc.shape[0], u * sh, v * sw, c)  # padded coordinates
    return full[:, pt:pt + h, pl:pl + w, :]

  return _materialized(phases, g, kh * kw)


def _rows_per_step(h: int, w: int) -> int:
  """Output rows per scan step of the kernel gradient: about _TAPS_PER_STEP windows per step.

  Measured on XLA:CPU: steps of ~50 windows are fastest; > ~120 windows per fused loop is several
  times slower, and so are single-row steps for some narrow shapes (e.g. 8x8, 12x12).
  """
  return max(1, min(h, -(-_TAPS_PER_STEP // w)))


def _kernel_grad(x: jax.Array, g: jax.Array, kh: int, kw: int, strides: Tuple[int, int] = (1, 1),
                 pads: _Pads | None = None) -> jax.Array:
  """dk[i, j, 0, c] = sum_{b,h,w} xpad[b, s_h h + i, s_w w + j, c] * g[b, h, w, c] (0 for unused taps).

  A ``lax.scan`` over blocks of ``r`` output rows adds ``r * W_out`` (B, kh', kw', C) windows of the
  padded input (s apart), each times one pixel of ``g`` broadcast over the window, into a
  (B, kh', kw', C) float32 accumulator, then sums over B. The scan keeps XLA from turning the window
  sum into many separate full-size reductions. The output rows are zero-padded to a multiple of
  ``r`` (zero rows of ``g`` add 0). ``pads`` defaults to 'SAME' at stride 1.
  """
  b, h, w, c = x.shape
  ho, wo = g.shape[1:3]
  sh, sw = strides
  if pads is None:
    pads = _normalize_padding("SAME", (h, w), (kh, kw), strides)
  ilo, ihi, pt, pb = _tap_range(kh, h, pads[0][0], ho, sh)
  jlo, jhi, pl, pr = _tap_range(kw, w, pads[1][0], wo, sw)
  eh, ew = ihi - ilo, jhi - jlo
  acc_t = _acc_dtype(x.dtype)
  if eh == 0 or ew == 0:
    return jnp.zeros((kh, kw, 1, c), acc_t)
  r = _rows_per_step(ho, wo)
  steps = -(-ho // r)
  extra = steps * r - ho
  xpad = _pad(x, (pt, pb + sh * extra), (pl, pr))
  gpad = _pad(g, (0, extra), (0, 0))

  def body(acc, row0):
    xr = jax.lax.dynamic_slice_in_dim(xpad, sh * row0, sh * (r - 1) + eh, axis=1).astype(acc_t)
    gr = jax.lax.dynamic_slice_in_dim(gpad, row0, r, axis=1).astype(acc_t)
    for u in range(r):
      for v in range(wo):
        acc = acc + xr[:, sh * u:sh * u + eh, sw * v:sw * v + ew, :] * gr[:, u:u + 1, v:v + 1, :]
    return acc, None

  acc0 = jnp.zeros((b, eh, ew, c), acc_t)
  acc, _ = jax.lax.scan(body, acc0, jnp.arange(0, steps * r, r))
  # Sum over the batch as explicit adds: one fused elementwise loop. (``acc.sum(0)`` becomes an
  # XLA:CPU library reduction that costs up to 50x more here.)
  dk = acc[0]
  for i in range(1, b):
    dk = dk + acc[i]
  dk = jnp.pad(dk, ((ilo, kh - ihi), (jlo, kw - jhi), (0, 0)))
  return dk[:, :, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift_conv(x: jax.Array, kernel: jax.Array, strides: Tuple[int, int], pads: _Pads) -> jax.Array:
  return _conv(x, kernel, strides, pads)


def _shift_conv_fwd(x, kernel, strides, pads):
  return _conv(x, kernel, strides, pads), (x, kernel)


def _shift_conv_bwd(strides, pads, res, g):
  x, kernel = res
  dx = _input_grad(g, kernel, x.shape, strides, pads).astype(x.dtype)
  dk = _kernel_grad(x, g, *kernel.shape[:2], strides, pads).astype(kernel.dtype)
  return dx, dk


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)


def depthwise_conv2d_shift(x: jax.Array, kernel: jax.Array, strides: Strides = 1,
                           padding: Padding = "SAME") -> jax.Array:
  """Same result as ``depthwise_conv2d_xla``, as fused shifted slices with a custom backward.

  Fast on XLA:CPU (see module docstring). Reverse-mode differentiable only.
  """
  s, pads = _check_inputs(x, kernel, strides, padding)
  return _shift_conv(x, kernel, s, pads)


def depthwise_conv2d_shift_ad(x: jax.Array, kernel: jax.Array, strides: Strides = 1,
                              padding: Padding = "SAME") -> jax.Array:
  """The ``'shift'`` forward with plain autodiff (slower backward; every autodiff mode works)."""
  s, pads = _check_inputs(x, kernel, strides, padding)
  return _conv(x, kernel, s, pads, chunked=False)  # autodiff through the chunk loop is slower still


IMPLEMENTATIONS: Dict[str, Callable[..., jax.Array]] = {
    "xla": depthwise_conv2d_xla,
    "shift": depthwise_conv2d_shift,
    "shift_ad": depthwise_conv2d_shift_ad,
}

# Recommended implementation on XLA:CPU (keep 'xla' on TPU/GPU).
CPU_DEFAULT_IMPL = "shift"


def default_impl(backend: str | None = None) -> str:
  """``'shift'`` on CPU, ``'xla'`` elsewhere; ``backend`` defaults to ``jax.default_backend()``."""
  backend = jax.default_backend() if backend is None else backend
  return CPU_DEFAULT_IMPL if backend == "cpu" else "xla"


def resolve_impl(impl: str) -> str:
  """Maps ``'auto'`` to ``default_impl()``; checks that ``impl`` names an implementation."""
  if impl == "auto":
    return default_impl()
  if impl not in IMPLEMENTATIONS:
    raise ValueError(
        f"Unknown depthwise impl {impl!r}; expected 'auto' or one of {sorted(IMPLEMENTATIONS)}")
  return impl


class DepthwiseConv(nn.Module):
  """Depthwise conv (1); ``impl`` picks the kernel implementation, the parameters are the same.

  ``impl`` is a key of ``IMPLEMENTATIONS`` or ``'auto'`` (``'shift'`` when tracing for the CPU
  backend, else ``'xla'``; decided by ``jax.default_backend()`` at trace time). ``strides`` and
  ``padding`` as in ``depthwise_conv2d_xla`` (default: stride 1, 'SAME').
  """

  kernel_size: Tuple[int, int] = (7, 7)
  strides: Strides = 1
  padding: Padding = "SAME"
  use_bias: bool = True
  impl: str = "xla"
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    impl = resolve_impl(self.impl)
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, 1, c), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = IMPLEMENTATIONS[impl](x, kernel, self.strides, self.padding)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
      y = y + bias.astype(y.dtype)
    return y
