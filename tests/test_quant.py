"""Tests for fer_jax.layers.quant against NumPy references (larq semantics)."""

import functools
import time
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax.data import synthetic
from fer_jax.layers import quant as Q

BINARY = ("ste_sign", "approx_sign", "swish_sign")


def np_sign(x):
  return np.where(np.asarray(x) >= 0, 1.0, -1.0)


def grad_of(q, x, r):
  """d/dx sum(q(x) * r): the quantizer's pseudo-gradient times r."""
  return np.asarray(jax.jit(jax.grad(lambda v, r: jnp.sum(q(v) * r)))(jnp.asarray(x), r))


def sample_inputs(seed=0, clip=1.0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-2.5, 2.5, 200).astype(np.float32)
  edge = np.array([0.0, -0.0, clip, -clip, 1.0, -1.0, 1e-30, -1e-30, 50.0, -50.0], np.float32)
  return np.concatenate([edge, x])


# ---------------------------------------------------------------------------------- quantizers


@pytest.mark.parametrize("name", BINARY)
def test_binary_forward_is_sign_with_zero_to_plus_one(name):
  q = Q.get_quantizer(name)
  x = sample_inputs()
  y = np.asarray(q(jnp.asarray(x)))
  np.testing.assert_array_equal(y, np_sign(x))
  assert set(np.unique(y)) == {-1.0, 1.0}
  assert y[0] == 1.0 and y[1] == 1.0  # 0 and -0.0 -> +1
  # Dtype is kept (bf16), jit and vmap give the same values.
  yb = q(jnp.asarray(x, jnp.bfloat16))
  assert yb.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(yb, np.float32), np_sign(x))
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(q))(x.reshape(10, -1))).ravel(),
                                np_sign(x))


@pytest.mark.parametrize("clip", [1.0, 0.5, 2.0])
def test_ste_sign_gradient(clip):
  x = sample_inputs(1, clip)
  r = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
  g = grad_of(functools.partial(Q.ste_sign, clip_value=clip), x, r)
  np.testing.assert_array_equal(g, r * (np.abs(x) <= clip))  # boundary |x| == clip passes
  assert g[2] == r[2] and g[3] == r[3]


def test_ste_sign_identity_gradient_and_jvp():
  x = sample_inputs(2)
  r = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  np.testing.assert_array_equal(grad_of(lambda v: Q.ste_sign(v, None), x, r), r)
  # Forward mode gives the same pseudo-derivative as reverse mode.
  _, t = jax.jvp(Q.ste_sign, (jnp.asarray(x),), (jnp.asarray(r),))
  np.testing.assert_array_equal(np.asarray(t), r * (np.abs(x) <= 1))


def test_approx_sign_gradient():
  x = sample_inputs(3)
  r = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
  ax = np.abs(x.astype(np.float64))
  ref = r * np.where(ax <= 1, 2 - 2 * ax, 0.0)
  np.testing.assert_allclose(grad_of(Q.approx_sign, x, r), ref, rtol=1e-6, atol=1e-7)
  # 2 at 0, 0 at the boundary, 1 at |x| = 0.5.
  np.testing.assert_array_equal(grad_of(Q.approx_sign, np.float32([0, 1, -1, 0.5, -0.5]), 1.0),
                                [2, 0, 0, 1, 1])


@pytest.mark.parametrize("beta", [5.0, 2.0, 10.0])
def test_swish_sign_gradient(beta):
  x = sample_inputs(4)
  r = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
  bx = beta * x.astype(np.float64)
  with np.errstate(over="ignore"):
    ref = r * beta * (2 - bx * np.tanh(bx / 2)) / (1 + np.cosh(bx))
  g = grad_of(functools.partial(Q.swish_sign, beta=beta), x, r)
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g, ref, rtol=2e-5, atol=1e-6)
  assert grad_of(functools.partial(Q.swish_sign, beta=beta), np.float32(0), 1.0) == beta
  # Cross-check: the formula is the derivative of 2 sigmoid(bx)(1 + bx(1 - sigmoid(bx))) - 1
  # (BNN+ eq. 5); float64 central differences.
  sig = lambda z: 1 / (1 + np.exp(-z))
  smooth = lambda v: 2 * sig(beta * v) * (1 + beta * v * (1 - sig(beta * v))) - 1
  xs = np.linspace(-2, 2, 41)
  h = 1e-6
  np.testing.assert_allclose(
      grad_of(functools.partial(Q.swish_sign, beta=beta), xs.astype(np.float32), 1.0),
      (smooth(xs + h) - smooth(xs - h)) / (2 * h), rtol=1e-4, atol=1e-6)


