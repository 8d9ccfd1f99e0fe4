"""Depthwise 2-D convolution with a choice of implementation.

Parameters are laid out exactly as ``nn.Conv(features=C, feature_group_count=C)`` (kernel
``(kh, kw, 1, C)``, bias ``(C,)``), so checkpoints are interchangeable between implementations.

Every implementation computes the same function: a stride-1, 'SAME'-padded (XLA convention: for a
kernel of size k the input is padded by ``(k - 1) // 2`` before and ``k // 2`` after) depthwise
cross-correlation of an NHWC input,

  y[b, h, w, c] = sum_{i, j} x[b, h + i - p_h, w + j - p_w, c] * kernel[i, j, 0, c].   (1)

Implementations (``IMPLEMENTATIONS``; ``DepthwiseConv(impl='auto')`` picks ``'shift'`` on CPU and
``'xla'`` elsewhere):

* ``'xla'``: ``lax.conv_general_dilated(feature_group_count=C)``; differentiable in every mode, and
  the right choice on TPU/GPU, where XLA has fast grouped-conv kernels. On XLA:CPU (jax 0.10) the
  grouped convolution and, worse, its kernel gradient (a ``batch_group_count`` convolution) take a
  slow generic path: ~50 ms forward, ~135 ms forward+backward for one ConvNeXt-T stage-1 layer
  (batch 32, 64 px, 2 cores).
* ``'shift'`` (**default-worthy on CPU**; ~9 ms for the same layer, 12-400x faster than ``'xla'``
  forward+backward at the ConvNeXt stage shapes): (1) written as a sum of kh*kw shifted slices of
  the padded input times per-channel weights, which XLA fuses into one vectorised loop over the
  output. A ``jax.custom_vjp`` supplies a backward of the same kind: the input gradient is (1)
  applied to the output gradient padded the other way round, with the flipped kernel; the kernel
  gradient ``dk[i, j, c] = sum_{b,h,w} xpad[b, h + i, w + j, c] * g[b, h, w, c]`` is accumulated
  by a ``lax.scan`` over blocks of output rows whose body adds shifted (B, kh, kw, C) windows of
  ``xpad`` times single pixels of ``g`` -- a fused elementwise loop into a small (B, kh, kw, C)
  accumulator, so the kh*kw-times larger patch tensor is never materialised and XLA gets no
  reduction over a huge axis (XLA:CPU runs each of those as a separate memory-bound pass, 50-100x
  slower). The forward and input-gradient sums run in a scan over batch chunks so that XLA cannot
  re-fuse (recompute) them into each of their consumers. Taps that never overlap the input (H or
  W smaller than the kernel reach) are skipped. Low-precision (bf16) inputs are accumulated in
  float32 and the result cast back. Being a custom_vjp it supports reverse mode (grad/vjp, under
  jit and vmap), not forward mode (jvp/jacfwd); any kernel size, odd or even.
* ``'shift_ad'``: the forward of ``'shift'`` differentiated by plain JAX autodiff. Forward as fast
  as ``'shift'``; the backward is 5-15x slower than ``'shift'`` (XLA materialises every shifted
  slice for the kernel gradient) -- about as slow as ``'xla'`` at the larger spatial sizes. Use
  only where forward-mode autodiff is needed.

See ``benchmarks/depthwise_conv.py`` and ``benchmarks/README.md`` for measured times.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

# Target number of shifted windows unrolled into one scan step of the kernel gradient.
_TAPS_PER_STEP = 48


def _check_inputs(x: jax.Array, kernel: jax.Array) -> None:
  if x.ndim != 4:
    raise ValueError(f"depthwise conv expects x of shape (B, H, W, C), got shape {x.shape}")
  c = x.shape[-1]
  if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != c:
    raise ValueError(
        f"depthwise conv expects kernel of shape (kh, kw, 1, {c}) for x with {c} channels, "
        f"got kernel shape {kernel.shape}")
  if kernel.shape[0] < 1 or kernel.shape[1] < 1:
    raise ValueError(f"kernel spatial size must be >= 1, got {kernel.shape[:2]}")


def depthwise_conv2d_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'SAME'-padded stride-1 depthwise conv via ``lax.conv_general_dilated``.

  Args:
    x: (B, H, W, C) input.
    kernel: (kh, kw, 1, C) kernel.
  """
  _check_inputs(x, kernel)
  c = x.shape[-1]
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def _tap_range(k: int, n: int) -> Tuple[int, int, int, int]:
  """Taps of a size-k 'SAME' kernel that touch a length-n axis, and the padding they need.

  Tap ``i`` reads input index ``out + i - p`` with ``p = (k - 1) // 2``; it overlaps the input for
  some output index iff ``|i - p| <= n - 1``. Returns ``(lo, hi, pad_before, pad_after)`` such that
  taps ``lo <= i < hi`` are the useful ones and the input padded by ``(pad_before, pad_after)``
  satisfies ``xpad[out + i - lo] = x[out + i - p]``.
  """
  p = (k - 1) // 2
  lo, hi = max(0, p - (n - 1)), min(k, p + n)
  return lo, hi, p - lo, hi - 1 - p


