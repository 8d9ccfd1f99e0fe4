"""Every depthwise implementation == lax.conv_general_dilated(feature_group_count=C) == NumPy loops.

Checks the forward and both gradients (input and kernel) against the XLA baseline and against a
direct-loop NumPy reference of (1) in ``fer_jax/layers/depthwise.py``, for odd and even kernels,
spatial sizes smaller than the kernel, bf16 inputs, and under jit, vmap and vmap-of-grad.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.layers import depthwise
from fer_jax.layers.depthwise import IMPLEMENTATIONS, DepthwiseConv

IMPLS = sorted(IMPLEMENTATIONS)
FAST_IMPLS = [n for n in IMPLS if n != "xla"]


def _taps(x_shape, k_shape):
  """Every (output pixel, tap, input pixel) of a 'SAME' conv, as in XLA (ph = (kh-1)//2)."""
  _, h, w, _ = x_shape
  kh, kw = k_shape[:2]
  ph, pw = (kh - 1) // 2, (kw - 1) // 2
  for oh in range(h):
    for ow in range(w):
      for i in range(kh):
        for j in range(kw):
          ih, iw = oh + i - ph, ow + j - pw
          if 0 <= ih < h and 0 <= iw < w:
            yield oh, ow, i, j, ih, iw


def np_depthwise(x, k):
  """y[b,h,w,c] = sum_ij x[b, h+i-ph, w+j-pw, c] k[i,j,0,c] by direct loops."""
  y = np.zeros(x.shape, np.float64)
  for oh, ow, i, j, ih, iw in _taps(x.shape, k.shape):
    y[:, oh, ow, :] += x[:, ih, iw, :] * k[i, j, 0, :]
  return y


def np_depthwise_grads(x, k, g):
  """(dL/dx, dL/dk) for L = sum(y * g), by the same direct loops."""
  dx = np.zeros(x.shape, np.float64)
  dk = np.zeros(k.shape, np.float64)
  for oh, ow, i, j, ih, iw in _taps(x.shape, k.shape):
    dx[:, ih, iw, :] += g[:, oh, ow, :] * k[i, j, 0, :]
    dk[i, j, 0, :] += np.sum(x[:, ih, iw, :] * g[:, oh, ow, :], axis=0)
  return dx, dk


def _data(shape, ksize, dtype=jnp.float32, seed=0):
  kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, shape, jnp.float32).astype(dtype)
  k = jax.random.normal(kk, (*ksize, 1, shape[-1]), jnp.float32).astype(dtype)
  g = jax.random.normal(kg, shape, jnp.float32).astype(dtype)
  return x, k, g


