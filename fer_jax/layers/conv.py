"""Convolutions with exact, faster implementations for XLA:CPU (the same parameters on every backend).

On XLA:CPU (jax 0.10) the kernel gradient of ``lax.conv_general_dilated`` is a convolution with batch and
feature dimensions swapped, 5-10x slower per FLOP than the forward, and for grouped convolutions (a
``batch_group_count`` convolution) seconds per ResNeXt layer. ``CONV_IMPLS``:

* ``'xla'``: ``conv_general_dilated(feature_group_count=groups)`` and XLA's gradients (GPU / TPU);
* ``'split'`` (the CPU default of ``impl='auto'``): each grouped convolution as a few dense convolutions
  with block-diagonal kernels (``chunked_conv``), and the kernel gradients of dense convolutions and of
  groups of >= 16 channels as one matmul per kernel tap (``kernel_grad``, a custom VJP: reverse mode only);
* ``'split_ad'``: the forward of 'split' differentiated by JAX (every autodiff mode);
* ``'dense'``: one convolution with the whole block-diagonal kernel.

``Conv2d`` is torch's bias-free ``Conv2d(k, stride, padding, groups)`` over any of them, and
``max_pool_3x3_s2`` the ResNet stem's max-pool (nine strided maxima off 'xla': a backward ~4x faster than
``reduce_window``'s). Measured in benchmarks/grouped_conv.py (benchmarks/README.md, "ResNeXt-50 32x4d:
grouped convolutions"); all impls equal torch's grouped ``conv2d`` to 1e-9 in float64, values and both
gradients (tests/test_resnext.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# He-normal fan-out initialisation of torchvision's ResNet (kaiming_normal_, mode='fan_out', relu).
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

_DN = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, kernel, stride, padding, groups=1):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                      dimension_numbers=_DN, feature_group_count=groups)


def block_diagonal_kernel(kernel: jax.Array, groups: int) -> jax.Array:
  """The dense (kh, kw, groups * cin_g, cout) kernel equal to the grouped (kh, kw, cin_g, cout) one:
  block g maps input channels [g cin_g, (g+1) cin_g) to output channels [g cout_g, (g+1) cout_g)."""
  kh, kw, ci, co = kernel.shape
  k5 = kernel.reshape(kh, kw, ci, groups, co // groups)
  eye = jnp.eye(groups, dtype=kernel.dtype)
  return jnp.einsum("hwigo,Gg->hwGigo", k5, eye).reshape(kh, kw, groups * ci, co)


def split_chunk(groups: int, cin_g: int, min_channels: int, max_chunks: int) -> int:
  """Groups per convolution of the 'split' impl: the smallest divisor m of ``groups`` with
  m * cin_g >= min_channels and groups / m <= max_chunks (``groups`` if none)."""
  return next(m for m in range(1, groups + 1) if groups % m == 0 and (
      (m * cin_g >= min_channels and groups // m <= max_chunks) or m == groups))


# 'split' merges groups into block-diagonal convolutions of at least this many input channels: on XLA:CPU
# a 4 -> 4 channel convolution is hardly faster than a 16 -> 16 one, and each one costs compile time
# (benchmarks/README.md, "ResNeXt-50 32x4d: grouped convolutions").
SPLIT_MIN_CHANNELS = 16
SPLIT_MAX_CHUNKS = 8
# 'split' kernel gradients: per-tap matmuls (``kernel_grad``) for dense convolutions and groups of at least
# this many input channels; XLA's gradient of the block-diagonal chunk convolutions for thinner groups,
# where the per-group matmuls (4 x 4 over 12544 pixels at ResNeXt-50's first stage) are 2x slower.
TAPS_MIN_GROUP_CHANNELS = 16


def chunked_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int,
                 min_channels: int = SPLIT_MIN_CHANNELS, max_chunks: int = SPLIT_MAX_CHUNKS) -> jax.Array:
  """A grouped convolution as dense XLA convolutions, one per chunk of m = ``split_chunk(...)``
  consecutive groups with the chunk's block-diagonal kernel (m times the multiply-adds; the off-diagonal
  products are exact zeros), outputs concatenated. ``min_channels`` >= the input channels: one dense
  convolution with the whole block-diagonal kernel."""
  if groups == 1:
    return _xla_conv(x, kernel, stride, padding)
  ci, co = kernel.shape[2], kernel.shape[3]
  m = split_chunk(groups, ci, min_channels, max_chunks)
  if m == groups:
    return _xla_conv(x, block_diagonal_kernel(kernel, groups), stride, padding)
  step_i, step_o = m * ci, m * (co // groups)
  outs = []
  for j in range(groups // m):
    k = kernel[..., j * step_o:(j + 1) * step_o]
    outs.append(_xla_conv(x[..., j * step_i:(j + 1) * step_i], block_diagonal_kernel(k, m) if m > 1 else k,
                          stride, padding))
  return jnp.concatenate(outs, axis=-1)


def kernel_grad(x: jax.Array, g: jax.Array, kernel_shape: Sequence[int], stride: int, padding: int,
                groups: int) -> jax.Array:
  """d loss / d kernel of a (grouped) convolution as one matmul per kernel tap:
  dk[i, j, :, g-block] = xpad[:, i::stride, j::stride, g-block]^T @ g[..., g-block] over all B * Ho * Wo
  output pixels (a batched matmul over the groups), accumulated in float32 at least.

  XLA:CPU computes the kernel gradient of ``conv_general_dilated`` as a convolution with batch and
  feature dimensions swapped, 5-10x slower per FLOP than its forward (grouped: a ``batch_group_count``
  convolution, seconds per ResNeXt layer); its matmuls run at forward speed.
  """
  kh, kw, ci, co = kernel_shape
  b, ho, wo, _ = g.shape
  n = b * ho * wo
  acc = jnp.promote_types(g.dtype, jnp.float32)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x
  # Group-major, so that each tap is a matmul batched over a leading group axis (of size 1 when dense).
  xp = jnp.moveaxis(xp.reshape(*xp.shape[:3], groups, ci), 3, 0)
  gm = jnp.moveaxis(g.reshape(n, groups, co // groups), 1, 0)
  dims = (((1,), (1,)), ((0,), (0,)))
  taps = []
  for i in range(kh):
    for j in range(kw):
      xs = xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      taps.append(jax.lax.dot_general(xs.reshape(xs.shape[0], n, ci), gm, dims, preferred_element_type=acc))
  dk = jnp.stack(taps).reshape(kh, kw, groups, ci, co // groups)  # (taps, G, ci, co_g)
  return jnp.moveaxis(dk, 2, 3).reshape(kh, kw, ci, co)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _cpu_conv(x, kernel, stride, padding, groups, min_channels, max_chunks, taps_min_group_channels):
  """``chunked_conv``; kernel gradient by ``kernel_grad``, or for groups of fewer than
  ``taps_min_group_channels`` input channels by XLA."""
  return chunked_conv(x, kernel, stride, padding, groups, min_channels, max_chunks)


def _cpu_conv_fwd(x, kernel, stride, padding, groups, min_channels, max_chunks, taps_min_group_channels):
  return chunked_conv(x, kernel, stride, padding, groups, min_channels, max_chunks), (x, kernel)


def _cpu_conv_bwd(stride, padding, groups, min_channels, max_chunks, taps_min_group_channels, res, g):
  x, kernel = res
  conv = functools.partial(chunked_conv, stride=stride, padding=padding, groups=groups,
                           min_channels=min_channels, max_chunks=max_chunks)
  _, vjp_x = jax.vjp(lambda x: conv(x, kernel), x)
  if groups > 1 and kernel.shape[2] < taps_min_group_channels:
    dk = jax.vjp(lambda k: conv(x, k), kernel)[1](g)[0]
  else:
    dk = kernel_grad(x, g, kernel.shape, stride, padding, groups)
  return vjp_x(g)[0], dk.astype(kernel.dtype)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv_xla(x, kernel, stride, padding, groups):
  """``lax.conv_general_dilated(feature_group_count=groups)`` and XLA's own gradients (GPU / TPU)."""
  return _xla_conv(x, kernel, stride, padding, groups)


