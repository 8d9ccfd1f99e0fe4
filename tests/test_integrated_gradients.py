"""Integrated Gradients: closed forms, completeness, captum parity, the PAIR saliency adapter."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.explain.integrated_gradients import (CONVOLUTION_LAYER_VALUES,
                                                  CONVOLUTION_OUTPUT_GRADIENTS)
from fer_jax.explain.integrated_gradients import (INPUT_OUTPUT_GRADIENTS, METHODS,
                                                  OUTPUT_LAYER_VALUES, approximation_parameters,
                                                  integrated_gradients,
                                                  pair_saliency_call_model_function)

RNG = np.random.default_rng(0)
D, H, C, B = 5, 8, 3, 4
W1 = RNG.normal(size=(D, H)).astype(np.float32)
B1 = RNG.normal(size=H).astype(np.float32)
W2 = RNG.normal(size=(H, C)).astype(np.float32)
B2 = RNG.normal(size=C).astype(np.float32)
X = RNG.normal(size=(B, D)).astype(np.float32)
BASE = (0.3 * RNG.normal(size=(B, D))).astype(np.float32)
TARGET = np.array([0, 2, 1, 2])
RTOL64 = 1e-9  # float64 parity, relative to the largest reference value (see test_matches_captum)
U32 = 2.0 ** -24  # float32 unit roundoff


def mlp(x):
  return jnp.tanh(x @ W1 + B1) @ W2 + B2


def _weight_moments(method, n):
  """Weight sum and first moment sum_k w_k a_k of captum's rules, derived by hand."""
  return {
      "gausslegendre": (1.0, 0.5),
      "riemann_left": (1.0, (n - 1) / (2 * n)),
      "riemann_right": (1.0, (n + 1) / (2 * n)),
      "riemann_middle": (1.0, 0.5),
      "riemann_trapezoid": (1 - 1 / n, 0.5 * (1 - 1 / n)),
  }[method]


def test_approximation_parameters_hand_values():
  a, w = approximation_parameters("riemann_trapezoid", 3)
  np.testing.assert_allclose(a, [0, 0.5, 1])
  np.testing.assert_allclose(w, [1 / 6, 1 / 3, 1 / 6])
  a, w = approximation_parameters("gausslegendre", 2)
  np.testing.assert_allclose(a, [0.5 - 0.5 / np.sqrt(3), 0.5 + 0.5 / np.sqrt(3)])
  np.testing.assert_allclose(w, [0.5, 0.5])
  a, w = approximation_parameters("riemann_middle", 4)
  np.testing.assert_allclose(a, [1 / 8, 3 / 8, 5 / 8, 7 / 8])
  np.testing.assert_allclose(w, [0.25] * 4)


@pytest.mark.parametrize("n", [2, 7, 50])
@pytest.mark.parametrize("method", METHODS)
def test_approximation_parameters_match_captum(method, n):
  am = pytest.importorskip("captum.attr._utils.approximation_methods")
  steps_fn, alphas_fn = am.approximation_parameters(method)
  a, w = approximation_parameters(method, n)
  # captum: float32 linspace: the step (end - start) / (n - 1), its product with the index and the
  # sum with start (or end) are rounded, each <= U32 of a value <= 1, then the result: <= 4 U32.
  np.testing.assert_allclose(a, alphas_fn(n), rtol=0, atol=4 * U32)
  np.testing.assert_allclose(w, steps_fn(n), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [2, 20])
@pytest.mark.parametrize("method", METHODS)
def test_linear_model_closed_form(method, n):
  w = RNG.normal(size=(D, C)).astype(np.float32)
  fn = lambda x: x @ w + 1.5
  attr, delta = integrated_gradients(fn, X, target=TARGET, baselines=BASE, n_steps=n,
                                     method=method, return_convergence_delta=True)
  total_w, _ = _weight_moments(method, n)
  expected = total_w * (X - BASE) * w[:, TARGET].T
  np.testing.assert_allclose(attr, expected, rtol=1e-5, atol=1e-6)
  # Completeness holds exactly for rules whose weights sum to 1; captum's trapezoid misses 1/n.
  full = ((X - BASE) * w[:, TARGET].T).sum(1)
  np.testing.assert_allclose(delta, (total_w - 1) * full, atol=2e-5)