def test_magnitude_aware_sign():
  rng = np.random.default_rng(5)
  w = rng.uniform(-1.5, 1.5, (3, 3, 4, 6)).astype(np.float32)
  r = rng.normal(size=w.shape).astype(np.float32)
  scale = np.abs(w).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(np.asarray(Q.magnitude_aware_sign(w)), scale * np_sign(w), rtol=1e-6)
  np.testing.assert_allclose(grad_of(Q.magnitude_aware_sign, w, r),
                             r * scale * (np.abs(w) <= 1), rtol=1e-6)


def test_registry_and_binary_predicates():
  assert set(Q.QUANTIZERS) >= {"ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign"}
  assert Q.get_quantizer(None) is None
  assert Q.get_quantizer("approx_sign") is Q.approx_sign
  fn = lambda x: x
  assert Q.get_quantizer(fn) is fn
  for name in BINARY:
    assert Q.is_binary_quantizer(name) and Q.is_sign_quantizer(name)
    assert Q.is_binary_quantizer(Q.QUANTIZERS[name])
  assert Q.is_binary_quantizer(functools.partial(Q.ste_sign, clip_value=0.5))
  assert Q.is_sign_quantizer("magnitude_aware_sign")
  assert not Q.is_binary_quantizer("magnitude_aware_sign")
  assert not Q.is_binary_quantizer(None) and not Q.is_sign_quantizer(fn)
  with pytest.raises(ValueError, match=r"'ste_sgn'.*approx_sign.*ste_sign"):
    Q.get_quantizer("ste_sgn")
  with pytest.raises(ValueError, match="ste_sgn"):
    init(Q.QuantDense(3, kernel_quantizer="ste_sgn"), jnp.ones((1, 2)))
  with pytest.raises(ValueError, match="'l2'"):
    init(Q.QuantDense(3, kernel_scaling="l2"), jnp.ones((1, 2)))
  with pytest.raises(ValueError, match="clip_value"):
    Q.ste_sign(jnp.ones(2), -1.0)


# ------------------------------------------------------------------------------------ layers


def init(model, *args, seed=0):
  """model.init under jit (one compile instead of one per eager op)."""
  return jax.jit(model.init)(jax.random.key(seed), *args)


def uniform_init(lim):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -lim, lim)


def dense_ref(x, w, b, binary_input, binary_kernel, scaling):
  xq = np_sign(x) if binary_input else x
  wq = np_sign(w) if binary_kernel else w
  y = xq.astype(np.float64) @ wq.astype(np.float64)
  if scaling:
    y = y * np.abs(w).mean(0)
  return y + b


@pytest.mark.parametrize("binary_input,kernel_q,scaling", [
    (True, "ste_sign", None), (True, "approx_sign", "mean_abs"), (False, "ste_sign", None),
    (False, None, None), (True, None, "mean_abs")])
def test_quant_dense_forward(binary_input, kernel_q, scaling):
  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 5, 7)).astype(np.float32)
  layer = Q.QuantDense(4, input_quantizer="ste_sign" if binary_input else None,
                       kernel_quantizer=kernel_q, kernel_scaling=scaling,
                       bias_init=nn.initializers.normal(1.0))
  v = init(layer, x)
  name = "latent_kernel" if kernel_q else "kernel"
  assert set(v["params"]) == {name, "bias"} and v["params"][name].shape == (7, 4)
  w, b = np.asarray(v["params"][name]), np.asarray(v["params"]["bias"])
  ref = dense_ref(x, w, b, binary_input, kernel_q is not None, scaling)
  y = np.asarray(jax.jit(layer.apply)(v, x))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  if binary_input and kernel_q and not scaling:  # integer-valued popcount sums
    v0 = {"params": {name: v["params"][name], "bias": jnp.zeros(4)}}
    np.testing.assert_array_equal(np.asarray(jax.jit(layer.apply)(v0, x)), ref - b)
    assert np.all(ref - b == np.round(ref - b))