def conv_split(x, kernel, stride, padding, groups):
  """``chunked_conv`` (chunks of >= ``SPLIT_MIN_CHANNELS`` input channels, at most ``SPLIT_MAX_CHUNKS``);
  input gradient by XLA, kernel gradient by ``kernel_grad`` (dense convolutions and groups of >=
  ``TAPS_MIN_GROUP_CHANNELS`` channels) or XLA (custom VJP: reverse mode only)."""
  return _cpu_conv(x, kernel, stride, padding, groups, SPLIT_MIN_CHANNELS, SPLIT_MAX_CHUNKS,
                   TAPS_MIN_GROUP_CHANNELS)


def conv_dense(x, kernel, stride, padding, groups):
  """One dense convolution with the whole block-diagonal kernel (``groups`` times the multiply-adds of
  the forward and input gradient); kernel gradient by ``kernel_grad``."""
  return _cpu_conv(x, kernel, stride, padding, groups, x.shape[-1] + 1, 1, 0)


def conv_split_ad(x, kernel, stride, padding, groups):
  """The forward of 'split' differentiated by JAX (XLA's convolution gradients; every autodiff mode)."""
  return chunked_conv(x, kernel, stride, padding, groups)


CONV_IMPLS = {"xla": conv_xla, "split": conv_split, "dense": conv_dense, "split_ad": conv_split_ad}
CPU_DEFAULT_IMPL = "split"


