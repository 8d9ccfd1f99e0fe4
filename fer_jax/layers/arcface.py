"""ArcFace-style cosine head and (combined) angular-margin softmax logits and loss.

Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019
(arXiv 1801.07698). With L2-normalised embedding x and class weights W_j the logits of an ordinary
softmax become cosines (eq. 1-3)

  cos(theta_j) = <x / |x|, W_j / |W_j|>,

and a margin is applied to the target class y only. The combined margin of section 3.3 is

  psi(theta_y) = cos(m1 * theta_y + m2) - m3,        logits_j = s * (psi(theta_y) if j == y else cos theta_j),

which covers ArcFace (m2, eq. 4), CosFace / AM-softmax (m3) and SphereFace-style multiplicative
margins (m1). Face-recognition defaults (s, m2) = (64, 0.5) are those of the paper and of insightface;
for expression recognition (few classes) they are a starting point, not a tuned choice: keep them
in config (see ../shared/PAPERS.md section 2).

Design: ``CosineHead`` is a plain Linen layer returning cosines (B, num_classes), so a model built on
it satisfies the fer_jax model contract (logits without labels; argmax of the cosines is the
prediction). The label-dependent margin lives in the pure functions ``combined_margin_logits`` and
``margin_softmax_loss``, used by the loss, as in insightface's arcface_torch (head -> margin
function -> softmax cross-entropy).

Numerics ("the clamp"). ``eps`` is a floor on sin^2(theta) = 1 - cos^2(theta):

* m1 == 1 (ArcFace / CosFace, no arccos): cos(theta + m2) = cos*cos(m2) - sin*sin(m2) with
  sin = sqrt(max(1 - cos^2, eps)). Where |cos| >= sqrt(1 - eps) (including cos = +-1 exactly, and
  inputs a rounding error outside [-1, 1]) sin is the constant sqrt(eps): the gradient through it is
  0 instead of the true, infinite one, and the value is off by at most sin(m2)*sqrt(eps)
  (1.5e-4 for eps = 1e-7, m2 = 0.5). Elsewhere values and gradients are exact.
* m1 != 1 (general form): theta = arccos(clip(cos, -c, c)) with c = sqrt(1 - eps) rounded to the
  compute dtype (and kept strictly below 1), so arccos and its gradient stay finite; the gradient is
  0 outside [-c, c].
The margin arithmetic runs in at least float32 (bf16/fp16 cosines are upcast, the logits are returned
in that float32-or-wider dtype).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

IGNORE_LABEL = -1
DEFAULT_EPS = 1e-7

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------
# Head.
# ----------------------------------------------------------------------------------------------
def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """x / max(|x|, eps) along ``axis`` (as torch.nn.functional.normalize); finite gradient at x = 0."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(eps, sq.dtype) ** 2))


class CosineHead(nn.Module):
  """Cosine-similarity classifier (ArcFace eq. 1-3): cos_j = <x/|x|, W_j/|W_j|>.

  Input (..., features); output cosines (..., num_classes) in [-1, 1] (up to rounding). The
  parameter 'kernel' has shape (features, num_classes), column j being the class-j weight W_j (the
  layout of ``nn.Dense``, without bias). Feed the output to ``margin_softmax_loss`` for training;
  at inference the argmax of the cosines (the margin only touches the target logit) is the class.

  Attributes:
    num_classes: number of classes.
    kernel_init: initialiser of the kernel; default N(0, 0.01^2) as insightface's arcface_torch
      (the scale is irrelevant to the forward pass, only to optimiser dynamics / weight decay).
    dtype: computation dtype (None: promote the input and parameter dtypes).
    param_dtype: parameter dtype.
    eps: lower bound on the norms of x and W_j (x / max(|x|, eps)), so zero vectors give 0 cosines
      and finite gradients.
    precision: precision of the matmul (on TPU, ``'highest'`` avoids bf16 passes for f32 inputs).
  """
  num_classes: int
  kernel_init: Callable[..., Any] = nn.initializers.normal(stddev=0.01)
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  eps: float = 1e-12
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.num_classes < 1:
      raise ValueError(f"CosineHead: num_classes must be >= 1, got {self.num_classes}")
    if x.ndim < 1:
      raise ValueError(f"CosineHead expects x of shape (..., features), got shape {x.shape}")
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.num_classes),
                        self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    # Normalise in >= float32 (bf16 sums of squares lose too much), cast back for the matmul.
    acc = jnp.promote_types(x.dtype, jnp.float32)
    xn = l2_normalize(x.astype(acc), axis=-1, eps=self.eps).astype(x.dtype)
    wn = l2_normalize(kernel.astype(acc), axis=0, eps=self.eps).astype(kernel.dtype)
    return jnp.matmul(xn, wn, precision=self.precision)