def test_quant_dense_latent_kernel_gradient():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  r = rng.normal(size=(6, 3)).astype(np.float32)
  for scaling in (None, "mean_abs"):
    layer = Q.QuantDense(3, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                         kernel_scaling=scaling, use_bias=False, kernel_init=uniform_init(1.6))
    v = init(layer, x)
    w = np.asarray(v["params"]["latent_kernel"], np.float64)
    loss = lambda p, x: jnp.sum(layer.apply({"params": p}, x) * r)
    gw, gx = jax.jit(jax.grad(loss, (0, 1)))(v["params"], x)
    g = np_sign(x).T @ r  # dL/dq(W)
    if scaling is None:
      ref_w = g * (np.abs(w) <= 1)
      wq = np_sign(w)
    else:
      # XNOR-Net: W~ = alpha * sign(W), alpha_j = mean_i |W_ij|; alpha is differentiated.
      alpha = np.abs(w).mean(0)
      dalpha = (g * np_sign(w)).sum(0)
      ref_w = alpha * g * (np.abs(w) <= 1) + dalpha * np_sign(w) / w.shape[0]
      wq = alpha * np_sign(w)
    assert np.any(np.abs(w) > 1)
    np.testing.assert_allclose(np.asarray(gw["latent_kernel"]), ref_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gx), (r @ wq.T) * (np.abs(x) <= 1), rtol=1e-5,
                               atol=1e-5)


def pad_np(x, pads, value):
  return np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=value)


def conv_ref(xp, k, strides, dil=(1, 1)):
  """Cross-correlation of an already padded NHWC input, float64 loops over the taps."""
  kh, kw = k.shape[:2]
  ho = (xp.shape[1] - (kh - 1) * dil[0] - 1) // strides[0] + 1
  wo = (xp.shape[2] - (kw - 1) * dil[1] - 1) // strides[1] + 1
  out = np.zeros((xp.shape[0], ho, wo, k.shape[3]))
  for p in range(kh):
    for q in range(kw):
      a, c = p * dil[0], q * dil[1]
      patch = xp[:, a:a + (ho - 1) * strides[0] + 1:strides[0],
                 c:c + (wo - 1) * strides[1] + 1:strides[1]]
      out += np.einsum("bhwc,co->bhwo", patch.astype(np.float64), k[p, q].astype(np.float64))
  return out


