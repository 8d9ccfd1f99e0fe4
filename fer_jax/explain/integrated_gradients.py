"""Integrated Gradients (Sundararajan, Taly & Yan, ICML 2017) with captum's API and quadratures.

IG of input feature ``i`` for output ``F`` along the straight path from a baseline ``x'`` to ``x``
(paper eq. 1)::

    IG_i(x) = (x_i - x'_i) * int_0^1 dF(x' + a (x - x')) / dx_i da

approximated (paper eq. 3) by a weighted sum over ``n_steps`` path points ``a_k`` with weights
``w_k``. The points and weights are captum's (``captum.attr._utils.approximation_methods``):

  ================== =============================== ==========================================
  method             a_k (k = 0..n-1)                w_k
  ================== =============================== ==========================================
  gausslegendre      (1 + t_k) / 2, t_k GL nodes     v_k / 2, v_k GL weights on [-1, 1]
  riemann_left       k / n                           1 / n
  riemann_right      (k + 1) / n                     1 / n
  riemann_middle     (k + 1/2) / n                   1 / n
  riemann_trapezoid  k / (n - 1)                     1 / n, halved at both ends
  ================== =============================== ==========================================

Note captum's trapezoid weights sum to ``1 - 1/n`` (not 1), so for a linear model its attributions
are ``(1 - 1/n) (x - x') w`` rather than exactly ``(x - x') w``; we keep captum's numbers so the two
libraries agree. Gauss-Legendre with ``n`` points integrates polynomials of degree ``2n - 1`` in
``a`` exactly; the left / right sums have O(1/n) error, the midpoint sum O(1/n^2).

The completeness axiom (paper, Prop. 1) says ``sum_i IG_i = F(x) - F(x')``; the convergence delta
``sum_i IG_i - (F(x) - F(x'))`` per example measures the quadrature error.

Also: an adapter that exposes a JAX model as PAIR saliency's ``call_model_function`` (so its
SmoothGrad / XRAI / Grad-CAM code can run on our models without this package importing it).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "METHODS", "approximation_parameters", "integrated_gradients", "select_target",
    "INPUT_OUTPUT_GRADIENTS", "OUTPUT_LAYER_VALUES", "CONVOLUTION_LAYER_VALUES",
    "CONVOLUTION_OUTPUT_GRADIENTS", "pair_saliency_call_model_function",
]

METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def approximation_parameters(method: str, n_steps: int) -> Tuple[np.ndarray, np.ndarray]:
  """Returns ``(alphas, step_sizes)``, float64 arrays of length ``n_steps`` (captum's values)."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
    raise ValueError(f"n_steps must be a Python int, got {n_steps!r}")
  n = int(n_steps)
  if method == "gausslegendre":
    if n < 1:
      raise ValueError(f"n_steps must be >= 1 for gausslegendre, got {n}")
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return 0.5 * (1.0 + nodes), 0.5 * weights
  if n < 2:
    raise ValueError(f"n_steps must be >= 2 for {method}, got {n}")
  k = np.arange(n, dtype=np.float64)
  steps = np.full(n, 1.0 / n)
  if method == "riemann_left":
    alphas = k / n
  elif method == "riemann_right":
    alphas = (k + 1) / n
  elif method == "riemann_middle":
    alphas = (k + 0.5) / n
  else:  # riemann_trapezoid
    alphas = k / (n - 1)
    steps[0] /= 2
    steps[-1] /= 2
  return alphas, steps


def select_target(outputs: jax.Array, target: Optional[jax.Array]) -> jax.Array:
  """Picks ``outputs[i, target[i]]`` from (N, C) outputs; (N,) or (N, 1) outputs need no target.

  ``target`` is None, a Python int, or an (N,) integer array.
  """
  if outputs.ndim == 2 and outputs.shape[1] == 1 and target is None:
    return outputs[:, 0]
  if outputs.ndim == 1:
    if target is not None:
      raise ValueError(f"fn returns one value per example (shape {outputs.shape}); target must be "
                       f"None, got {target!r}")
    return outputs
  if outputs.ndim != 2:
    raise ValueError(f"fn must return outputs of shape (N,) or (N, C), got {outputs.shape}")
  if target is None:
    raise ValueError(f"fn returns {outputs.shape[1]} outputs per example (shape {outputs.shape}); "
                     "pass target (an int or an (N,) array of class indices)")
  if isinstance(target, (int, np.integer)):
    if not 0 <= int(target) < outputs.shape[1]:
      raise ValueError(f"target {int(target)} is outside [0, {outputs.shape[1]})")
    return outputs[:, int(target)]
  target = jnp.asarray(target)
  if target.shape != outputs.shape[:1]:
    raise ValueError(f"target must be an int or have shape {outputs.shape[:1]}, got {target.shape}")
  if not isinstance(target, jax.core.Tracer):
    t = np.asarray(target)
    if t.size and (t.min() < 0 or t.max() >= outputs.shape[1]):
      raise ValueError(f"target values must lie in [0, {outputs.shape[1]}), got range "
                       f"[{t.min()}, {t.max()}]")
  return jnp.take_along_axis(outputs, target[:, None].astype(jnp.int32), axis=1)[:, 0]


def _check_target(target, batch: int):
  """Normalises target to None, an int or a (B,) integer array (shape and dtype checked)."""
  if target is None or isinstance(target, (int, np.integer)):
    if isinstance(target, bool):
      raise ValueError(f"target must be None, an int or a ({batch},) array, got {target!r}")
    return None if target is None else int(target)
  if isinstance(target, (list, tuple)):
    target = np.asarray(target)
  if not hasattr(target, "shape") or not hasattr(target, "dtype"):
    raise ValueError(f"target must be None, an int or a ({batch},) array, got {target!r}")
  if target.shape == ():
    if isinstance(target, np.ndarray):
      return int(target)
    return jnp.broadcast_to(jnp.asarray(target), (batch,))
  if target.shape != (batch,):
    raise ValueError(f"target must be an int or have shape ({batch},) (one class per example), got "
                     f"shape {target.shape}")
  if not jnp.issubdtype(target.dtype, jnp.integer):
    raise ValueError(f"target must hold integers, got dtype {target.dtype}")
  return target


def _tile(x, times: int):
  """Repeats the whole batch ``times`` times along axis 0 (step-major, as captum does)."""
  return jnp.concatenate([x] * times, axis=0) if times > 1 else x


def _expand_args(args: Tuple[Any, ...], times: int, batch: int) -> Tuple[Any, ...]:
  """Tiles array leaves of ``args`` (per-example, leading dim ``batch``) along axis 0."""
  def expand(leaf):
    if isinstance(leaf, (jax.Array, np.ndarray)) and np.ndim(leaf) >= 1:
      if leaf.shape[0] != batch:
        raise ValueError(f"additional_forward_args arrays must be per-example with leading dim "
                         f"{batch}, got shape {leaf.shape}; pass other values through a closure")
      return _tile(jnp.asarray(leaf), times)
    return leaf
  return jax.tree.map(expand, args)


def _prepare(inputs, baselines):
  """Checks inputs / baselines; returns (treedef, input leaves, baseline leaves, batch size)."""
  leaves, treedef = jax.tree.flatten(inputs)
  if not leaves:
    raise ValueError("inputs is empty")
  leaves = [jnp.asarray(x) for x in leaves]
  for x in leaves:
    if x.ndim < 1:
      raise ValueError(f"every input needs a leading batch dimension, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"inputs must be floating point (IG differentiates them), got {x.dtype}")
  batch = leaves[0].shape[0]
  if any(x.shape[0] != batch for x in leaves):
    raise ValueError(f"all inputs must share the batch size; got leading dims "
                     f"{[x.shape[0] for x in leaves]}")
  if baselines is None:
    base = [jnp.zeros_like(x) for x in leaves]
  else:
    if np.ndim(baselines) == 0 and not isinstance(baselines, (dict, list, tuple)):
      b_leaves = [baselines] * len(leaves)
    else:
      b_leaves, b_def = jax.tree.flatten(baselines)
      if len(leaves) == 1 and b_def != treedef:
        b_leaves = [baselines]
      elif b_def != treedef:
        raise ValueError(f"baselines must be a scalar or match the structure of inputs "
                         f"({treedef}), got {b_def}")
    base = []
    for x, b in zip(leaves, b_leaves):
      b = jnp.asarray(b, x.dtype)
      try:
        base.append(jnp.broadcast_to(b, x.shape))
      except ValueError as e:
        raise ValueError(f"baseline of shape {b.shape} does not broadcast to the input shape "
                         f"{x.shape}") from e
  return treedef, leaves, base, batch


def integrated_gradients(
    fn: Callable[..., jax.Array],
    inputs: Any,
    target: Any = None,
    baselines: Any = None,
    additional_forward_args: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: Optional[int] = None,
    return_convergence_delta: bool = False,
):
  """Integrated Gradients of ``fn`` at ``inputs``, with captum's semantics and defaults.

  Args:
    fn: maps a batch to outputs (N, C) (then ``target`` picks the class) or (N,). Called as
      ``fn(x, *additional_forward_args)``, where ``x`` has the structure of ``inputs`` and batch
      ``N = (points per call) * B``. Examples must not interact (BatchNorm in eval mode only): the
      gradient of the summed target outputs is taken, as in captum. Model parameters belong in a
      closure: ``fn = lambda x: model.apply(variables, x, train=False)``.
    inputs: an array (B, ...) or a pytree of arrays sharing the leading batch size B (e.g. a dict
      of landmarks and images); floating point.
    target: None (fn returns (N,) or (N, 1)), an int, or a (B,) integer array: one class index per
      example (may be a traced value under jit; values are range-checked only when concrete).
    baselines: None (zeros, captum's default), a scalar, an array broadcastable to each input
      (e.g. one (...) neutral face for the whole batch), or a pytree matching ``inputs``.
    additional_forward_args: None, one value or a tuple of extra positional args of ``fn``. Array
      leaves with ndim >= 1 are per-example (leading dim B) and are tiled with the path points,
      as in captum; other leaves (Python scalars, flags) pass through unchanged.
    n_steps: number of path points (static).
    method: one of ``METHODS`` (static); see the module docstring for the quadratures.
    internal_batch_size: None evaluates all ``n_steps * B`` path points in one call of ``fn``.
      Otherwise the points go ``max(1, internal_batch_size // B)`` steps (times B examples) per
      call, looped with ``lax.scan`` (one compiled body; the last chunk is padded with a
      zero-weight repeat of the final point). Results equal the full batch up to float rounding.
    return_convergence_delta: also return ``sum(attributions) - (F(x) - F(baseline))`` per example
      (summed over every input leaf), shape (B,).

  Returns:
    attributions with the structure and shapes of ``inputs`` (and the (B,) delta if asked).
    Wrap in ``jax.jit`` with ``fn``, ``n_steps``, ``method``, ``internal_batch_size`` and
    ``return_convergence_delta`` static (e.g. via ``functools.partial``) for speed.
  """
  alphas, steps = approximation_parameters(method, n_steps)
  if internal_batch_size is not None and (isinstance(internal_batch_size, bool) or not isinstance(
      internal_batch_size, (int, np.integer)) or internal_batch_size < 1):
    raise ValueError(f"internal_batch_size must be None or a positive int, got "
                     f"{internal_batch_size!r}")
  treedef, xs, bs, batch = _prepare(inputs, baselines)
  target = _check_target(target, batch)
  if additional_forward_args is None:
    args = ()
  elif isinstance(additional_forward_args, tuple):
    args = additional_forward_args
  else:
    args = (additional_forward_args,)
  diffs = [x - b for x, b in zip(xs, bs)]

  def target_sum(leaves, times):
    out = fn(jax.tree.unflatten(treedef, leaves), *_expand_args(args, times, batch))
    tgt = target if target is None or isinstance(target, int) else _tile(target, times)
    return select_target(jnp.asarray(out), tgt).sum()

  def chunk_grads(chunk_alphas, chunk_steps):
    """sum_k w_k dF/dx at the chunk's path points; chunk_* are (s,) arrays."""
    s = chunk_alphas.shape[0]
    points = []
    for b, d in zip(bs, diffs):
      a = chunk_alphas.astype(d.dtype).reshape((s,) + (1,) * d.ndim)
      points.append((b[None] + a * d[None]).reshape((s * batch,) + d.shape[1:]))
    grads = jax.grad(target_sum)(points, s)
    out = []
    for g, d in zip(grads, diffs):
      g = g.reshape((s,) + d.shape)
      w = chunk_steps.astype(jnp.float32).astype(g.dtype).reshape((s,) + (1,) * d.ndim)
      out.append(jnp.sum(g * w, axis=0))
    return out

  per_call = n_steps if internal_batch_size is None else max(1, internal_batch_size // batch)
  per_call = min(per_call, n_steps)
  if per_call >= n_steps:
    total = chunk_grads(jnp.asarray(alphas), jnp.asarray(steps))
  else:
    n_chunks = math.ceil(n_steps / per_call)
    pad = n_chunks * per_call - n_steps
    a_pad = np.concatenate([alphas, np.full(pad, alphas[-1])]).reshape(n_chunks, per_call)
    w_pad = np.concatenate([steps, np.zeros(pad)]).reshape(n_chunks, per_call)

    def body(acc, aw):
      g = chunk_grads(*aw)
      return [u + v for u, v in zip(acc, g)], None

    init = [jnp.zeros(d.shape, jnp.result_type(d.dtype, jnp.float32)) for d in diffs]
    total, _ = jax.lax.scan(body, init, (jnp.asarray(a_pad), jnp.asarray(w_pad)))

  attr_leaves = [(g * d).astype(d.dtype) for g, d in zip(total, diffs)]
  attributions = jax.tree.unflatten(treedef, attr_leaves)
  if not return_convergence_delta:
    return attributions
  ends = [jnp.concatenate([x, b], axis=0) for x, b in zip(xs, bs)]
  out = fn(jax.tree.unflatten(treedef, ends), *_expand_args(args, 2, batch))
  tgt = target if target is None or isinstance(target, int) else _tile(target, 2)
  values = select_target(jnp.asarray(out), tgt)
  attr_sum = sum(a.reshape(batch, -1).sum(axis=1) for a in attr_leaves)
  delta = attr_sum - (values[:batch] - values[batch:])
  return attributions, delta


# ------------------------------------------------------------------------------------------------
# PAIR saliency adapter (github.com/PAIR-code/saliency, saliency.core.base key names).
# ------------------------------------------------------------------------------------------------

CONVOLUTION_LAYER_VALUES = "CONVOLUTION_LAYER_VALUES"
CONVOLUTION_OUTPUT_GRADIENTS = "CONVOLUTION_OUTPUT_GRADIENTS"
INPUT_OUTPUT_GRADIENTS = "INPUT_OUTPUT_GRADIENTS"
OUTPUT_LAYER_VALUES = "OUTPUT_LAYER_VALUES"
_PAIR_KEYS = (INPUT_OUTPUT_GRADIENTS, OUTPUT_LAYER_VALUES, CONVOLUTION_LAYER_VALUES,
              CONVOLUTION_OUTPUT_GRADIENTS)


def pair_saliency_call_model_function(
    apply_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
    *,
    class_idx_key: str = "class_idx_str",
    output_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
    conv_split: Optional[Tuple[Callable[[jax.Array], jax.Array],
                               Callable[[jax.Array], jax.Array]]] = None,
    jit: bool = True,
) -> Callable[..., Dict[str, np.ndarray]]:
  """A JAX model as PAIR saliency's ``call_model_function(x_value_batch, call_model_args=None,
  expected_keys=None)``.

  Args:
    apply_fn: batch (N, ...) -> outputs (N, C) or (N,), e.g. ``lambda x: model.apply(v, x)``.
    class_idx_key: key of ``call_model_args`` holding the explained class (an int, or an (N,)
      array); PAIR's examples use ``'class_idx_str'``. Not needed for (N,) outputs.
    output_fn: applied to the outputs before picking the class (PAIR's PyTorch example explains
      ``softmax`` probabilities: pass ``jax.nn.softmax``); None explains the raw outputs.
    conv_split: optional ``(features_fn, head_fn)`` with ``apply_fn(x) == head_fn(features_fn(x))``,
      ``features_fn`` ending at the last convolution; enables the ``CONVOLUTION_*`` keys (Grad-CAM).
      When given, ``apply_fn`` may be None.
    jit: compile the per-shape computation (retraced for each new batch shape).

  The returned function gives numpy arrays: ``INPUT_OUTPUT_GRADIENTS`` (the gradient of the
  explained output wrt the input, shape of ``x_value_batch``), ``OUTPUT_LAYER_VALUES`` (N,),
  ``CONVOLUTION_LAYER_VALUES`` and ``CONVOLUTION_OUTPUT_GRADIENTS`` (N, ...features). With
  ``expected_keys=None`` it returns ``INPUT_OUTPUT_GRADIENTS`` only.
  """
  if apply_fn is None and conv_split is None:
    raise ValueError("pass apply_fn, or conv_split=(features_fn, head_fn)")
  if conv_split is not None:
    features_fn, head_fn = conv_split
  else:
    features_fn, head_fn = (lambda x: x), apply_fn

  def explained(head_in, target):
    out = head_fn(head_in)
    if output_fn is not None:
      out = output_fn(out)
    return select_target(jnp.asarray(out), target)

  def compute(x, target, want_conv):
    res = {}
    feats, pull = jax.vjp(features_fn, x)
    vals, pull_head = jax.vjp(lambda f: explained(f, target), feats)
    (g_feats,) = pull_head(jnp.ones_like(vals))
    res[INPUT_OUTPUT_GRADIENTS] = pull(g_feats)[0]
    res[OUTPUT_LAYER_VALUES] = vals
    if want_conv:
      res[CONVOLUTION_LAYER_VALUES] = feats
      res[CONVOLUTION_OUTPUT_GRADIENTS] = g_feats
    return res

  compiled = {}

  def call_model_function(x_value_batch, call_model_args=None, expected_keys=None):
    keys = [INPUT_OUTPUT_GRADIENTS] if expected_keys is None else list(expected_keys)
    unknown = [k for k in keys if k not in _PAIR_KEYS]
    if unknown:
      raise ValueError(f"unsupported expected_keys {unknown}; supported: {list(_PAIR_KEYS)}")
    want_conv = any(k.startswith("CONVOLUTION") for k in keys)
    if want_conv and conv_split is None:
      raise ValueError(f"{[k for k in keys if k.startswith('CONVOLUTION')]} need "
                       "conv_split=(features_fn, head_fn)")
    x = jnp.asarray(x_value_batch)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    if call_model_args is not None and not isinstance(call_model_args, Mapping):
      raise ValueError(f"call_model_args must be None or a dict, got {type(call_model_args)}")
    target = (call_model_args or {}).get(class_idx_key)
    if target is not None:
      target = _check_target(target, x.shape[0])
    mode = target if target is None or isinstance(target, int) else "array"
    if mode == "array":  # jit hides the values from select_target's range check
      out = jax.eval_shape(lambda z: head_fn(features_fn(z)), x)
      t = np.asarray(target)
      if len(out.shape) == 2 and (t.min() < 0 or t.max() >= out.shape[1]):
        raise ValueError(f"call_model_args[{class_idx_key!r}] must lie in [0, {out.shape[1]}), "
                         f"got range [{t.min()}, {t.max()}]")
    key = (want_conv, mode)
    if key not in compiled:
      static_target = target if isinstance(target, int) else None
      def run(x, t, static_target=static_target, want_conv=want_conv):
        return compute(x, static_target if static_target is not None else t, want_conv)
      compiled[key] = jax.jit(run) if jit else run
    try:
      res = compiled[key](x, None if isinstance(target, int) else target)
    except ValueError as e:
      if "target" in str(e):
        raise ValueError(f"{e} (the class index comes from call_model_args[{class_idx_key!r}])") \
            from e
      raise
    return {k: np.asarray(res[k]) for k in keys}

  return call_model_function