@pytest.mark.parametrize("n", [2, 20])
@pytest.mark.parametrize("method", METHODS)
def test_quadratic_model_closed_form(method, n):
  """f(x) = x^T A x: grad = S (b + a d), S = A + A^T, so IG = d * (sum w_k S b + sum w_k a_k S d).

  Exact integral: d * S (x + b) / 2. Gauss-Legendre and the midpoint rule are exact for this
  linear-in-a integrand; left / right sums are off by -/+ d * S d / (2n); captum's trapezoid
  gives (1 - 1/n) times the exact value.
  """
  a = RNG.normal(size=(D, D)).astype(np.float32)
  fn = lambda x: jnp.einsum("bi,ij,bj->b", x, a, x)
  s = (a + a.T).astype(np.float64)
  x, b = X.astype(np.float64), BASE.astype(np.float64)
  d = x - b
  exact = d * ((x + b) @ s.T) / 2
  np.testing.assert_allclose(exact.sum(1), np.einsum("bi,ij,bj->b", x, a, x)
                             - np.einsum("bi,ij,bj->b", b, a, b), rtol=1e-6)
  expected = {
      "gausslegendre": exact,
      "riemann_middle": exact,
      "riemann_left": exact - d * (d @ s.T) / (2 * n),
      "riemann_right": exact + d * (d @ s.T) / (2 * n),
      "riemann_trapezoid": (1 - 1 / n) * exact,
  }[method]
  attr = integrated_gradients(fn, X, baselines=BASE, n_steps=n, method=method)
  np.testing.assert_allclose(attr, expected, rtol=1e-4, atol=1e-4)


def test_cubic_needs_two_gauss_legendre_points():
  """f = sum_i c_i x_i^3: IG_i = c_i (x_i^3 - b_i^3); the integrand is quadratic in a, so GL with
  2 points (degree 3) is exact and 1 point (the midpoint) is not."""
  c = RNG.normal(size=D).astype(np.float32)
  fn = lambda x: (c * x ** 3).sum(1)
  exact = c * (X.astype(np.float64) ** 3 - BASE.astype(np.float64) ** 3)
  two = integrated_gradients(fn, X, baselines=BASE, n_steps=2, method="gausslegendre")
  np.testing.assert_allclose(two, exact, rtol=1e-5, atol=1e-5)
  one = integrated_gradients(fn, X, baselines=BASE, n_steps=1, method="gausslegendre")
  # Midpoint error of int_0^1 3 c (b + a d)^2 d da is -c d^3 / 4.
  np.testing.assert_allclose(one - exact, -c * (X - BASE).astype(np.float64) ** 3 / 4,
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle",
                                    "riemann_trapezoid", "gausslegendre"])
def test_completeness_delta_shrinks_with_steps(method):
  deltas = []
  for n in (5, 20, 80):
    attr, delta = integrated_gradients(mlp, X, target=TARGET, baselines=BASE, n_steps=n,
                                       method=method, return_convergence_delta=True)
    fx = np.asarray(mlp(X))[np.arange(B), TARGET]
    fb = np.asarray(mlp(BASE))[np.arange(B), TARGET]
    np.testing.assert_allclose(delta, np.asarray(attr).sum(1) - (fx - fb), atol=1e-5)
    deltas.append(np.abs(np.asarray(delta)).mean())
  if method == "gausslegendre":
    assert deltas[0] < 0.05 and deltas[2] < 1e-5, deltas
  else:
    assert deltas[0] > deltas[1] > deltas[2], deltas
    assert deltas[0] > 1e-3, deltas
  if method == "riemann_middle":  # O(1/n^2)
    assert deltas[2] < 0.1 * deltas[0]