def resolve_conv_impl(impl: str, backend: Optional[str] = None) -> str:
  """``'auto'`` -> ``CPU_DEFAULT_IMPL`` on the CPU backend, ``'xla'`` elsewhere; checks the name."""
  if impl == "auto":
    backend = jax.default_backend() if backend is None else backend
    return CPU_DEFAULT_IMPL if backend == "cpu" else "xla"
  if impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv impl {impl!r}; expected 'auto' or one of {sorted(CONV_IMPLS)}")
  return impl


class Conv2d(nn.Module):
  """torch's bias-free ``Conv2d(k, stride, padding, groups)`` (symmetric zero padding); kernel
  (k, k, cin / groups, features) as ``nn.Conv(feature_group_count=groups)``, float32. ``impl``: a key of
  ``CONV_IMPLS`` or 'auto' (decided at trace time by ``jax.default_backend()``)."""

  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 0
  groups: int = 1
  impl: str = "auto"
  dtype: Any = None
  kernel_init: Callable[..., jax.Array] = he_fan_out

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if c % self.groups or self.features % self.groups:
      raise ValueError(f"Conv2d: {c} input and {self.features} output channels are not both divisible by "
                       f"groups={self.groups}")
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, c // self.groups, self.features), jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return CONV_IMPLS[resolve_conv_impl(self.impl)](x, kernel, self.stride, self.padding, self.groups)


def max_pool_3x3_s2(x: jax.Array, impl: str) -> jax.Array:
  """torch's ``MaxPool2d(3, 2, padding=1)``. Off 'xla', the maximum of the nine strided taps: same
  values, and a backward ~4x faster on XLA:CPU than ``reduce_window``'s ``select_and_scatter``."""
  if resolve_conv_impl(impl) == "xla":
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
  ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  y = None
  for i in range(3):
    for j in range(3):
      t = xp[:, i:i + 2 * (ho - 1) + 1:2, j:j + 2 * (wo - 1) + 1:2, :]
      y = t if y is None else jnp.maximum(y, t)
  return y