def _close(actual, expected, rtol):
  """Elementwise |a - e| <= rtol * (|e| + max|e|): relative, with the scale of the whole tensor."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def _vjp(fn, x, k, g):
  y, pullback = jax.vjp(fn, x, k)
  dx, dk = pullback(g)
  return y, dx, dk


def test_numpy_reference_matches_hand_computed_case():
  # 1 channel, 3x3 ones kernel on a 3x3 ramp: each output is the sum of its in-bounds neighbours.
  x = np.arange(9, dtype=np.float64).reshape(1, 3, 3, 1)
  k = np.ones((3, 3, 1, 1))
  expected = np.array([[8, 15, 12], [21, 36, 27], [20, 33, 24]], np.float64)
  np.testing.assert_array_equal(np_depthwise(x, k)[0, :, :, 0], expected)
  # Kernel gradient of sum(y): tap (i,j) sums the inputs it ever reads.
  _, dk = np_depthwise_grads(x, k, np.ones_like(x))
  np.testing.assert_array_equal(dk[:, :, 0, 0], [[8, 15, 12], [21, 36, 27], [20, 33, 24]])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,ksize", [
    ((2, 5, 6, 3), (7, 7)),   # H, W smaller than the 7x7 kernel
    ((1, 2, 3, 4), (7, 7)),   # most taps never touch the input
    ((1, 1, 1, 2), (7, 7)),
    ((2, 6, 5, 3), (3, 5)),
    ((2, 4, 5, 2), (4, 2)),   # even kernels: XLA pads (k-1)//2 before, k//2 after
    ((1, 7, 3, 2), (1, 1)),
])
def test_tiny_cases_match_numpy_loops(impl, shape, ksize):
  x, k, g = _data(shape, ksize)
  y, dx, dk = _vjp(jax.jit(IMPLEMENTATIONS[impl]), x, k, g)
  xn, kn, gn = (np.asarray(a, np.float64) for a in (x, k, g))
  dx_ref, dk_ref = np_depthwise_grads(xn, kn, gn)
  _close(y, np_depthwise(xn, kn), 1e-5)
  _close(dx, dx_ref, 1e-5)
  _close(dk, dk_ref, 1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("shape,ksize", [
    ((2, 16, 16, 16), (7, 7)),   # ConvNeXt stage-1 like
    ((3, 12, 12, 8), (7, 7)),    # several kernel-gradient scan steps
    ((2, 13, 10, 8), (7, 7)),    # H not a multiple of the rows per scan step (padded)
    ((2, 3, 3, 16), (7, 7)),
    ((2, 8, 6, 4), (6, 4)),
])
def test_matches_xla_forward_and_gradients(impl, shape, ksize):
  x, k, g = _data(shape, ksize, seed=1)
  y_ref, dx_ref, dk_ref = _vjp(depthwise.depthwise_conv2d_xla, x, k, g)
  y, dx, dk = _vjp(jax.jit(IMPLEMENTATIONS[impl]), x, k, g)
  assert y.dtype == dx.dtype == dk.dtype == jnp.float32
  _close(y, y_ref, 1e-5)
  _close(dx, dx_ref, 1e-5)
  _close(dk, dk_ref, 1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_grad_of_scalar_loss_under_jit(impl):
  x, k, _ = _data((2, 6, 6, 4), (7, 7), seed=2)
  w = jnp.linspace(-1.0, 1.0, 6 * 6 * 4).reshape(6, 6, 4)

  def loss(x, k, fn):
    return jnp.sum(jnp.tanh(fn(x, k)) * w)

  ref = jax.grad(loss, argnums=(0, 1))(x, k, depthwise.depthwise_conv2d_xla)
  got = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(x, k, IMPLEMENTATIONS[impl])
  _close(got[0], ref[0], 1e-5)
  _close(got[1], ref[1], 1e-5)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_vmap_and_per_example_gradients(impl):
  fn = IMPLEMENTATIONS[impl]
  kx, kk = jax.random.split(jax.random.key(3))
  xs = jax.random.normal(kx, (3, 2, 5, 4, 6))     # 3 independent batches
  ks = jax.random.normal(kk, (3, 7, 7, 1, 6))     # ... each with its own kernel
  ys = jax.jit(jax.vmap(fn))(xs, ks)
  for n in range(3):
    _close(ys[n], depthwise.depthwise_conv2d_xla(xs[n], ks[n]), 1e-5)
  # Shared kernel (in_axes=(0, None)).
  ys = jax.jit(jax.vmap(fn, in_axes=(0, None)))(xs, ks[0])
  _close(ys[1], depthwise.depthwise_conv2d_xla(xs[1], ks[0]), 1e-5)

  # vmap of grad: per-example kernel gradients, each against its own XLA gradient.
  def loss(k, x, fn):
    return jnp.sum(fn(x[None], k) ** 2)

  x1 = xs[0]  # (2, 5, 4, 6): two examples
  per_ex = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, None)), static_argnums=2)(
      ks[0], x1, fn)
  for n in range(2):
    _close(per_ex[n], jax.grad(loss)(ks[0], x1[n], depthwise.depthwise_conv2d_xla), 1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_inputs(impl):
  x, k, g = _data((2, 8, 8, 16), (7, 7), dtype=jnp.bfloat16, seed=4)
  y, dx, dk = _vjp(jax.jit(IMPLEMENTATIONS[impl]), x, k, g)
  assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16
  # Reference: the same bf16-rounded numbers in float64.
  xn, kn, gn = (np.asarray(a.astype(jnp.float32), np.float64) for a in (x, k, g))
  dx_ref, dk_ref = np_depthwise_grads(xn, kn, gn)
  # bf16 has an 8-bit mantissa: one output rounding is <= 2^-8 relative; accumulation is float32
  # in the fast impls (XLA's own bf16 conv may round more, hence the looser bound).
  _close(y, np_depthwise(xn, kn), 2e-2)
  _close(dx, dx_ref, 2e-2)
  _close(dk, dk_ref, 2e-2)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_bfloat16_fast_impls_accumulate_in_float32(impl):
  # 48 taps of 2^-9 plus one tap of 1: a bf16 running sum would stay at 1 (2^-9 < half-ulp of 1
  # is lost each time); float32 accumulation gives 1 + 48 * 2^-9 = 1.09375 (exact in bf16).
  x = jnp.full((1, 7, 7, 1), 2.0 ** -9, jnp.bfloat16).at[0, 3, 3, 0].set(1.0)
  k = jnp.ones((7, 7, 1, 1), jnp.bfloat16)
  y = IMPLEMENTATIONS[impl](x, k)
  assert float(y[0, 3, 3, 0]) == pytest.approx(1.09375)


def test_depthwise_module_param_layout_and_impls_agree():
  x = jax.random.normal(jax.random.key(5), (2, 9, 9, 12))
  base = DepthwiseConv(kernel_size=(7, 7), impl="xla",
                       bias_init=nn.initializers.normal(1.0))
  variables = base.init(jax.random.key(6), x)
  params = variables["params"]
  assert params["kernel"].shape == (7, 7, 1, 12) and params["bias"].shape == (12,)
  # Same layout as nn.Conv(features=C, feature_group_count=C): identical outputs with its params.
  conv = nn.Conv(12, (7, 7), padding="SAME", feature_group_count=12)
  y_conv = conv.apply({"params": params}, x)
  g_ref = jax.jit(jax.grad(lambda p: jnp.sum(conv.apply({"params": p}, x) ** 2)))(params)
  for impl in IMPLS:
    m = DepthwiseConv(kernel_size=(7, 7), impl=impl)
    y = jax.jit(m.apply)(variables, x)
    _close(y, y_conv, 1e-5)
    g = jax.jit(jax.grad(lambda p, m=m: jnp.sum(m.apply({"params": p}, x) ** 2)))(params)
    _close(g["kernel"], g_ref["kernel"], 1e-5)
    _close(g["bias"], g_ref["bias"], 1e-5)


def test_module_bf16_compute_dtype_keeps_float32_params():
  x = jax.random.normal(jax.random.key(7), (2, 6, 6, 8))
  m = DepthwiseConv(impl="shift", dtype=jnp.bfloat16)
  variables = m.init(jax.random.key(8), x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  y = m.apply(variables, x)
  assert y.dtype == jnp.bfloat16
  y_ref = DepthwiseConv(impl="xla").apply(variables, x)
  _close(y, y_ref, 2e-2)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match=r"Unknown depthwise impl 'fft'; expected 'auto' or one of"):
    DepthwiseConv(impl="fft").init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))
  for fn in IMPLEMENTATIONS.values():
    with pytest.raises(ValueError, match=r"x of shape \(B, H, W, C\), got shape \(4, 4, 2\)"):
      fn(jnp.ones((4, 4, 2)), jnp.ones((7, 7, 1, 2)))
    with pytest.raises(ValueError, match=r"kernel of shape \(kh, kw, 1, 2\).*\(7, 7, 2, 2\)"):
      fn(jnp.ones((1, 4, 4, 2)), jnp.ones((7, 7, 2, 2)))


def test_auto_impl_resolution():
  assert depthwise.default_impl("cpu") == "shift"
  assert depthwise.default_impl("tpu") == "xla" and depthwise.default_impl("gpu") == "xla"
  assert depthwise.resolve_impl("auto") == depthwise.default_impl(jax.default_backend())
  assert depthwise.resolve_impl("xla") == "xla"
  x = jax.random.normal(jax.random.key(10), (1, 5, 5, 3))
  variables = DepthwiseConv(impl="xla").init(jax.random.key(11), x)
  _close(DepthwiseConv(impl="auto").apply(variables, x),
         DepthwiseConv(impl="xla").apply(variables, x), 1e-5)


def test_tap_range_and_rows_per_step():
  # 7-tap kernel on length 2: only offsets -1, 0, 1 (taps 2..4) can touch the input.
  assert depthwise._tap_range(7, 2) == (2, 5, 1, 1)
  assert depthwise._tap_range(7, 16) == (0, 7, 3, 3)
  assert depthwise._tap_range(4, 16) == (0, 4, 1, 2)   # XLA 'SAME': 1 before, 2 after
  assert depthwise._tap_range(4, 1) == (1, 2, 0, 0)
  # Rows per kernel-gradient scan step: ~_TAPS_PER_STEP windows, never more rows than H.
  for h, w in [(16, 16), (24, 24), (12, 12), (3, 3), (56, 56), (1, 200)]:
    r = depthwise._rows_per_step(h, w)
    assert 1 <= r <= h
    assert r == h or r * w >= depthwise._TAPS_PER_STEP
    assert r == 1 or (r - 1) * w < depthwise._TAPS_PER_STEP


def test_convnext_gradients_identical_across_impls():
  """Integration: a small ConvNeXt's loss gradients do not depend on the depthwise impl."""
  from fer_jax.registry import get_model  # pylint: disable=import-outside-toplevel

  x = jax.random.uniform(jax.random.key(9), (2, 16, 16, 3))
  labels = jnp.array([1, 4])

  def make(impl):
    return get_model("convnext", num_classes=5, depths=(1, 1), dims=(8, 16), stem_patch_size=2,
                     layer_scale_init_value=0.5, depthwise_impl=impl)

  params = jax.jit(make("xla").init)(jax.random.key(0), x)["params"]

  def grads(impl):
    model = make(impl)

    def loss(p):
      logits = model.apply({"params": p}, x, train=False)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return jax.jit(jax.grad(loss))(params)

  ref = grads("xla")
  got = grads("shift")  # 'shift_ad' is autodiff of the same forward (checked above), slow to compile
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(ref)
  for r, g in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
    _close(g, r, 1e-4)