@pytest.mark.parametrize("method", METHODS)
def test_matches_captum(method):
  """Float64 on both sides. In float32 the two differ by ~1e-6 (summation order of the MLP and of
  the steps); float64's unit roundoff is 2^29 ~ 5e8 times smaller, so RTOL64 has a wide margin,
  while a wrong step weight or path point gives >~1e-3. Both must use the same alphas: captum takes
  them from a float32 linspace, exact for dyadic values, so n_steps is 16 (17 for the trapezoid,
  whose alphas are k / (n - 1)); both round the step weights to float32 (captum's .float())."""
  torch = pytest.importorskip("torch")
  captum_attr = pytest.importorskip("captum.attr")
  am = pytest.importorskip("captum.attr._utils.approximation_methods")
  t = lambda a: torch.tensor(np.asarray(a, np.float64))
  n = 17 if method == "riemann_trapezoid" else 16
  np.testing.assert_array_equal(approximation_parameters(method, n)[0],
                                am.approximation_parameters(method)[1](n))

  def torch_mlp(x, s):
    return torch.tanh((x * s[:, None]) @ t(W1) + t(B1)) @ t(W2) + t(B2)

  scale = np.array([1.0, 0.5, -1.0, 2.0])
  x, base = X.astype(np.float64), BASE.astype(np.float64)
  ref, ref_delta = captum_attr.IntegratedGradients(torch_mlp).attribute(
      t(x), baselines=t(base), target=torch.tensor(TARGET), additional_forward_args=(t(scale),),
      n_steps=n, method=method, return_convergence_delta=True)
  assert ref.dtype == torch.float64
  fn = lambda x, s: mlp(x * s[:, None])
  with jax.enable_x64(True):
    attr, delta = integrated_gradients(fn, x, target=TARGET, baselines=base,
                                       additional_forward_args=(scale,), n_steps=n, method=method,
                                       return_convergence_delta=True)
  assert attr.dtype == np.float64
  ref, ref_delta = ref.numpy(), ref_delta.numpy()
  np.testing.assert_array_less(np.abs(np.asarray(attr) - ref), RTOL64 * np.abs(ref).max())
  np.testing.assert_array_less(np.abs(np.asarray(delta) - ref_delta), RTOL64 * np.abs(ref).max())