def same_pads(size, k, s):
  total = max((-(-size // s) - 1) * s + k - size, 0)
  return (total // 2, total - total // 2)


@pytest.mark.parametrize("padding,strides,pad_values,dil", [
    ("SAME", (1, 1), 1.0, (1, 1)), ("SAME", (1, 1), 0.0, (1, 1)), ("SAME", (2, 2), 1.0, (1, 1)),
    ("SAME", (2, 1), -1.0, (1, 1)), ("VALID", (1, 2), 1.0, (1, 1)),
    (((1, 0), (2, 1)), (1, 1), 1.0, (1, 1)), ("SAME", (1, 1), 1.0, (2, 1))])
def test_quant_conv_binary_forward(padding, strides, pad_values, dil):
  rng = np.random.default_rng(8)
  x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  layer = Q.QuantConv(5, (3, 3), strides=strides, padding=padding, pad_values=pad_values,
                      kernel_dilation=dil, input_quantizer="ste_sign",
                      kernel_quantizer="ste_sign", use_bias=False)
  v = init(layer, x)
  k = np.asarray(v["params"]["latent_kernel"])
  assert k.shape == (3, 3, 3, 5)
  if padding == "SAME":
    pads = [same_pads(7, 2 * dil[0] + 1, strides[0]), same_pads(6, 2 * dil[1] + 1, strides[1])]
  elif padding == "VALID":
    pads = [(0, 0), (0, 0)]
  else:
    pads = padding
  ref = conv_ref(pad_np(np_sign(x), pads, pad_values), np_sign(k), strides, dil)
  y = np.asarray(jax.jit(layer.apply)(v, x))
  np.testing.assert_array_equal(y, ref)  # exact: sums of +-1
  if pad_values in (1.0, -1.0):
    # Every output is a sum of 27 products +-1, hence odd; zero padding breaks this at borders.
    assert np.all(np.abs(y) % 2 == 1)
  elif padding == "SAME":
    assert np.any(np.abs(y) % 2 == 0)


def test_quant_conv_float_matches_nn_conv_and_mean_abs_scaling():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(2, 9, 8, 4)).astype(np.float32)
  layer = Q.QuantConv(6, (3, 2), strides=(2, 1), padding="SAME", bias_init=nn.initializers.ones)
  v = init(layer, x)
  assert set(v["params"]) == {"kernel", "bias"}
  ref = jax.jit(nn.Conv(6, (3, 2), strides=(2, 1), padding="SAME").apply)(v, x)
  np.testing.assert_allclose(np.asarray(jax.jit(layer.apply)(v, x)), np.asarray(ref), rtol=1e-5,
                             atol=1e-5)
  scaled = Q.QuantConv(6, 3, strides=2, padding="SAME", pad_values=1.0,
                       input_quantizer="approx_sign", kernel_quantizer="swish_sign",
                       kernel_scaling="mean_abs", bias_init=nn.initializers.ones)
  v = init(scaled, x)
  k = np.asarray(v["params"]["latent_kernel"])
  alpha = np.abs(k).mean(axis=(0, 1, 2))
  pads = [same_pads(9, 3, 2), same_pads(8, 3, 2)]
  ref = alpha * conv_ref(pad_np(np_sign(x), pads, 1.0), np_sign(k), (2, 2)) + 1.0
  y = np.asarray(jax.jit(scaled.apply)(v, x))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_quant_conv_latent_kernel_gradient():
  rng = np.random.default_rng(10)
  x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
  layer = Q.QuantConv(4, (3, 3), strides=2, padding="SAME", pad_values=1.0,
                      input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False,
                      kernel_init=uniform_init(1.5))
  v = init(layer, x)
  y = jax.jit(layer.apply)(v, x)
  r = rng.normal(size=y.shape).astype(np.float32)
  g = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) * r)))(v["params"])
  k = np.asarray(v["params"]["latent_kernel"])
  xp = pad_np(np_sign(x), [same_pads(6, 3, 2), same_pads(5, 3, 2)], 1.0)
  ho, wo = r.shape[1:3]
  dq = np.zeros(k.shape)
  for p in range(3):
    for q in range(3):
      dq[p, q] = np.einsum("bhwc,bhwo->co", xp[:, p:p + 2 * ho - 1:2, q:q + 2 * wo - 1:2], r)
  assert np.any(np.abs(k) > 1)
  np.testing.assert_allclose(np.asarray(g["latent_kernel"]), dq * (np.abs(k) <= 1), rtol=1e-5,
                             atol=1e-5)


def test_conv_padding_matches_lax_same_and_rejects_bad_values():
  for size, k, s, d in [(7, 3, 2, 1), (8, 3, 2, 1), (6, 4, 1, 1), (9, 3, 3, 2), (5, 1, 2, 1)]:
    expected = jax.lax.padtype_to_pads((size,), ((k - 1) * d + 1,), (s,), "SAME")
    assert Q.conv_padding("SAME", (size,), (k,), (s,), (d,)) == tuple(map(tuple, expected))
  assert Q.conv_padding(2, (5, 5), (3, 3), (1, 1), (1, 1)) == ((2, 2), (2, 2))
  with pytest.raises(ValueError, match="'FULL'"):
    Q.conv_padding("FULL", (5, 5), (3, 3), (1, 1), (1, 1))
  with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
    init(Q.QuantConv(2, 3, padding=(1, 2, 3)), jnp.ones((1, 5, 5, 1)))


# ---------------------------------------------------------------------- clipping and warnings


class Net(nn.Module):
  last_clip: float = 1.0

  @nn.compact
  def __call__(self, x, train=False):
    x = Q.QuantConv(4, 3, kernel_quantizer="ste_sign", kernel_init=uniform_init(1.5))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = Q.QuantDense(5, input_quantizer="ste_sign", kernel_quantizer="approx_sign",
                     kernel_init=uniform_init(1.5))(x.reshape(x.shape[0], -1))
    x = nn.Dense(3)(x)
    return Q.QuantDense(2, kernel_quantizer="ste_sign", kernel_clip_value=self.last_clip,
                        kernel_init=uniform_init(1.5), name="head")(x)