# ----------------------------------------------------------------------------- strides and padding
# EfficientNet's depthwise convs: 3x3 / 5x5, stride 1 or 2, symmetric padding k // 2 (timm's non-tf_
# models). The references below index (1) of the module docstring directly.


def np_depthwise_strided(x, k, s, pads):
  """(y, taps) of (1) by direct loops; taps = every (oh, ow, i, j, ih, iw) that reads the input."""
  (sh, sw), ((pt, pb), (pl, pr)) = s, pads
  _, h, w, _ = x.shape
  kh, kw = k.shape[:2]
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  taps = [(oh, ow, i, j, sh * oh + i - pt, sw * ow + j - pl)
          for oh in range(ho) for ow in range(wo) for i in range(kh) for j in range(kw)
          if 0 <= sh * oh + i - pt < h and 0 <= sw * ow + j - pl < w]
  y = np.zeros((x.shape[0], ho, wo, x.shape[3]), np.float64)
  for oh, ow, i, j, ih, iw in taps:
    y[:, oh, ow, :] += x[:, ih, iw, :] * k[i, j, 0, :]
  return y, taps


def np_depthwise_strided_grads(x, k, g, taps):
  dx, dk = np.zeros(x.shape, np.float64), np.zeros(k.shape, np.float64)
  for oh, ow, i, j, ih, iw in taps:
    dx[:, ih, iw, :] += g[:, oh, ow, :] * k[i, j, 0, :]
    dk[i, j, 0, :] += np.sum(x[:, ih, iw, :] * g[:, oh, ow, :], axis=0)
  return dx, dk