@pytest.mark.parametrize("internal_batch_size", [1, 8, 1000])
def test_internal_batch_size_equals_full_batch(internal_batch_size):
  calls = []

  def counting_mlp(x):
    calls.append(x.shape[0])
    return mlp(x)

  kw = dict(target=TARGET, baselines=BASE, n_steps=7, method="riemann_trapezoid",
            return_convergence_delta=True)
  full, full_delta = integrated_gradients(mlp, X, **kw)
  part, part_delta = integrated_gradients(counting_mlp, X, internal_batch_size=internal_batch_size,
                                          **kw)
  np.testing.assert_allclose(part, full, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(part_delta, full_delta, rtol=1e-6, atol=1e-6)
  per_call = min(7, max(1, internal_batch_size // B))
  assert calls[0] == per_call * B  # one traced forward per chunk (then the delta's 2B call)


def test_target_int_equals_array_and_rows():
  a_int = integrated_gradients(mlp, X, target=1, n_steps=10)
  a_arr = integrated_gradients(mlp, X, target=np.ones(B, np.int32), n_steps=10)
  a_list = integrated_gradients(mlp, X, target=[1] * B, n_steps=10)
  np.testing.assert_allclose(a_int, a_arr, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(a_int, a_list, rtol=1e-6, atol=1e-7)
  mixed = integrated_gradients(mlp, X, target=TARGET, n_steps=10)
  for i in range(B):
    row = integrated_gradients(mlp, X[i:i + 1], target=int(TARGET[i]), n_steps=10)
    np.testing.assert_allclose(mixed[i], row[0], rtol=1e-5, atol=1e-6)


def test_neutral_baseline_broadcasts_and_default_is_zero():
  neutral = BASE[0]  # one (D,) baseline for every example
  a = integrated_gradients(mlp, X, target=TARGET, baselines=neutral, n_steps=8)
  b = integrated_gradients(mlp, X, target=TARGET, baselines=np.tile(neutral, (B, 1)), n_steps=8)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  z = integrated_gradients(mlp, X, target=TARGET, n_steps=8)
  z0 = integrated_gradients(mlp, X, target=TARGET, baselines=0.0, n_steps=8)
  np.testing.assert_allclose(z, z0, rtol=1e-6, atol=1e-7)
  assert not np.allclose(a, z)


def test_pytree_inputs_equal_concatenated_array():
  inputs = {"lm": X[:, :3], "au": X[:, 3:]}
  bases = {"lm": BASE[:, :3], "au": BASE[:, 3:]}
  fn_tree = lambda t: mlp(jnp.concatenate([t["lm"], t["au"]], axis=1))
  attr, delta = integrated_gradients(fn_tree, inputs, target=TARGET, baselines=bases, n_steps=12,
                                     return_convergence_delta=True)
  ref, ref_delta = integrated_gradients(mlp, X, target=TARGET, baselines=BASE, n_steps=12,
                                        return_convergence_delta=True)
  np.testing.assert_allclose(attr["lm"], ref[:, :3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attr["au"], ref[:, 3:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(delta, ref_delta, atol=1e-5)
  scalar_base = integrated_gradients(fn_tree, inputs, target=TARGET, baselines=0.0, n_steps=12)
  ref0 = integrated_gradients(mlp, X, target=TARGET, n_steps=12)
  np.testing.assert_allclose(scalar_base["au"], ref0[:, 3:], rtol=1e-5, atol=1e-6)


def test_scalar_output_and_jit():
  fn = lambda x: mlp(x)[:, 2]  # (N,) outputs: no target
  eager, d1 = integrated_gradients(fn, X, baselines=BASE, n_steps=9, method="riemann_middle",
                                   internal_batch_size=8, return_convergence_delta=True)
  ref = integrated_gradients(mlp, X, target=2, baselines=BASE, n_steps=9, method="riemann_middle")
  np.testing.assert_allclose(eager, ref, rtol=1e-5, atol=1e-6)
  jitted = jax.jit(functools.partial(integrated_gradients, mlp, n_steps=9, method="riemann_middle",
                                     internal_batch_size=8, return_convergence_delta=True))
  a, d2 = jitted(X, jnp.full((B,), 2), BASE)
  np.testing.assert_allclose(a, eager, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(d2, d1, atol=1e-5)


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="method must be one of"):
    integrated_gradients(mlp, X, target=0, method="simpson")
  with pytest.raises(ValueError, match="n_steps must be >= 2"):
    integrated_gradients(mlp, X, target=0, n_steps=1, method="riemann_left")
  with pytest.raises(ValueError, match="pass target"):
    integrated_gradients(mlp, X)
  with pytest.raises(ValueError, match=r"target 3 is outside \[0, 3\)"):
    integrated_gradients(mlp, X, target=3)
  with pytest.raises(ValueError, match=r"target values must lie in \[0, 3\)"):
    integrated_gradients(mlp, X, target=np.array([0, 1, 5, 0]))
  with pytest.raises(ValueError, match=r"shape \(4,\)"):
    integrated_gradients(mlp, X, target=np.zeros(3, int))
  with pytest.raises(ValueError, match="does not broadcast"):
    integrated_gradients(mlp, X, target=0, baselines=np.zeros((B, D + 1), np.float32))
  with pytest.raises(ValueError, match="floating point"):
    integrated_gradients(mlp, X.astype(np.int32), target=0)
  with pytest.raises(ValueError, match="leading dim 4"):
    integrated_gradients(lambda x, s: mlp(x * s[:, None]), X, target=0,
                         additional_forward_args=(np.ones(3, np.float32),))
  with pytest.raises(ValueError, match="internal_batch_size"):
    integrated_gradients(mlp, X, target=0, internal_batch_size=0)


# ------------------------------------------------------------------------------------------------
# PAIR saliency adapter.
# ------------------------------------------------------------------------------------------------


def test_pair_adapter_gradients_values_and_keys():
  cmf = pair_saliency_call_model_function(mlp)
  out = cmf(X, call_model_args={"class_idx_str": 2},
            expected_keys=[INPUT_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES])
  assert set(out) == {INPUT_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES}
  assert isinstance(out[INPUT_OUTPUT_GRADIENTS], np.ndarray)
  ref = jax.vmap(jax.grad(lambda x: mlp(x[None])[0, 2]))(X)
  np.testing.assert_allclose(out[INPUT_OUTPUT_GRADIENTS], ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[OUTPUT_LAYER_VALUES], np.asarray(mlp(X))[:, 2], rtol=1e-6)
  # Default keys, a custom class key, per-example classes and PAIR's softmax variant.
  soft = pair_saliency_call_model_function(mlp, class_idx_key="cls", output_fn=jax.nn.softmax)
  got = soft(X, {"cls": TARGET})
  assert list(got) == [INPUT_OUTPUT_GRADIENTS]
  ref = jax.vmap(lambda x, t: jax.grad(lambda z: jax.nn.softmax(mlp(z[None]))[0, t])(x))(
      X, TARGET)
  np.testing.assert_allclose(got[INPUT_OUTPUT_GRADIENTS], ref, rtol=1e-5, atol=1e-6)


def test_pair_adapter_convolution_keys():
  wf = RNG.normal(size=(D, 6)).astype(np.float32)
  wh = RNG.normal(size=(6, C)).astype(np.float32)
  features = lambda x: jax.nn.relu(x @ wf)
  head = lambda f: jnp.sin(f) @ wh
  cmf = pair_saliency_call_model_function(conv_split=(features, head))
  keys = [CONVOLUTION_LAYER_VALUES, CONVOLUTION_OUTPUT_GRADIENTS,
          INPUT_OUTPUT_GRADIENTS]
  out = cmf(X, {"class_idx_str": 1}, keys)
  f = np.asarray(features(X))
  np.testing.assert_allclose(out[CONVOLUTION_LAYER_VALUES], f, rtol=1e-6)
  np.testing.assert_allclose(out[CONVOLUTION_OUTPUT_GRADIENTS], np.cos(f) * wh[:, 1],
                             rtol=1e-5, atol=1e-6)
  ref = jax.vmap(jax.grad(lambda x: head(features(x[None]))[0, 1]))(X)
  np.testing.assert_allclose(out[INPUT_OUTPUT_GRADIENTS], ref, rtol=1e-5, atol=1e-6)


def test_pair_adapter_errors():
  cmf = pair_saliency_call_model_function(mlp)
  with pytest.raises(ValueError, match="class_idx_str"):
    cmf(X, call_model_args={})
  with pytest.raises(ValueError, match="unsupported expected_keys"):
    cmf(X, {"class_idx_str": 0}, ["OUTPUT_LAYER_GRADIENTS"])
  with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
    cmf(X, {"class_idx_str": np.array([0, 1, 2, 3])})
  with pytest.raises(ValueError, match="conv_split"):
    cmf(X, {"class_idx_str": 0}, [CONVOLUTION_LAYER_VALUES])


def test_pair_style_ig_loop_equals_riemann_right():
  """PAIR's IntegratedGradients.GetMask loop (batches of path points through call_model_function,
  summed gradients times x_diff / steps), on the points k / n, k = 1..n: riemann_right."""
  cmf = pair_saliency_call_model_function(mlp)
  x_value, x_baseline, steps, batch_size = X[1], BASE[1], 10, 3
  x_diff = x_value - x_baseline
  total = np.zeros_like(x_value)
  pending = []
  for alpha in np.arange(1, steps + 1) / steps:
    pending.append(x_baseline + alpha * x_diff)
    if len(pending) == batch_size or alpha == 1.0:
      data = cmf(np.array(pending), {"class_idx_str": 2}, [INPUT_OUTPUT_GRADIENTS])
      assert data[INPUT_OUTPUT_GRADIENTS].shape == (len(pending),) + x_value.shape
      total += data[INPUT_OUTPUT_GRADIENTS].sum(axis=0)
      pending = []
  pair_mask = total * x_diff / steps
  ours = integrated_gradients(mlp, X[1:2], target=2, baselines=BASE[1:2], n_steps=steps,
                              method="riemann_right")
  np.testing.assert_allclose(pair_mask, ours[0], rtol=1e-5, atol=1e-6)