# ----------------------------------------------------------------------------------------------
# Margin functions.
# ----------------------------------------------------------------------------------------------
def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_margins(scale, m1, m2, m3, eps) -> None:
  """Validates concrete (non-traced) hyper-parameters; traced ones are taken as given."""
  if not _is_concrete(m1):
    raise ValueError("m1 must be a static Python number (it selects the code path), got a tracer")
  m1 = float(m1)
  if not (math.isfinite(m1) and m1 >= 1.0):
    raise ValueError(f"m1 (multiplicative angular margin) must be a finite number >= 1, got {m1}")

  def chk(name, v, ok, what):
    if _is_concrete(v):
      v = np.asarray(v)
      if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
      v = float(v)
      if not (math.isfinite(v) and ok(v)):
        raise ValueError(f"{name} must be {what}, got {v}")

  chk("scale", scale, lambda v: v > 0, "> 0")
  chk("m2", m2, lambda v: 0 <= v < math.pi, "in [0, pi) (additive angular margin, radians)")
  chk("m3", m3, lambda v: v >= 0, ">= 0 (additive cosine margin)")
  if not _is_concrete(eps):
    raise ValueError("eps must be a static Python number, got a tracer")
  chk("eps", eps, lambda v: 0 < v < 1, "in (0, 1)")


def _check_labels(cosine: Array, labels: Array) -> Array:
  if cosine.ndim < 1:
    raise ValueError(f"cosine must have shape (..., num_classes), got shape {cosine.shape}")
  labels = jnp.asarray(labels) if _is_concrete(labels) else labels
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer class indices (or {IGNORE_LABEL} to ignore a row), "
                     f"got dtype {labels.dtype}")
  if labels.shape != cosine.shape[:-1]:
    raise ValueError(f"labels shape {labels.shape} must equal cosine shape without its class axis "
                     f"{cosine.shape[:-1]} (cosine shape {cosine.shape})")
  if _is_concrete(labels):
    k = cosine.shape[-1]
    lab = np.asarray(labels)
    bad = lab[(lab != IGNORE_LABEL) & ((lab < 0) | (lab >= k))]
    if bad.size:
      raise ValueError(f"label {int(bad.flat[0])} out of range: expected 0..{k - 1} for {k} classes "
                       f"or {IGNORE_LABEL} (ignored row)")
  return labels


def _compute_dtype(cosine: Array):
  dt = cosine.dtype if jnp.issubdtype(cosine.dtype, jnp.floating) else jnp.float32
  return jnp.promote_types(dt, jnp.float32)


def _cos_bound(eps: float, dtype) -> np.ndarray:
  """sqrt(1 - eps) in ``dtype``, forced strictly below 1 (so arccos' gradient is finite)."""
  one = np.ones((), np.dtype(dtype))
  c = np.asarray(math.sqrt(1.0 - float(eps)), np.dtype(dtype))
  return np.nextafter(one, -one) if c >= one else c