def test_strided_numpy_reference_hand_computed():
  # 4x4 ramp, 3x3 ones kernel, stride 2, padding 1: outputs centred on (0,0), (0,2), (2,0), (2,2).
  x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
  y, _ = np_depthwise_strided(x, np.ones((3, 3, 1, 1)), (2, 2), ((1, 1), (1, 1)))
  np.testing.assert_array_equal(y[0, :, :, 0], [[0 + 1 + 4 + 5, 1 + 2 + 3 + 5 + 6 + 7],
                                                [4 + 5 + 8 + 9 + 12 + 13, 5 + 6 + 7 + 9 + 10 + 11 + 13 + 14 + 15]])


def test_padding_normalisation():
  norm = depthwise._normalize_padding
  # XLA 'SAME' at stride 2 on an even size pads (0, 1); timm's EfficientNet pads (1, 1) (padding=1).
  assert norm("SAME", (56, 56), (3, 3), (2, 2)) == ((0, 1), (0, 1))
  assert norm("SAME", (7, 8), (5, 5), (2, 2)) == ((2, 2), (1, 2))
  assert norm("same", (16, 16), (7, 7), (1, 1)) == ((3, 3), (3, 3))
  assert norm(2, (9, 9), (5, 5), (2, 2)) == ((2, 2), (2, 2))
  assert norm("VALID", (9, 9), (5, 5), (1, 1)) == ((0, 0), (0, 0))
  assert norm(((0, 2), (1, 0)), (9, 9), (5, 5), (1, 1)) == ((0, 2), (1, 0))
  # Strided tap ranges: stride-2 outputs 0..2 of a length-5 input, pad 1: every tap reads the input;
  # on a length-1 input with 2 outputs, tap 0 only ever reads padding.
  assert depthwise._tap_range(3, 5, 1, 3, 2) == (0, 3, 1, 1)
  assert depthwise._tap_range(3, 1, 1, 1, 2) == (1, 2, 0, 0)
  assert depthwise._tap_range(1, 1, 1, 2, 2) == (0, 0, 1, 0)  # no useful tap


