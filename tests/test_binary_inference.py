"""Tests of the packed XNOR-popcount path (fer_jax.layers.binary_inference).

References: NumPy bit packing and +-1 integer matmul / loop convolution, lax.conv with XLA 'SAME'
zero padding, and the float-simulation layers QuantDense / QuantConv.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fer_jax.layers import binary_inference as bi
from fer_jax.layers.quant import QuantConv, QuantDense, magnitude_aware_sign


def _signs(a):
  return np.where(np.asarray(a) >= 0, 1, -1).astype(np.int64)


def _np_pack(x):
  """Reference packing along the last axis: np.packbits little-endian bytes viewed as uint32."""
  bits = np.asarray(x) >= 0
  n = bits.shape[-1]
  nw = -(-n // 32)
  bits = np.concatenate([bits, np.zeros(bits.shape[:-1] + (32 * nw - n,), bool)], axis=-1)
  return np.packbits(bits, axis=-1, bitorder="little").view("<u4")


def _same_pads(size, k, s, d):
  eff = (k - 1) * d + 1
  out = -(-size // s)
  total = max((out - 1) * s + eff - size, 0)
  return total // 2, total - total // 2


def _np_conv(xs, ws, strides, pads, pad_value, dilation):
  """Integer loop-over-taps conv of +-1 arrays, padded explicitly with pad_value."""
  xp = np.pad(xs, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=pad_value)
  kh, kw = ws.shape[:2]
  (sh, sw), (dh, dw) = strides, dilation
  ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
  wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
  out = np.zeros((xs.shape[0], ho, wo, ws.shape[3]), np.int64)
  for i, j in itertools.product(range(kh), range(kw)):
    patch = xp[:, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]
    out += np.einsum("bhwc,co->bhwo", patch, ws[i, j])
  return out


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 64, 100])
def test_pack_matches_numpy_and_round_trips(n):
  rng = np.random.default_rng(n)
  x = rng.standard_normal((3, 4, n)).astype(np.float32)
  x[0, 0, 0] = 0.0
  x[0, 1, 0] = -0.0  # both map to +1
  words = bi.pack_signs(x)
  assert words.dtype == jnp.uint32 and words.shape == (3, 4, -(-n // 32))
  np.testing.assert_array_equal(np.asarray(words), _np_pack(x))
  back = np.asarray(bi.unpack_signs(words, n))
  np.testing.assert_array_equal(back, _signs(x).astype(np.float32))
  assert back[0, 0, 0] == 1 and back[0, 1, 0] == 1
  # Any other axis: the same words, moved.
  w1 = bi.pack_signs(np.moveaxis(x, 2, 1), axis=1)
  np.testing.assert_array_equal(np.asarray(jnp.moveaxis(w1, 1, 2)), np.asarray(words))
  np.testing.assert_array_equal(np.asarray(bi.unpack_signs(w1, n, axis=1)),
                                np.moveaxis(back, 2, 1))


def test_pack_hand_example_and_errors():
  # +1 at positions 0, 2 and 33 of a length-35 vector: words (1 + 4, 2).
  x = -np.ones(35, np.float32)
  x[[0, 2, 33]] = 1.0
  np.testing.assert_array_equal(np.asarray(bi.pack_signs(x)), np.array([5, 2], np.uint32))
  with pytest.raises(ValueError, match="n=70"):
    bi.unpack_signs(bi.pack_signs(x), 70)
  with pytest.raises(ValueError, match="uint32"):
    bi.unpack_signs(np.zeros(2, np.int32), 35)
  with pytest.raises(ValueError, match="axis 3"):
    bi.pack_signs(x, axis=3)
  with pytest.raises(ValueError, match="bool"):
    bi.pack_signs(x > 0)


@pytest.mark.parametrize("method", bi.METHODS)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 5), (20, 100, 40), (9, 32 * 37 + 3, 24)])
def test_binary_dense_exact(method, m, k, n):
  rng = np.random.default_rng(k)
  x = rng.standard_normal((m, k)).astype(np.float32)
  w = rng.standard_normal((k, n)).astype(np.float32)
  ref = _signs(x) @ _signs(w)
  # Small tiles: several output tiles along both axes, padded rows / columns.
  f = jax.jit(lambda a, b: bi.binary_dense(a, b, k, method=method, tile_m=8, tile_n=16))
  out = f(bi.pack_signs(x), bi.pack_signs(w, axis=0))
  assert out.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out), ref)


def test_binary_dense_batch_dims_vmap_and_errors():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 70)).astype(np.float32)
  w = rng.standard_normal((70, 6)).astype(np.float32)
  xp, wp = bi.pack_signs(x), bi.pack_signs(w, axis=0)
  ref = np.einsum("abk,kn->abn", _signs(x), _signs(w))
  np.testing.assert_array_equal(np.asarray(bi.binary_dense(xp, wp, 70)), ref)
  vm = jax.vmap(lambda a: bi.binary_dense(a, wp, 70))(xp)
  np.testing.assert_array_equal(np.asarray(vm), ref)
  with pytest.raises(ValueError, match="n=97"):
    bi.binary_dense(xp, wp, 97)
  with pytest.raises(ValueError, match="disagree"):
    bi.binary_dense(xp[..., :2], wp, 64)
  with pytest.raises(ValueError, match="uint32"):
    bi.binary_dense(x, wp, 70)
  with pytest.raises(ValueError, match="unknown method"):
    bi.binary_dense(xp, wp, 70, method="fast")
  with pytest.raises(ValueError, match="tile_n must be"):
    bi.binary_dense(xp, wp, 70, tile_n=0)


_CONV_CASES = [
    # (H, W, C, O, k, strides, padding, dilation)
    (7, 6, 40, 5, 3, 1, "SAME", 1),
    (7, 6, 40, 5, 3, 2, "SAME", 1),
    (8, 8, 32, 4, 3, 2, "VALID", 1),
    (6, 7, 3, 6, 3, 1, "VALID", 1),
    (9, 8, 70, 3, (3, 2), (2, 1), "SAME", 1),
    (8, 9, 33, 4, 3, 1, "SAME", 2),
    (6, 6, 17, 5, 3, 1, ((2, 0), (1, 3)), 1),
]


@pytest.mark.parametrize("pad_value", [1, -1, 0])
@pytest.mark.parametrize("case", range(len(_CONV_CASES)))
def test_binary_conv2d_exact(case, pad_value):
  h, wd, c, o, k, s, padding, d = _CONV_CASES[case]
  kh, kw = (k, k) if isinstance(k, int) else k
  sh, sw = (s, s) if isinstance(s, int) else s
  rng = np.random.default_rng(case)
  x = rng.standard_normal((2, h, wd, c)).astype(np.float32)
  w = rng.standard_normal((kh, kw, c, o)).astype(np.float32)
  if padding == "SAME":
    pads = (_same_pads(h, kh, sh, d), _same_pads(wd, kw, sw, d))
  elif padding == "VALID":
    pads = ((0, 0), (0, 0))
  else:
    pads = padding
  ref = _np_conv(_signs(x), _signs(w), (sh, sw), pads, pad_value, (d, d))
  conv = jax.jit(lambda a, b: bi.binary_conv2d(
      bi.pack_signs(a), bi.pack_signs(b, axis=2), c, strides=s, padding=padding,
      pad_value=pad_value, dilation=d, tile_m=16, tile_n=4))
  out = conv(x, w)
  assert out.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out), ref)
  if pad_value == 0 and isinstance(padding, str):  # independent: XLA's own zero padding
    lx = lax.conv_general_dilated(_signs(x).astype(np.float32), _signs(w).astype(np.float32),
                                  (sh, sw), padding, rhs_dilation=(d, d),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(lx).astype(np.int64))


def test_binary_conv2d_errors():
  xp = bi.pack_signs(np.ones((1, 4, 4, 40), np.float32))
  wp = bi.pack_signs(np.ones((3, 3, 40, 2), np.float32), axis=2)
  with pytest.raises(ValueError, match="pad_value"):
    bi.binary_conv2d(xp, wp, 40, pad_value=0.5)
  with pytest.raises(ValueError, match="in_channels=65"):
    bi.binary_conv2d(xp, wp, 65)
  with pytest.raises(ValueError, match="channel words"):
    bi.binary_conv2d(xp[..., :1], wp, 32)
  with pytest.raises(ValueError, match="does not fit"):
    bi.binary_conv2d(xp[:, :2], wp, 40, padding="VALID")


def _perturb(variables, key):
  """Random nonzero bias so the bias path is exercised (init is zeros)."""
  p = dict(variables["params"])
  if "bias" in p:
    p["bias"] = jax.random.normal(key, p["bias"].shape)
  return {"params": p}


@pytest.mark.parametrize("scaling", [None, "mean_abs"])
@pytest.mark.parametrize("kq", ["ste_sign", "magnitude_aware_sign"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_quant_dense_conversion(scaling, kq, use_bias):
  kx, kp, kb = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (4, 3, 45))
  layer = QuantDense(10, use_bias=use_bias, input_quantizer="ste_sign", kernel_quantizer=kq,
                     kernel_scaling=scaling)
  variables = _perturb(layer.init(kp, x), kb)
  ref = np.asarray(layer.apply(variables, x))
  module, pv = bi.pack_quant_dense(layer, variables)
  out = np.asarray(jax.jit(module.apply)(pv, x))
  assert out.shape == ref.shape == (4, 3, 10)
  if scaling is None and kq == "ste_sign" and not use_bias:  # integer outputs: exact
    np.testing.assert_array_equal(out, ref)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  # Independent closed form of the float layer.
  w = np.asarray(variables["params"]["latent_kernel"], np.float64)
  y = (_signs(x) @ _signs(w)).astype(np.float64)
  alpha = np.abs(w).mean(0)
  y = y * (alpha if scaling else 1) * (alpha if kq == "magnitude_aware_sign" else 1)
  if use_bias:
    y = y + np.asarray(variables["params"]["bias"])
  np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
  sizes = bi.packed_bytes(pv)
  assert sizes["packed"] == 2 * 10 * 4  # ceil(45 / 32) words per output channel


@pytest.mark.parametrize("pad_values,scaling,strides,padding", [
    (1.0, None, 1, "SAME"), (-1.0, "mean_abs", 1, "SAME"), (0.0, None, 2, "SAME"),
    (0.0, "mean_abs", 1, "SAME"), (1.0, "mean_abs", 2, "SAME"), (-1.0, None, 2, "VALID"),
    (0.0, "mean_abs", 2, "VALID")])
def test_quant_conv_conversion(pad_values, scaling, strides, padding):
  kx, kp, kb = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (2, 9, 8, 36))
  layer = QuantConv(7, 3, strides=strides, padding=padding, pad_values=pad_values,
                    input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                    kernel_scaling=scaling, use_bias=scaling is not None)
  variables = _perturb(layer.init(kp, x), kb)
  ref = np.asarray(layer.apply(variables, x))
  module, pv = bi.pack_quant_conv(layer, variables)
  out = np.asarray(jax.jit(module.apply)(pv, x))
  assert out.shape == ref.shape
  if scaling is None:  # no scale, no bias: integer outputs, exact
    np.testing.assert_array_equal(out, ref)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-5)
  # 32x smaller weights: 2 words for 36 channels vs 36 floats, per (tap, out channel).
  assert bi.packed_bytes(pv)["packed"] * 18 == variables["params"]["latent_kernel"].nbytes


def test_conversion_rejects_non_binary_layers():
  x = jnp.ones((1, 4, 4, 8))
  for bad in (QuantDense(3, input_quantizer=None, kernel_quantizer="ste_sign"),
              QuantDense(3, input_quantizer="magnitude_aware_sign", kernel_quantizer="ste_sign")):
    v = bad.init(jax.random.key(0), x[0, 0])
    with pytest.raises(ValueError, match="input_quantizer"):
      bi.pack_quant_dense(bad, v)
  fl = QuantDense(3, input_quantizer="ste_sign", kernel_quantizer=None)
  with pytest.raises(ValueError, match="not sign-based"):
    bi.pack_quant_dense(fl, fl.init(jax.random.key(0), x[0, 0]))
  conv = QuantConv(3, 3, pad_values=0.5, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
  with pytest.raises(ValueError, match="pad_values"):
    bi.pack_quant_conv(conv, conv.init(jax.random.key(0), x))
  with pytest.raises(ValueError, match="expected a QuantConv"):
    bi.pack_quant_conv(fl, {})
  assert magnitude_aware_sign.scaled  # the one scaled kernel quantizer handled specially