def margin_target(cos: Array, *, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                  easy_margin: bool = False, eps: float = DEFAULT_EPS) -> Array:
  """psi(cos theta) = cos(m1*theta + m2) - m3 elementwise (unscaled), with the fallbacks below.

  * m1 == 1: cos(theta + m2) = cos*cos(m2) - sin*sin(m2), no arccos. Unless ``easy_margin``, where
    theta + m2 > pi (cos <= cos(pi - m2)) the non-monotonic cos(theta + m2) is replaced by
    cos(theta) - m2*sin(m2) (insightface: th = cos(pi - m), mm = sin(pi - m) * m; sin(pi - m) = sin m).
  * m1 != 1: theta = arccos(clipped cos); no fallback (as insightface's original combined margin),
    so psi is not monotonic past theta = (pi - m2) / m1.
  * ``easy_margin``: the whole margin applies only where cos > 0 (theta < pi/2): psi = cos elsewhere.
  See the module docstring for the ``eps`` clamp. No validation here (see combined_margin_logits).
  """
  dt = _compute_dtype(cos)
  c = cos.astype(dt)
  if m1 == 1.0:
    sin = jnp.sqrt(jnp.maximum(1.0 - c * c, jnp.asarray(eps, dt)))
    m2a = jnp.asarray(m2, dt)
    phi = c * jnp.cos(m2a) - sin * jnp.sin(m2a)
    if not easy_margin:
      th = -jnp.cos(m2a)                     # cos(pi - m2)
      mm = jnp.sin(m2a) * m2a                # sin(pi - m2) * m2
      phi = jnp.where(c > th, phi, c - mm)
  else:
    cmax = _cos_bound(eps, dt)
    theta = jnp.arccos(jnp.clip(c, -cmax, cmax))
    phi = jnp.cos(m1 * theta + jnp.asarray(m2, dt))
  phi = phi - jnp.asarray(m3, dt)
  if easy_margin:
    phi = jnp.where(c > 0, phi, c)
  return phi


def combined_margin_logits(cosine: Array, labels: Array, *, scale: float = 64.0, m1: float = 1.0,
                           m2: float = 0.5, m3: float = 0.0, easy_margin: bool = False,
                           eps: float = DEFAULT_EPS) -> Array:
  """Scaled logits s * cos theta_j, with the target class replaced by s * psi(theta_y) (ArcFace §3.3).

  Args:
    cosine: (..., num_classes) cosines, e.g. from ``CosineHead``.
    labels: integer (...) target classes; ``-1`` (``IGNORE_LABEL``) marks a row without a label
      (unlabelled / padding): no margin is applied to it (its logits are s * cos). With concrete
      labels any other value outside [0, num_classes) raises ValueError; under jit they cannot be
      checked and such a row silently gets no margin.
    scale: s > 0 (paper / insightface default 64).
    m1: multiplicative angular margin (SphereFace-like), >= 1, static Python number.
    m2: additive angular margin in radians (ArcFace), in [0, pi).
    m3: additive cosine margin (CosFace), >= 0.
    easy_margin: apply the margin only where cos theta_y > 0 (instead of the theta + m2 > pi fallback).
    eps: floor on sin^2 theta (see module docstring).

  Returns:
    (..., num_classes) logits in float32 (or wider, if the cosines are).

  Raises:
    ValueError: invalid margins / scale / eps, wrong label shape or dtype, out-of-range labels.
  """
  _check_margins(scale, m1, m2, m3, eps)
  labels = _check_labels(cosine, labels)
  dt = _compute_dtype(cosine)
  return _margin_logits(cosine, labels, jnp.asarray(scale, dt), jnp.asarray(m2, dt),
                        jnp.asarray(m3, dt), m1=float(m1), easy_margin=bool(easy_margin),
                        eps=float(eps))


@functools.partial(jax.jit, static_argnames=("m1", "easy_margin", "eps"))
def _margin_logits(cosine, labels, scale, m2, m3, *, m1, easy_margin, eps):
  # One compiled program per (m1, easy_margin, eps, shapes): cheap eager use; inlined under jit.
  c = cosine.astype(scale.dtype)
  target = jax.nn.one_hot(labels, c.shape[-1], dtype=jnp.bool_)   # label -1 -> all False
  # Compute psi only on the target cosine (cheap for many classes), then scatter it back.
  cy = jnp.sum(jnp.where(target, c, 0), axis=-1, keepdims=True)
  psi = margin_target(cy, m1=m1, m2=m2, m3=m3, easy_margin=easy_margin, eps=eps)
  return scale * jnp.where(target, psi, c)