STRIDED_CASES = [
    # (x shape, kernel, strides, padding)
    ((2, 8, 8, 3), (3, 3), 2, 1),              # EfficientNet k3 / 2, even size
    ((2, 7, 9, 2), (5, 5), 2, 2),              # k5 / 2, odd sizes
    ((1, 4, 4, 3), (5, 5), 2, 2),              # every output reaches into the padding
    ((1, 1, 1, 2), (3, 3), 2, 1),              # 1x1 input
    ((2, 6, 5, 2), (3, 3), 2, "SAME"),         # XLA 'SAME' at stride 2 (asymmetric)
    ((2, 7, 7, 2), (3, 5), (2, 1), ((0, 2), (1, 3))),
    ((1, 9, 8, 2), (5, 5), 3, 2),              # stride 3
    ((2, 6, 6, 2), (4, 2), 2, "VALID"),        # even kernel
    ((1, 5, 5, 2), (1, 1), 2, 0),              # kernel smaller than the stride
    ((2, 6, 7, 2), (3, 3), 1, 1),              # stride 1 with explicit padding
    ((1, 5, 6, 2), (3, 3), 1, ((2, 0), (0, 1))),
]


@pytest.mark.parametrize("impl,shape,ksize,strides,padding",
                         [(impl, *case) for impl in ("xla", "shift") for case in STRIDED_CASES]
                         + [("shift_ad", *STRIDED_CASES[i]) for i in (1, 5, 6)])
def test_strided_and_padded_match_numpy_loops(impl, shape, ksize, strides, padding):
  x, k, _ = _data(shape, ksize, seed=11)
  s, pads = depthwise._check_inputs(x, k, strides, padding)
  xn, kn = np.asarray(x, np.float64), np.asarray(k, np.float64)
  y_ref, taps = np_depthwise_strided(xn, kn, s, pads)
  g = jax.random.normal(jax.random.key(12), y_ref.shape)
  fn = jax.jit(lambda x, k: IMPLEMENTATIONS[impl](x, k, strides, padding))
  y, dx, dk = _vjp(fn, x, k, g)
  dx_ref, dk_ref = np_depthwise_strided_grads(xn, kn, np.asarray(g, np.float64), taps)
  assert y.shape == y_ref.shape
  _close(y, y_ref, 1e-5)
  _close(dx, dx_ref, 1e-5)
  _close(dk, dk_ref, 1e-5)


@pytest.mark.parametrize("shape,ksize,strides,padding", [
    ((4, 16, 16, 8), (3, 3), 2, 1),   # several kernel-gradient scan steps, batch chunks
    ((2, 14, 14, 16), (5, 5), 2, 2),
    ((3, 11, 13, 8), (5, 5), 2, 2),   # output rows not a multiple of the rows per scan step
])
def test_strided_shift_matches_xla_forward_and_gradients(shape, ksize, strides, padding):
  x, k, g0 = _data(shape, ksize, seed=13)
  ref = lambda x, k: depthwise.depthwise_conv2d_xla(x, k, strides, padding)  # noqa: E731
  y_ref, pull = jax.vjp(ref, x, k)
  g = jax.random.normal(jax.random.key(14), y_ref.shape)
  dx_ref, dk_ref = pull(g)
  y, dx, dk = _vjp(jax.jit(lambda x, k: depthwise.depthwise_conv2d_shift(x, k, strides, padding)), x, k, g)
  _close(y, y_ref, 1e-5)
  _close(dx, dx_ref, 1e-5)
  _close(dk, dk_ref, 1e-5)


