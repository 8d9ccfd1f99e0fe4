"""ArcFace / combined-margin heads vs independent NumPy (float64, via arccos) and PyTorch references.

Covers: logits in the normal region, the theta + m2 > pi fallback, easy_margin, CosFace (m3),
SphereFace-like m1, combined margins, ignored rows (label -1); loss values vs a NumPy log-softmax;
loss gradients wrt the cosines (analytic and finite differences) and wrt CosineHead params/inputs
(finite differences, float64); finiteness at cos = +-1 exactly; CosineHead vs a NumPy normalised
matmul; an insightface-style PyTorch implementation written from its definition; bad input.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fer_jax.layers import arcface
from fer_jax.layers.arcface import (CosineHead, arcface_logits, combined_margin_logits,
                                    cosface_logits, margin_softmax_loss, sphereface_logits)

# (m1, m2, m3, easy_margin): ArcFace, ArcFace easy, CosFace, SphereFace-like, insightface combined
# (1.0, 0.3, 0.2), general combined with m1 != 1.
CONFIGS = [
    (1.0, 0.5, 0.0, False),
    (1.0, 0.5, 0.0, True),
    (1.0, 0.0, 0.35, False),
    (1.35, 0.0, 0.0, False),
    (1.0, 0.3, 0.2, False),
    (1.2, 0.3, 0.1, False),
    (2.0, 0.2, 0.0, True),
]
IDS = [f"m1={a}_m2={b}_m3={c}_easy={d}" for a, b, c, d in CONFIGS]


# ----------------------------------------------------------------------------------------------
# NumPy reference (float64), written from the definitions with explicit arccos.
# ----------------------------------------------------------------------------------------------
def np_psi(cos, m1, m2, m3, easy):
  cos = np.asarray(cos, np.float64)
  theta = np.arccos(np.clip(cos, -1.0, 1.0))
  psi = np.cos(m1 * theta + m2) - m3
  if m1 == 1.0 and not easy:
    psi = np.where(theta + m2 > np.pi, cos - m2 * np.sin(m2) - m3, psi)
  if easy:
    psi = np.where(cos > 0, psi, cos)
  return psi


def np_dpsi(cos, m1, m2, m3, easy):
  """d psi / d cos: d cos(m1 theta + m2)/d cos = m1 sin(m1 theta + m2) / sin theta; 1 in fallbacks."""
  cos = np.asarray(cos, np.float64)
  theta = np.arccos(cos)
  d = m1 * np.sin(m1 * theta + m2) / np.sin(theta)
  if m1 == 1.0 and not easy:
    d = np.where(theta + m2 > np.pi, 1.0, d)
  if easy:
    d = np.where(cos > 0, d, 1.0)
  return d


def np_logits(cos, labels, s, m1, m2, m3, easy):
  out = np.array(cos, np.float64)
  for i, y in enumerate(labels):
    if y >= 0:
      out[i, y] = np_psi(cos[i, y], m1, m2, m3, easy)
  return s * out


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_loss(logits, labels, ls=0.0, reduction="mean"):
  k = logits.shape[-1]
  lp = np_log_softmax(logits)
  per = np.zeros(len(labels))
  for i, y in enumerate(labels):
    if y >= 0:
      t = np.full(k, ls / k)
      t[y] += 1.0 - ls
      per[i] = -(t * lp[i]).sum()
  n = max(int((np.asarray(labels) >= 0).sum()), 1)
  return {"mean": per.sum() / n, "sum": per.sum(), "none": per}[reduction]


def np_dloss_dcos(cos, labels, s, m1, m2, m3, easy, ls=0.0):
  """Analytic gradient of the mean loss: (softmax - targets) * s * dpsi/dcos (target) / n_valid."""
  k = cos.shape[-1]
  z = np_logits(cos, labels, s, m1, m2, m3, easy)
  p = np.exp(np_log_softmax(z))
  n = max(int((np.asarray(labels) >= 0).sum()), 1)
  g = np.zeros_like(p)
  for i, y in enumerate(labels):
    if y < 0:
      continue
    t = np.full(k, ls / k)
    t[y] += 1.0 - ls
    g[i] = (p[i] - t) * s / n
    g[i, y] *= np_dpsi(cos[i, y], m1, m2, m3, easy)
  return g


def central_fd(f, x, h=1e-6):
  """Central finite differences of scalar f at float64 x, all coordinates in one vmapped call."""
  e = h * np.eye(x.size).reshape((x.size,) + x.shape)
  vals = np.asarray(jax.vmap(f)(jnp.asarray(np.concatenate([x + e, x - e]))))
  return ((vals[:x.size] - vals[x.size:]) / (2 * h)).reshape(x.shape)


def random_cos(rng, b, k, lo=-0.95, hi=0.95):
  return rng.uniform(lo, hi, size=(b, k))


# ----------------------------------------------------------------------------------------------
# Logits.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m1,m2,m3,easy", CONFIGS, ids=IDS)
def test_logits_match_numpy(m1, m2, m3, easy):
  rng = np.random.default_rng(0)
  cos = random_cos(rng, 64, 7, -0.999, 0.999)
  labels = rng.integers(0, 7, size=64)
  labels[::9] = -1
  ref = np_logits(cos, labels, 30.0, m1, m2, m3, easy)
  got = combined_margin_logits(jnp.asarray(cos, jnp.float32), jnp.asarray(labels), scale=30.0,
                               m1=m1, m2=m2, m3=m3, easy_margin=easy)
  assert got.dtype == jnp.float32
  # f32 arccos/sqrt near |cos| ~ 1: the angle itself is uncertain by ~sqrt(f32 eps) there.
  np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=30.0 * 2e-4)
  with jax.enable_x64(True):
    got64 = combined_margin_logits(jnp.asarray(cos), jnp.asarray(labels), scale=30.0, m1=m1,
                                   m2=m2, m3=m3, easy_margin=easy)
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got64), ref, rtol=1e-12, atol=1e-12)


def test_arcface_normal_region_closed_form():
  """cos(theta + m) by hand at theta = pi/3, m = 0.5; non-targets untouched; row -1 untouched."""
  cos = np.array([[0.5, 0.1, -0.2], [0.5, 0.1, -0.2]], np.float32)
  out = np.asarray(arcface_logits(jnp.asarray(cos), jnp.array([0, -1]), scale=2.0, margin=0.5))
  np.testing.assert_allclose(out[0], 2 * np.array([math.cos(math.pi / 3 + 0.5), 0.1, -0.2]),
                             rtol=1e-6)
  np.testing.assert_allclose(out[1], 2 * cos[1], rtol=1e-6)


def test_fallback_region():
  """theta + m2 > pi -> cos - m2*sin(m2) (not the non-monotonic cos(theta + m2))."""
  m2 = 0.5
  th = -math.cos(m2)   # cos(pi - m2): the fallback threshold
  cos = np.array([-0.999, -0.95, -0.9, th - 1e-4, th + 1e-4, -0.5], np.float64)
  c2 = np.stack([cos, np.zeros_like(cos)], 1)
  labels = np.zeros(len(cos), np.int32)
  with jax.enable_x64(True):
    got = np.asarray(arcface_logits(jnp.asarray(c2), jnp.asarray(labels), scale=1.0, margin=m2))
  exp_fallback = cos - m2 * math.sin(m2)
  exp_normal = np.cos(np.arccos(cos) + m2)
  in_fallback = np.arccos(cos) + m2 > math.pi
  np.testing.assert_array_equal(in_fallback, [True, True, True, True, False, False])
  np.testing.assert_allclose(got[:, 0], np.where(in_fallback, exp_fallback, exp_normal),
                             rtol=1e-12, atol=1e-12)
  # The two forms really differ there (so the check above can fail).
  assert np.all(np.abs(exp_fallback - exp_normal)[in_fallback] > 1e-3)
  # Without the fallback the logit would increase as theta -> pi; with it it stays monotonic.
  assert np.all(np.diff(got[:4, 0]) > 0)


def test_easy_margin():
  cos = np.array([[-0.7, 0.0], [-0.1, 0.0], [0.0, 0.0], [0.2, 0.0], [0.9, 0.0]], np.float64)
  with jax.enable_x64(True):
    got = np.asarray(arcface_logits(jnp.asarray(cos), jnp.zeros(5, jnp.int32), scale=1.0,
                                    margin=0.5, easy_margin=True))[:, 0]
  exp = np.where(cos[:, 0] > 0, np.cos(np.arccos(cos[:, 0]) + 0.5), cos[:, 0])
  np.testing.assert_allclose(got, exp, rtol=1e-12, atol=1e-12)
  # cos = -0.7 is *not* in the easy region of the default form: there it gets cos(theta + m).
  with jax.enable_x64(True):
    hard = float(arcface_logits(jnp.asarray(cos[:1]), jnp.zeros(1, jnp.int32), scale=1.0)[0, 0])
  assert abs(hard - math.cos(math.acos(-0.7) + 0.5)) < 1e-12 and abs(hard - got[0]) > 0.1


def test_cosface_and_sphereface_closed_form():
  cos = np.array([[0.3, -0.4, 0.8]], np.float64)
  with jax.enable_x64(True):
    cf = np.asarray(cosface_logits(jnp.asarray(cos), jnp.array([2]), scale=10.0, margin=0.35))
    sf = np.asarray(sphereface_logits(jnp.asarray(cos), jnp.array([1]), scale=10.0, margin=2.0))
  np.testing.assert_allclose(cf, 10 * np.array([[0.3, -0.4, 0.8 - 0.35]]), rtol=1e-12)
  # cos(2 theta) = 2 cos^2 - 1.
  np.testing.assert_allclose(sf, 10 * np.array([[0.3, 2 * 0.16 - 1, 0.8]]), rtol=1e-12, atol=1e-14)


def test_combined_equals_composition():
  """cos(m1 theta + m2) - m3 at a hand-picked angle."""
  theta = 0.7
  cos = np.array([[math.cos(theta), 0.2]])
  with jax.enable_x64(True):
    got = float(combined_margin_logits(jnp.asarray(cos), jnp.array([0]), scale=3.0, m1=1.3,
                                       m2=0.2, m3=0.15)[0, 0])
  assert abs(got - 3.0 * (math.cos(1.3 * theta + 0.2) - 0.15)) < 1e-12


def test_leading_dims_and_bf16_input():
  rng = np.random.default_rng(1)
  cos = random_cos(rng, 6, 5).reshape(2, 3, 5)
  labels = rng.integers(0, 5, size=(2, 3))
  got = combined_margin_logits(jnp.asarray(cos, jnp.bfloat16), jnp.asarray(labels), scale=8.0)
  assert got.dtype == jnp.float32   # margin math is upcast
  ref = np_logits(np.asarray(jnp.asarray(cos, jnp.bfloat16), np.float64).reshape(6, 5),
                  labels.reshape(6), 8.0, 1.0, 0.5, 0.0, False).reshape(2, 3, 5)
  np.testing.assert_allclose(np.asarray(got), ref, atol=8.0 * 1e-5)


def test_jit_traced_labels_and_traced_margin():
  rng = np.random.default_rng(2)
  cos = jnp.asarray(random_cos(rng, 8, 4), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=8))
  eager = combined_margin_logits(cos, labels, scale=16.0, m2=0.4, m3=0.1)
  jitted = jax.jit(lambda c, y, m: combined_margin_logits(c, y, scale=16.0, m2=m, m3=0.1))(
      cos, labels, 0.4)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Loss values and gradients.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_loss_matches_numpy(reduction, ls):
  rng = np.random.default_rng(3)
  cos = random_cos(rng, 16, 8)
  labels = rng.integers(0, 8, size=16)
  labels[[2, 5]] = -1
  ref = np_loss(np_logits(cos, labels, 32.0, 1.0, 0.5, 0.0, False), labels, ls, reduction)
  got = margin_softmax_loss(jnp.asarray(cos, jnp.float32), jnp.asarray(labels), scale=32.0,
                            label_smoothing=ls, reduction=reduction)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-5, atol=2e-4)
  if reduction == "none":
    assert got[2] == 0 and got[5] == 0
  # from_logits gives the same loss from precomputed margin logits.
  z = combined_margin_logits(jnp.asarray(cos, jnp.float32), jnp.asarray(labels), scale=32.0)
  got2 = margin_softmax_loss(z, jnp.asarray(labels), label_smoothing=ls, reduction=reduction,
                             from_logits=True)
  np.testing.assert_allclose(np.asarray(got2), np.asarray(got), rtol=1e-6, atol=1e-6)


def test_loss_all_rows_ignored_is_zero():
  cos = jnp.full((3, 4), 0.2)
  assert float(margin_softmax_loss(cos, jnp.full((3,), -1))) == 0.0
  g = jax.grad(lambda c: margin_softmax_loss(c, jnp.full((3,), -1)))(cos)
  assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("m1,m2,m3,easy", CONFIGS, ids=IDS)
def test_loss_grad_wrt_cosine_float64(m1, m2, m3, easy):
  """jax.grad == analytic NumPy derivative == central finite differences, incl. fallback rows."""
  rng = np.random.default_rng(4)
  cos = random_cos(rng, 12, 5, -0.97, 0.97)
  labels = rng.integers(0, 5, size=12)
  labels[3] = -1
  cos[0, labels[0]] = -0.95      # fallback region for m2 = 0.5 (threshold -0.8776)
  cos[1, labels[1]] = -0.3       # easy-margin no-margin region
  kw = dict(scale=10.0, m1=m1, m2=m2, m3=m3, easy_margin=easy, label_smoothing=0.1)
  ref = np_dloss_dcos(cos, labels, 10.0, m1, m2, m3, easy, ls=0.1)
  with jax.enable_x64(True):
    f = jax.jit(lambda c: margin_softmax_loss(c, labels, **kw))
    c64 = jnp.asarray(cos)
    g = np.asarray(jax.grad(f)(c64))
    np.testing.assert_allclose(g, ref, rtol=1e-9, atol=1e-12)
    fd = central_fd(f, cos)
  np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("m1,m2,m3,easy", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradients_finite_at_cos_pm1(m1, m2, m3, easy, dtype):
  cos = np.array([[1.0, -1.0, 0.2], [-1.0, 1.0, 0.3], [1.0, 1.0, -1.0], [-1.0, -1.0, -1.0],
                  [1.0 + 1e-7, -1.0 - 1e-7, 0.0]])   # the last row: rounding outside [-1, 1]
  labels = np.array([0, 0, 2, 1, 0])
  with jax.enable_x64(dtype == "float64"):
    c = jnp.asarray(cos, dtype)
    kw = dict(scale=64.0, m1=m1, m2=m2, m3=m3, easy_margin=easy)
    z = combined_margin_logits(c, labels, **kw)
    loss, g = jax.value_and_grad(lambda c: margin_softmax_loss(c, labels, **kw))(c)
    gz = jax.grad(lambda c: jnp.sum(combined_margin_logits(c, labels, **kw) * jnp.arange(3.0)))(c)
    assert np.all(np.isfinite(np.asarray(z))) and np.isfinite(float(loss))
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.isfinite(np.asarray(gz)))
    # The clamp costs at most sin(m2) * sqrt(eps) (m1 == 1) / the value at the clip (m1 != 1).
    ref = np_logits(np.clip(cos, -1, 1), labels, 64.0, m1, m2, m3, easy)
    tol = 64.0 * (m1 * math.sqrt(2 * arcface.DEFAULT_EPS) + 1e-6)
    np.testing.assert_allclose(np.asarray(z), ref, atol=tol, rtol=0)


def test_clamp_value_error_bound_at_cos_one():
  with jax.enable_x64(True):
    z = float(arcface_logits(jnp.array([[1.0, 0.0]]), jnp.array([0]), scale=1.0, margin=0.5)[0, 0])
  err = abs(z - math.cos(0.5))
  assert 0 < err <= math.sin(0.5) * math.sqrt(arcface.DEFAULT_EPS) * (1 + 1e-9)


# ----------------------------------------------------------------------------------------------
# CosineHead.
# ----------------------------------------------------------------------------------------------
def np_cosine_head(x, w):
  xn = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  wn = w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-12)
  return xn @ wn


def test_cosine_head_values_and_params():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(6, 10)).astype(np.float32)
  x[0] = 0.0   # zero embedding -> zero cosines, no NaN
  head = CosineHead(num_classes=4, precision="highest")
  params = head.init(jax.random.key(0), jnp.asarray(x))
  assert jax.tree_util.tree_map(jnp.shape, params) == {"params": {"kernel": (10, 4)}}
  w = np.asarray(params["params"]["kernel"])
  assert 0.005 < w.std() < 0.02   # N(0, 0.01^2) default init
  out = np.asarray(jax.jit(head.apply)(params, jnp.asarray(x)))
  np.testing.assert_allclose(out, np_cosine_head(x.astype(np.float64), w.astype(np.float64)),
                             atol=1e-6)
  assert np.all(out[0] == 0) and np.all(np.abs(out) <= 1 + 1e-6)
  g = jax.jit(jax.grad(lambda p, x: jnp.sum(head.apply(p, x)), argnums=(0, 1)))(params,
                                                                                jnp.asarray(x))
  assert all(np.all(np.isfinite(np.asarray(t))) for t in jax.tree_util.tree_leaves(g))
  # Leading dims and bf16 compute.
  x3 = jnp.asarray(x.reshape(2, 3, 10))
  out3 = jax.jit(CosineHead(4, dtype=jnp.bfloat16).apply)(params, x3)
  assert out3.dtype == jnp.bfloat16 and out3.shape == (2, 3, 4)
  np.testing.assert_allclose(np.asarray(out3, np.float32).reshape(6, 4), out, atol=2e-2)


def test_cosine_head_grads_float64_finite_differences():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(5, 6))
  labels = np.array([0, 2, 1, -1, 2])
  with jax.enable_x64(True):
    head = CosineHead(3, dtype=jnp.float64, param_dtype=jnp.float64)
    params = head.init(jax.random.key(1), jnp.asarray(x))
    w = np.asarray(params["params"]["kernel"])
    # Push one target into the fallback region (cos < -cos 0.5) to cover it too.
    x[0] = -w[:, 0] / np.linalg.norm(w[:, 0]) + 0.05 * rng.normal(size=6)

    def loss(w, x):
      cos = head.apply({"params": {"kernel": w}}, x)
      return margin_softmax_loss(cos, labels, scale=16.0, m2=0.5, m3=0.05)

    f = jax.jit(loss)
    w64, x64 = jnp.asarray(w), jnp.asarray(x)
    assert float(head.apply(params, x64)[0, 0]) < -math.cos(0.5)
    gw, gx = (np.asarray(t) for t in jax.grad(f, argnums=(0, 1))(w64, x64))
    np.testing.assert_allclose(gw, central_fd(lambda w: loss(w, x64), w), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(gx, central_fd(lambda x: loss(w64, x), x), rtol=1e-5, atol=1e-8)
    assert np.all(gx[3] == 0)   # ignored row contributes nothing


# ----------------------------------------------------------------------------------------------
# PyTorch reference: insightface-style CombinedMarginLoss forward, written from its definition.
# ----------------------------------------------------------------------------------------------
def torch_margin_logits(cos, labels, s, m1, m2, m3, easy):
  logits = cos.clone()
  idx = torch.where(labels != -1)[0]
  y = labels[idx]
  t = logits[idx, y]
  if m1 == 1.0 and m3 == 0.0:      # ArcFace branch: cos(t + m) via sqrt, fallback / easy margin
    sin_t = torch.sqrt(1.0 - t * t)
    cos_tm = t * math.cos(m2) - sin_t * math.sin(m2)
    if easy:
      new = torch.where(t > 0, cos_tm, t)
    else:
      new = torch.where(t > math.cos(math.pi - m2), cos_tm, t - math.sin(math.pi - m2) * m2)
  elif m1 == 1.0 and m2 == 0.0:    # CosFace branch
    new = t - m3
  else:                            # general combined margin via arccos (no fallback)
    new = torch.cos(m1 * torch.acos(t) + m2) - m3
    if easy:
      new = torch.where(t > 0, new, t)
  logits[idx, y] = new
  return logits * s


TORCH_CONFIGS = [c for c in CONFIGS if not (c[0] == 1.0 and c[1] > 0 and c[2] > 0)] + [
    (1.0, 0.35, 0.0, False)]


@pytest.mark.parametrize("m1,m2,m3,easy", TORCH_CONFIGS)
def test_matches_torch_reference(m1, m2, m3, easy):
  rng = np.random.default_rng(7)
  cos = random_cos(rng, 32, 6, -0.99, 0.99)
  labels = rng.integers(0, 6, size=32)
  labels[[4, 17]] = -1
  cos[0, labels[0]] = -0.98   # fallback region
  tc = torch.tensor(cos, dtype=torch.float64, requires_grad=True)
  tl = torch.tensor(labels)
  tz = torch_margin_logits(tc, tl, 20.0, m1, m2, m3, easy)
  keep = tl != -1
  tloss = torch.nn.functional.cross_entropy(tz[keep], tl[keep], label_smoothing=0.1)
  tloss.backward()
  kw = dict(scale=20.0, m1=m1, m2=m2, m3=m3, easy_margin=easy)
  with jax.enable_x64(True):
    c64 = jnp.asarray(cos)
    z = combined_margin_logits(c64, labels, **kw)
    loss, g = jax.value_and_grad(
        lambda c: margin_softmax_loss(c, labels, label_smoothing=0.1, **kw))(c64)
  np.testing.assert_allclose(np.asarray(z), tz.detach().numpy(), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(float(loss), tloss.item(), rtol=1e-12)
  np.testing.assert_allclose(np.asarray(g), tc.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_cosine_head_matches_torch_autograd():
  """Head + ArcFace loss: values and gradients wrt the kernel and the input vs torch autograd."""
  rng = np.random.default_rng(8)
  x = rng.normal(size=(8, 12))
  w = rng.normal(size=(12, 5)) * 0.01
  labels = rng.integers(0, 5, size=8)
  tx = torch.tensor(x, requires_grad=True)
  tw = torch.tensor(w, requires_grad=True)
  tcos = torch.nn.functional.normalize(tx, dim=1) @ torch.nn.functional.normalize(tw, dim=0)
  tl = torch.tensor(labels)
  tloss = torch.nn.functional.cross_entropy(torch_margin_logits(tcos, tl, 64.0, 1.0, 0.5, 0.0,
                                                                False), tl)
  tloss.backward()
  with jax.enable_x64(True):
    head = CosineHead(5, dtype=jnp.float64, param_dtype=jnp.float64)

    def f(w, x):
      return margin_softmax_loss(head.apply({"params": {"kernel": w}}, x), labels)

    loss, (gw, gx) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(jnp.asarray(w),
                                                                     jnp.asarray(x))
  np.testing.assert_allclose(float(loss), tloss.item(), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy(), rtol=1e-8, atol=1e-10)
  np.testing.assert_allclose(np.asarray(gx), tx.grad.numpy(), rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels,match", [
    ([0, 5], "label 5 out of range: expected 0..4"),
    ([-2, 0], "label -2 out of range"),
    ([0, 1, 2], r"labels shape \(3,\) must equal"),
])
def test_bad_labels(labels, match):
  with pytest.raises(ValueError, match=match):
    combined_margin_logits(jnp.zeros((2, 5)), jnp.asarray(labels))
  with pytest.raises(ValueError, match=match):
    margin_softmax_loss(jnp.zeros((2, 5)), jnp.asarray(labels))


def test_float_labels_rejected():
  with pytest.raises(ValueError, match="integer class indices"):
    combined_margin_logits(jnp.zeros((2, 5)), jnp.array([0.0, 1.0]))


@pytest.mark.parametrize("kw,match", [
    (dict(m2=-0.1), "m2 must be in"),
    (dict(m2=4.0), "m2 must be in"),
    (dict(scale=0.0), "scale must be > 0, got 0.0"),
    (dict(scale=-1.0), "scale must be > 0"),
    (dict(m3=-0.2), "m3 must be >= 0"),
    (dict(m1=0.5), "m1 .* must be a finite number >= 1, got 0.5"),
    (dict(eps=0.0), "eps must be in"),
    (dict(scale=float("nan")), "scale must be > 0, got nan"),
])
def test_bad_margins(kw, match):
  with pytest.raises(ValueError, match=match):
    combined_margin_logits(jnp.zeros((2, 5)), jnp.array([0, 1]), **kw)


def test_bad_loss_options():
  with pytest.raises(ValueError, match="reduction must be one of"):
    margin_softmax_loss(jnp.zeros((2, 5)), jnp.array([0, 1]), reduction="avg")
  with pytest.raises(ValueError, match="label_smoothing must be"):
    margin_softmax_loss(jnp.zeros((2, 5)), jnp.array([0, 1]), label_smoothing=1.0)