def flat(tree):
  return {"/".join(Q._path_names(p)): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_clip_latent_kernels_projects_only_latent_kernels():
  x = jnp.ones((2, 4, 4, 1))
  v = init(Net(), x)
  params = v["params"]
  mask = flat(Q.latent_kernel_mask(params))
  assert {k for k, m in mask.items() if m} == {
      "QuantConv_0/latent_kernel", "QuantDense_0/latent_kernel", "head/latent_kernel"}
  rng = np.random.default_rng(12)
  updates = jax.tree.map(lambda p: jnp.asarray(0.8 * rng.normal(size=p.shape), p.dtype), params)
  tx = Q.clip_latent_kernels(1.0)
  u2, _ = jax.jit(tx.update)(updates, tx.init(params), params)
  new = flat(optax.apply_updates(params, u2))
  p0, u0 = flat(params), flat(updates)
  for name, value in new.items():
    if mask[name]:
      assert np.all(np.abs(value) <= 1.0)
      np.testing.assert_allclose(value, np.clip(p0[name] + u0[name], -1, 1), atol=1e-6)
    else:  # biases, BN scale / bias, the float Dense: untouched updates
      np.testing.assert_array_equal(flat(u2)[name], u0[name])
  assert any(np.any(np.abs(p0[n] + u0[n]) > 1) for n in mask if mask[n])
  with pytest.raises(ValueError, match="params"):
    tx.update(updates, tx.init(params))


def test_clip_latent_kernels_per_layer_values_and_mask():
  x = jnp.ones((2, 4, 4, 1))
  with pytest.warns(UserWarning, match="head"):
    v = init(Net(last_clip=None), x)
  bounds = Q.latent_clip_values(Net(last_clip=None), x)
  assert bounds == {("QuantConv_0", "latent_kernel"): 1.0,
                    ("QuantDense_0", "latent_kernel"): 1.0, ("head", "latent_kernel"): None}
  bounds[("QuantConv_0", "latent_kernel")] = 0.5
  params = v["params"]
  updates = jax.tree.map(lambda p: jnp.full(p.shape, 0.7, p.dtype), params)
  tx = Q.clip_latent_kernels(bounds)
  new = flat(optax.apply_updates(params, jax.jit(tx.update)(updates, tx.init(params),
                                                            params)[0]))
  p0 = flat(params)
  np.testing.assert_allclose(new["QuantConv_0/latent_kernel"],
                             np.clip(p0["QuantConv_0/latent_kernel"] + 0.7, -0.5, 0.5), atol=1e-6)
  np.testing.assert_array_equal(new["head/latent_kernel"],
                                np.float32(p0["head/latent_kernel"] + np.float32(0.7)))
  # The same bounds apply to a tree with a leading 'params' level (full variables dict).
  wrapped = {"params": params}
  u2 = jax.jit(tx.update)({"params": updates}, tx.init(wrapped), wrapped)[0]
  np.testing.assert_array_equal(flat(optax.apply_updates(wrapped, u2))[
      "params/QuantConv_0/latent_kernel"], new["QuantConv_0/latent_kernel"])
  # An explicit mask (callable): only the Dense layer's latent kernel is clipped.
  tx = Q.clip_latent_kernels(1.0, mask=lambda p: Q.latent_kernel_mask(p, exclude="Conv|head"))
  new = flat(optax.apply_updates(params, jax.jit(tx.update)(updates, tx.init(params),
                                                            params)[0]))
  assert np.all(np.abs(new["QuantDense_0/latent_kernel"]) <= 1)
  assert np.any(np.abs(new["QuantConv_0/latent_kernel"]) > 1)


def test_clip_projection_never_leaves_range_after_rounding():
  rng = np.random.default_rng(11)
  p = jnp.asarray(rng.uniform(-1, 1, 200000).astype(np.float32) * rng.choice(
      [1, 1e-3, 1e-7], 200000).astype(np.float32))
  u = jnp.asarray(rng.normal(size=200000).astype(np.float32) * 3)
  params = {"l": {"latent_kernel": p}}
  for c in (1.0, 0.3, 0.7):
    tx = Q.clip_latent_kernels(c)
    u2, _ = jax.jit(tx.update)({"l": {"latent_kernel": u}}, tx.init(params), params)
    new = np.asarray(optax.apply_updates(params, u2)["l"]["latent_kernel"])
    assert np.all(np.abs(new) <= np.float32(c))
    np.testing.assert_allclose(new, np.clip(np.asarray(p) + np.asarray(u), -c, c), atol=2e-7)


def test_warning_only_without_clipping():
  x = jnp.ones((1, 3))
  with pytest.warns(UserWarning, match=r"QuantDense 'Inner_0/binary_head'.*kernel_clip_value"):
    class Inner(nn.Module):
      @nn.compact
      def __call__(self, x):
        return Q.QuantDense(2, kernel_quantizer="swish_sign", kernel_clip_value=None,
                            name="binary_head")(x)

    class Outer(nn.Module):
      @nn.compact
      def __call__(self, x):
        return Inner()(x)

    init(Outer(), x)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    init(Q.QuantDense(2, kernel_quantizer="ste_sign"), x)
    init(Q.QuantDense(2, kernel_clip_value=None), x)  # float kernel
    v = init(Q.QuantConv(2, 3, kernel_quantizer="ste_sign"), jnp.ones((1, 4, 4, 1)))
    assert Q.check_latent_clipping(v["params"]) == []
  bad = jax.tree.map(lambda a: a * 5, v["params"])
  with pytest.warns(UserWarning, match="latent_kernel.*clip_latent_kernels"):
    assert Q.check_latent_clipping(bad) == ["latent_kernel"]


# -------------------------------------------------------------------------- end-to-end: BNN


class BinaryMLP(nn.Module):
  """Float first layer, then binary (+-1 inputs and kernels) hidden and output layers, with BN."""
  hidden: int = 128

  @nn.compact
  def __call__(self, x, train=False):
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    x = bn()(Q.QuantDense(self.hidden, use_bias=False)(x))
    x = bn()(Q.QuantDense(self.hidden, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                          use_bias=False)(x))
    x = Q.QuantDense(8, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                     use_bias=False)(x)
    return bn()(x)


def faces(split, count):
  d = synthetic.sample_examples(0, split, 0, count, size=24)
  x = d["image"].reshape(count, -1).astype(np.float32)
  x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-3)  # per-image contrast
  return x, d["label"]


