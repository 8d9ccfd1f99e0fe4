"""A binarized LSTM: +-1 inputs, +-1 recurrent state and +-1 kernels in the four gates' products, trained with
straight-through estimators and run packed as XNOR-popcount products.

Gates (i, f, g, o, PyTorch order), per frame t, with ``q`` a sign quantizer (``fer_jax.layers.quant``,
``sign(0) = +1``) and latent kernels ``W_x`` (D, 4H), ``W_h`` (H, 4H)::

    z_t = a_x * (q(x_t) @ q(W_x)) + a_h * (q(h_{t-1}) @ q(W_h)) + b          (a_x, a_h, b: (4H,) float)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),   h_t = sigmoid(o) * tanh(c_t),   h_0 = c_0 = 0

The two products are the ones that cost (4H (D + H) multiply-adds per frame); they become XNOR-popcounts of
packed words (``binary_inference.binary_dense``, exact integers), while the per-gate scales (XNOR-Net's
alpha, Rastegari et al. 2016, here learned, initialised to 1 / sqrt(fan-in) so that z starts with unit
variance), the bias, the gate nonlinearities and the cell state stay float: 4H sigmoid / tanh per frame.
Binarizing the state as ``q(h)`` (not ``h``) follows the binarized LSTMs of Ardakani et al. (ICLR 2019) and
Liu et al. (EMNLP 2018). ``q(h_0) = q(0) = +1``, the same on both paths. The STE of ``q`` passes the
gradient of h unchanged (|h| < 1), so back-propagation through time is that of the float LSTM with the
products' inputs replaced by their signs.

``BinaryLSTM(packed=False)`` is the float simulation used in training; ``pack_binary_lstm`` turns its
variables into ``BinaryLSTM(packed=True)`` ones whose outputs equal the simulation (the products are exact
integers on both paths, and the float work is the same code).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.layers import binary_inference as bi
from fer_jax.layers import quant

__all__ = ["BinaryLSTM", "pack_binary_lstm"]

lecun_init = nn.initializers.lecun_normal()


class _SignKernel(nn.Module):
  """A latent kernel (``quant.LATENT_KERNEL_NAME``, clipped by the optimizers) read through ``quantizer``."""

  shape: Any
  quantizer: str

  @nn.compact
  def __call__(self) -> jax.Array:
    return quant.get_quantizer(self.quantizer)(self.param(quant.LATENT_KERNEL_NAME, lecun_init, self.shape))


class _PackedKernel(nn.Module):
  """Packed sign bits of a kernel (``pack_signs(W, axis=0)``), filled by ``pack_binary_lstm``."""

  shape: Any

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param("kernel_packed", nn.initializers.zeros, self.shape, jnp.uint32)


class BinaryLSTM(nn.Module):
  """x (B, T, D) real -> hidden states (B, T, H), the equations of the module docstring.

  Attributes:
    hidden: H.
    quantizer: a binary quantizer of ``fer_jax.layers.quant`` (inputs, state and kernels).
    packed: XNOR-popcount inference (variables from ``pack_binary_lstm``).
    method: the packed product's formulation (``binary_inference.METHODS``).
  """

  hidden: int
  quantizer: str = "ste_sign"
  packed: bool = False
  method: str = "tiled"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 3:
      raise ValueError(f"BinaryLSTM expects x (B, T, D), got shape {x.shape}")
    if not quant.is_binary_quantizer(self.quantizer):
      raise ValueError(f"BinaryLSTM quantizer={self.quantizer!r} does not output +-1")
    d, h4 = x.shape[-1], 4 * self.hidden
    x = x.astype(jnp.float32)
    a_x = self.param("scale_x", nn.initializers.constant(1 / math.sqrt(d)), (h4,))
    a_h = self.param("scale_h", nn.initializers.constant(1 / math.sqrt(self.hidden)), (h4,))
    b = self.param("bias", nn.initializers.zeros, (h4,))
    if self.packed:
      wx = _PackedKernel((-(-d // bi.WORD_BITS), h4), name="input")()
      wh = _PackedKernel((-(-self.hidden // bi.WORD_BITS), h4), name="recurrent")()
      x_dot = bi.binary_dense(bi.pack_signs(x), wx, d, method=self.method).astype(jnp.float32)

      def h_dot(h):
        return bi.binary_dense(bi.pack_signs(h), wh, self.hidden, method=self.method).astype(jnp.float32)
    else:
      q = quant.get_quantizer(self.quantizer)
      wx = _SignKernel((d, h4), self.quantizer, name="input")()
      wh = _SignKernel((self.hidden, h4), self.quantizer, name="recurrent")()
      x_dot = q(x) @ wx

      def h_dot(h):
        return q(h) @ wh

    zx = a_x * x_dot + b

    def step(carry, zx_t):
      h, c = carry
      z = zx_t + a_h * h_dot(h)
      i, f, g, o = jnp.split(z, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    zero = jnp.zeros(x.shape[:1] + (self.hidden,), jnp.float32)
    _, hs = jax.lax.scan(step, (zero, zero), jnp.swapaxes(zx, 0, 1))
    return jnp.swapaxes(hs, 0, 1)


def pack_binary_lstm(params: Mapping[str, Any]) -> Dict[str, Any]:
  """The params of a trained ``BinaryLSTM`` -> those of ``BinaryLSTM(packed=True)`` (1 bit per weight)."""
  missing = [k for k in ("input", "recurrent", "scale_x", "scale_h", "bias") if k not in params]
  if missing:
    raise ValueError(f"pack_binary_lstm: the params have no {missing}; they hold {sorted(params)}")
  out = {k: params[k] for k in ("scale_x", "scale_h", "bias")}
  for name in ("input", "recurrent"):
    out[name] = {"kernel_packed": bi.pack_signs(params[name][quant.LATENT_KERNEL_NAME], axis=0)}
  return out