def _acc_dtype(dtype) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _shift_sum(xpad: jax.Array, k: jax.Array, h: int, w: int) -> jax.Array:
  """sum_{i,j} xpad[:, i:i+h, j:j+w, :] * k[i, j]; xpad (B, h+kh-1, w+kw-1, C), k (kh, kw, C)."""
  kh, kw = k.shape[:2]
  acc = None
  for i in range(kh):
    for j in range(kw):
      t = xpad[:, i:i + h, j:j + w, :] * k[i, j]
      acc = t if acc is None else acc + t
  return acc


def _smallest_factor(n: int) -> int:
  """Smallest divisor > 1 of n (n itself if prime; 1 for n == 1)."""
  for d in range(2, int(n ** 0.5) + 1):
    if n % d == 0:
      return d
  return n


def _in_batch_chunks(fn: Callable[[jax.Array], jax.Array], xpad: jax.Array) -> jax.Array:
  """fn(xpad) computed by a ``lax.scan`` over >= 2 batch chunks (fn must act per example).

  XLA:CPU otherwise treats the kh*kw-term elementwise sum as cheap and re-fuses (recomputes) it
  into each of its consumers (in ConvNeXt: LayerNorm mean, variance and normalisation, and their
  gradients; 3-5 copies per block). A while loop's result cannot be fused into its consumers, so
  it is computed exactly once. Cost of the loop: one extra write pass over the output buffer.
  """
  b = xpad.shape[0]
  n = _smallest_factor(b)
  if n == 1:
    return fn(xpad)
  _, ys = jax.lax.scan(lambda carry, xc: (carry, fn(xc)), None,
                       xpad.reshape(n, b // n, *xpad.shape[1:]))
  return ys.reshape(b, *ys.shape[2:])


def _same_shift_conv(x: jax.Array, kernel: jax.Array, transpose: bool = False,
                     chunked: bool = True) -> jax.Array:
  """(1) by shifted sums; ``transpose`` gives its transpose in x (padding swapped, kernel flipped)."""
  b, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  ilo, ihi, pt, pb = _tap_range(kh, h)
  jlo, jhi, pl, pr = _tap_range(kw, w)
  acc = _acc_dtype(x.dtype)
  k = kernel[ilo:ihi, jlo:jhi, 0, :]
  if transpose:
    pt, pb, pl, pr = pb, pt, pr, pl
    k = k[::-1, ::-1]
  xpad = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  k = k.astype(acc)
  fn = lambda xp: _shift_sum(xp.astype(acc), k, h, w).astype(x.dtype)  # noqa: E731
  return _in_batch_chunks(fn, xpad) if chunked else fn(xpad)


def _forward(x: jax.Array, kernel: jax.Array, chunked: bool = True) -> jax.Array:
  return _same_shift_conv(x, kernel, chunked=chunked)


def _input_grad(g: jax.Array, kernel: jax.Array) -> jax.Array:
  """Transpose of (1) in x: (1) on g padded the other way round, with the flipped kernel."""
  return _same_shift_conv(g, kernel, transpose=True)


def _rows_per_step(h: int, w: int) -> int:
  """Output rows per scan step of the kernel gradient: about _TAPS_PER_STEP windows per step.

  Measured on XLA:CPU: steps of ~50 windows are fastest; > ~120 windows per fused loop is several
  times slower, and so are single-row steps for some narrow shapes (e.g. 8x8, 12x12).
  """
  return max(1, min(h, -(-_TAPS_PER_STEP // w)))


def _kernel_grad(x: jax.Array, g: jax.Array, kh: int, kw: int) -> jax.Array:
  """dk[i, j, 0, c] = sum_{b,h,w} xpad[b, h + i, w + j, c] * g[b, h, w, c] (zero for unused taps).

  A ``lax.scan`` over blocks of ``r`` output rows adds ``r * W`` shifted (B, kh', kw', C) windows of
  the padded input, each times one pixel of ``g`` broadcast over the window, into a (B, kh', kw', C)
  float32 accumulator, then sums over B. The scan keeps XLA from turning the window sum into many
  separate full-size reductions. H is zero-padded to a multiple of ``r`` (zero rows of ``g`` add 0).
  """
  b, h, w, c = x.shape
  ilo, ihi, pt, pb = _tap_range(kh, h)
  jlo, jhi, pl, pr = _tap_range(kw, w)
  eh, ew = ihi - ilo, jhi - jlo
  acc_t = _acc_dtype(x.dtype)
  r = _rows_per_step(h, w)
  steps = -(-h // r)
  extra = steps * r - h
  xpad = jnp.pad(x, ((0, 0), (pt, pb + extra), (pl, pr), (0, 0)))
  gpad = jnp.pad(g, ((0, 0), (0, extra), (0, 0), (0, 0))) if extra else g

  def body(acc, row0):
    xr = jax.lax.dynamic_slice_in_dim(xpad, row0, r + eh - 1, axis=1).astype(acc_t)
    gr = jax.lax.dynamic_slice_in_dim(gpad, row0, r, axis=1).astype(acc_t)
    for u in range(r):
      for v in range(w):
        acc = acc + xr[:, u:u + eh, v:v + ew, :] * gr[:, u:u + 1, v:v + 1, :]
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


@jax.custom_vjp
def _shift_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return _forward(x, kernel)


def _shift_conv_fwd(x, kernel):
  return _forward(x, kernel), (x, kernel)


def _shift_conv_bwd(res, g):
  x, kernel = res
  dx = _input_grad(g, kernel).astype(x.dtype)
  dk = _kernel_grad(x, g, *kernel.shape[:2]).astype(kernel.dtype)
  return dx, dk


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)


def depthwise_conv2d_shift(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Same result as ``depthwise_conv2d_xla``, as fused shifted slices with a custom backward.

  Fast on XLA:CPU (see module docstring). Reverse-mode differentiable only.
  """
  _check_inputs(x, kernel)
  return _shift_conv(x, kernel)


def depthwise_conv2d_shift_ad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The ``'shift'`` forward with plain autodiff (slower backward; every autodiff mode works)."""
  _check_inputs(x, kernel)
  return _forward(x, kernel, chunked=False)  # autodiff through the chunk loop is slower still


IMPLEMENTATIONS: Dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
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
  """Stride-1, 'SAME'-padded depthwise conv; ``impl`` picks the kernel implementation.

  ``impl`` is a key of ``IMPLEMENTATIONS`` or ``'auto'`` (``'shift'`` when tracing for the CPU
  backend, else ``'xla'``; decided by ``jax.default_backend()`` at trace time).
  """

  kernel_size: Tuple[int, int] = (7, 7)
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
    y = IMPLEMENTATIONS[impl](x, kernel)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
      y = y + bias.astype(y.dtype)
    return y