def test_binary_mlp_learns_synthetic_faces():
  start = time.time()
  xtr, ytr = faces("train", 3000)
  xva, yva = faces("validation", 800)
  model = BinaryMLP()
  v = init(model, xtr[:2])
  tx = optax.chain(optax.adam(1e-2), Q.clip_latent_kernels(1.0))
  state = (v["params"], v["batch_stats"], tx.init(v["params"]))

  @jax.jit
  def steps(state, xs, ys):
    def one(state, batch):
      params, stats, opt = state

      def loss_fn(p):
        logits, upd = model.apply({"params": p, "batch_stats": stats}, batch[0], train=True,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean(), upd

      (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
      u, opt = tx.update(g, opt, params)
      return (optax.apply_updates(params, u), upd["batch_stats"], opt), loss
    return jax.lax.scan(one, state, (xs, ys))

  rng = np.random.default_rng(0)
  batch, num_steps, chunk = 128, 400, 100
  for _ in range(num_steps // chunk):
    idx = rng.integers(0, len(xtr), (chunk, batch))
    state, losses = steps(state, xtr[idx], ytr[idx])
  params, stats, _ = state
  logits = jax.jit(model.apply)({"params": params, "batch_stats": stats}, xva)
  acc = float(np.mean(np.asarray(logits).argmax(-1) == yva))
  latent = [np.asarray(p) for k, p in flat(params).items() if k.endswith("latent_kernel")]
  print(f"binary MLP: val acc {acc:.3f}, final loss {float(losses[-1]):.3f}, "
        f"{time.time() - start:.1f} s")
  assert len(latent) == 2 and all(np.all(np.abs(k) <= 1) for k in latent)
  assert any(np.any(np.abs(k) == 1) for k in latent)  # the clip was active
  assert acc >= 0.5, acc  # chance is 1/8