def test_strided_bfloat16_and_vmap():
  x, k, _ = _data((2, 8, 8, 4), (3, 3), dtype=jnp.bfloat16, seed=15)
  y, pull = jax.vjp(lambda x, k: depthwise.depthwise_conv2d_shift(x, k, 2, 1), x, k)
  dx, dk = pull(jnp.ones_like(y))
  assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16 and y.shape == (2, 4, 4, 4)
  xn, kn = (np.asarray(a.astype(jnp.float32), np.float64) for a in (x, k))
  y_ref, taps = np_depthwise_strided(xn, kn, (2, 2), ((1, 1), (1, 1)))
  dx_ref, dk_ref = np_depthwise_strided_grads(xn, kn, np.ones(y_ref.shape), taps)
  _close(y, y_ref, 2e-2)
  _close(dx, dx_ref, 2e-2)
  _close(dk, dk_ref, 2e-2)
  xs = jax.random.normal(jax.random.key(16), (3, 2, 7, 6, 4))
  ks = jax.random.normal(jax.random.key(17), (3, 5, 5, 1, 4))
  ys = jax.jit(jax.vmap(lambda x, k: depthwise.depthwise_conv2d_shift(x, k, 2, 2)))(xs, ks)
  for n in range(3):
    _close(ys[n], depthwise.depthwise_conv2d_xla(xs[n], ks[n], 2, 2), 1e-5)


def test_strided_module_matches_nn_conv_with_torch_padding():
  """DepthwiseConv(strides=2, padding=k // 2) == nn.Conv(strides=2, padding=k // 2, groups=C) (same
  parameters) for every impl, values and parameter gradients."""
  x = jax.random.normal(jax.random.key(18), (2, 10, 9, 6))
  conv = nn.Conv(6, (5, 5), strides=2, padding=2, feature_group_count=6)
  variables = conv.init(jax.random.key(19), x)
  y_ref = conv.apply(variables, x)
  g_ref = jax.grad(lambda p: jnp.sum(conv.apply({"params": p}, x) ** 2))(variables["params"])
  for impl in IMPLS:
    m = DepthwiseConv(kernel_size=(5, 5), strides=2, padding=2, impl=impl)
    assert jax.tree_util.tree_map(jnp.shape, m.init(jax.random.key(0), x)) == \
        jax.tree_util.tree_map(jnp.shape, variables)
    _close(jax.jit(m.apply)(variables, x), y_ref, 1e-5)
    g = jax.jit(jax.grad(lambda p, m=m: jnp.sum(m.apply({"params": p}, x) ** 2)))(variables["params"])
    _close(g["kernel"], g_ref["kernel"], 1e-5)
    _close(g["bias"], g_ref["bias"], 1e-5)


def test_bad_strides_and_padding_raise_clear_errors():
  x, k = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 1, 2))
  for fn in IMPLEMENTATIONS.values():
    with pytest.raises(ValueError, match=r"strides must be a positive int or a pair of them, got 0"):
      fn(x, k, 0)
    with pytest.raises(ValueError, match=r"strides must be .*got \(2, 2, 2\)"):
      fn(x, k, (2, 2, 2))
    with pytest.raises(ValueError, match=r"padding must be 'SAME', 'VALID', an int >= 0 or .*got 'FULL'"):
      fn(x, k, 1, "FULL")
    with pytest.raises(ValueError, match=r"padding must be .*got -1"):
      fn(x, k, 1, -1)
    with pytest.raises(ValueError, match=r"padding must be .*got \(\(1, 1\),\)"):
      fn(x, k, 1, ((1, 1),))
    with pytest.raises(ValueError, match=r"input \(2, 2\) padded by \(\(0, 0\), \(0, 0\)\) is smaller than the "
                                         r"kernel \(3, 3\)"):
      fn(jnp.ones((1, 2, 2, 2)), k, 1, "VALID")