def arcface_logits(cosine: Array, labels: Array, *, scale: float = 64.0, margin: float = 0.5,
                   easy_margin: bool = False, eps: float = DEFAULT_EPS) -> Array:
  """ArcFace (eq. 4): s * cos(theta_y + m) on the target, with the theta + m > pi fallback."""
  return combined_margin_logits(cosine, labels, scale=scale, m1=1.0, m2=margin, m3=0.0,
                                easy_margin=easy_margin, eps=eps)


def cosface_logits(cosine: Array, labels: Array, *, scale: float = 64.0, margin: float = 0.35,
                   eps: float = DEFAULT_EPS) -> Array:
  """CosFace / AM-softmax (Wang et al. 2018): s * (cos theta_y - m) on the target."""
  return combined_margin_logits(cosine, labels, scale=scale, m1=1.0, m2=0.0, m3=margin, eps=eps)


def sphereface_logits(cosine: Array, labels: Array, *, scale: float = 64.0, margin: float = 1.35,
                      eps: float = DEFAULT_EPS) -> Array:
  """SphereFace-like multiplicative margin on normalised features: s * cos(m * theta_y).

  Not the original A-Softmax (which has unnormalised features and the monotonic piecewise
  psi(theta) = (-1)^k cos(m theta) - 2k); this is the m1 term of ArcFace's combined margin, whose
  default 1.35 is insightface's combined-margin setting.
  """
  return combined_margin_logits(cosine, labels, scale=scale, m1=margin, m2=0.0, m3=0.0, eps=eps)


def margin_softmax_loss(cosine: Array, labels: Array, *, scale: float = 64.0, m1: float = 1.0,
                        m2: float = 0.5, m3: float = 0.0, easy_margin: bool = False,
                        label_smoothing: float = 0.0, reduction: str = "mean",
                        from_logits: bool = False, eps: float = DEFAULT_EPS) -> Array:
  """Softmax cross-entropy on combined-margin logits (ArcFace eq. 3-4 and §3.3).

  Args:
    cosine: (..., num_classes) cosines; or, with ``from_logits=True``, logits already returned by
      ``combined_margin_logits`` (then scale/m1/m2/m3/easy_margin are ignored).
    labels: integer (...) classes; rows labelled -1 get no margin and are excluded from the loss
      (per-example loss 0; the mean is over labelled rows, 0 if there are none).
    label_smoothing: alpha in [0, 1): targets (1 - alpha) * one_hot + alpha / num_classes.
    reduction: 'mean' (over labelled rows), 'sum', or 'none' (per-example losses, shape labels.shape).
    Others: as ``combined_margin_logits``.
  """
  if reduction not in _REDUCTIONS:
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
  if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 1.0):
    raise ValueError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
  if from_logits:
    labels = _check_labels(cosine, labels)
    logits = cosine.astype(_compute_dtype(cosine))
  else:
    logits = combined_margin_logits(cosine, labels, scale=scale, m1=m1, m2=m2, m3=m3,
                                    easy_margin=easy_margin, eps=eps)
    labels = jnp.asarray(labels) if _is_concrete(labels) else labels
  return _cross_entropy(logits, labels, label_smoothing=float(label_smoothing), reduction=reduction)


@functools.partial(jax.jit, static_argnames=("label_smoothing", "reduction"))
def _cross_entropy(logits, labels, *, label_smoothing, reduction):
  k = logits.shape[-1]
  targets = jax.nn.one_hot(labels, k, dtype=logits.dtype)
  if label_smoothing:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / k
  logp = jax.nn.log_softmax(logits, axis=-1)
  valid = (labels >= 0) & (labels < k)
  per_example = jnp.where(valid, -jnp.sum(targets * logp, axis=-1), 0.0)
  if reduction == "none":
    return per_example
  if reduction == "sum":
    return jnp.sum(per_example)
  return jnp.sum(per_example) / jnp.maximum(jnp.sum(valid), 1).astype(per_example.dtype)
