"""Named loss terms: ``L = sum_t config.loss.<t>.weight * term_t(outputs, batch)``, each logged.

A term is a pure function ``(outputs, batch, **options) -> scalar`` registered in
``fer_jax.registry.LOSSES``; it reads the model output and the batch field it needs by name
(``prediction=`` / ``target=`` options override the defaults). A config lists the terms with their
weights and options::

    config.loss = dict(ce=dict(weight=1.0, label_smoothing=0.1), sa=dict(weight=1.0))

=============  ==============================================================================
``ce``         softmax cross-entropy (optional label smoothing) of ``logits`` vs ``label``
``sentiment``  the same on ``sentiment_logits`` vs ``sentiment`` (SeLiNet's second task)
``arcface``    combined-margin softmax (ArcFace eq. 4, sec. 3.3) on ``cosine`` vs ``label``
``sa``         EmoNeXt's self-attention regulariser: the model output ``sa_loss``
``mse``        (masked, per-dimension) mean squared error of ``valence_arousal`` vs ``targets``
``ccc``        1 - CCC from batch moments (Lin 1989), same fields
``multilabel`` mean sigmoid binary cross-entropy of ``multilabel_logits`` vs ``multi_hot``
``emotic_l2``  EMOTIC's dynamically weighted squared error (Kosti et al. 2019, sec. 5)
=============  ==============================================================================
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from fer_jax.layers import arcface as arcface_lib
from fer_jax.losses import affect
from fer_jax.registry import LOSSES

Arrays = Mapping[str, jax.Array]


def _get(d: Arrays, key: str, where: str, term: str) -> jax.Array:
  if key not in d:
    raise KeyError(f"loss term {term!r} needs the {where} {key!r}; the {where}s are {sorted(d)}")
  return d[key]


def _mask(batch: Arrays, mask: Optional[str]):
  return batch[mask] if mask and mask in batch else None


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                          mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean softmax cross-entropy against (optionally smoothed) one-hot targets (over kept rows)."""
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  per = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  if mask is None:
    return per.mean()
  w = mask.astype(jnp.float32)
  return (per * w).sum() / jnp.maximum(w.sum(), 1.0)


@LOSSES.register("ce")
def ce_term(outputs: Arrays, batch: Arrays, *, prediction: str = "logits", target: str = "label",
            label_smoothing: float = 0.0, mask: Optional[str] = None) -> jax.Array:
  return softmax_cross_entropy(_get(outputs, prediction, "model output", "ce"),
                               _get(batch, target, "batch field", "ce"), label_smoothing,
                               _mask(batch, mask))


@LOSSES.register("sentiment")
def sentiment_term(outputs: Arrays, batch: Arrays, *, prediction: str = "sentiment_logits",
                   target: str = "sentiment", label_smoothing: float = 0.0,
                   mask: Optional[str] = None) -> jax.Array:
  return softmax_cross_entropy(_get(outputs, prediction, "model output", "sentiment"),
                               _get(batch, target, "batch field", "sentiment"), label_smoothing,
                               _mask(batch, mask))


@LOSSES.register("arcface")
def arcface_term(outputs: Arrays, batch: Arrays, *, prediction: str = "cosine", target: str = "label",
                 scale: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 easy_margin: bool = False, label_smoothing: float = 0.0) -> jax.Array:
  """ArcFace margin loss; (s, m2) = (64, 0.5) are face-ID defaults (PAPERS.md section 2)."""
  return arcface_lib.margin_softmax_loss(
      _get(outputs, prediction, "model output", "arcface"), _get(batch, target, "batch field", "arcface"),
      scale=scale, m1=m1, m2=m2, m3=m3, easy_margin=easy_margin, label_smoothing=label_smoothing)


@LOSSES.register("sa")
def sa_term(outputs: Arrays, batch: Arrays, *, prediction: str = "sa_loss") -> jax.Array:
  del batch
  if prediction not in outputs:
    raise KeyError(f"loss term 'sa' needs the model output {prediction!r} (EmoNeXt backbones with "
                   f"sa_mode set return it); the model outputs are {sorted(outputs)}")
  return outputs[prediction].astype(jnp.float32)


def _affect_term(loss, name: str):
  """A masked per-dimension regression term (``affect.mse_loss`` / ``affect.ccc_loss``) on named fields."""

  def term(outputs: Arrays, batch: Arrays, *, prediction: str = "valence_arousal", target: str = "targets",
           mask: Optional[str] = "mask", dim_weights=None) -> jax.Array:
    y = _get(batch, target, "batch field", name)
    pred = _get(outputs, prediction, "model output", name).reshape(y.shape)
    return loss(pred, y, _mask(batch, mask), dim_weights)

  term.__name__ = f"{name}_term"
  return term


mse_term = LOSSES.register("mse", _affect_term(affect.mse_loss, "mse"))
ccc_term = LOSSES.register("ccc", _affect_term(affect.ccc_loss, "ccc"))


@LOSSES.register("multilabel")
def multilabel_term(outputs: Arrays, batch: Arrays, *, prediction: str = "multilabel_logits",
                    target: str = "multi_hot", pos_weight: Optional[float] = None) -> jax.Array:
  """Mean sigmoid binary cross-entropy over examples and labels (``pos_weight`` scales positives)."""
  logits = _get(outputs, prediction, "model output", "multilabel").astype(jnp.float32)
  y = _get(batch, target, "batch field", "multilabel").astype(jnp.float32)
  if pos_weight is None:
    return optax.sigmoid_binary_cross_entropy(logits, y).mean()
  log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  return -(pos_weight * y * log_p + (1 - y) * log_not_p).mean()


@LOSSES.register("emotic_l2")
def emotic_l2_term(outputs: Arrays, batch: Arrays, *, prediction: str = "multilabel_logits",
                   target: str = "multi_hot", weights: Any = None, c: float = 1.2,
                   dynamic_stat: str = "count", absent_weight: Optional[float] = 1e-4,
                   reduction: str = "mean") -> jax.Array:
  return affect.emotic_weighted_l2_loss(
      _get(outputs, prediction, "model output", "emotic_l2"),
      _get(batch, target, "batch field", "emotic_l2"), weights, c, dynamic_stat=dynamic_stat,
      absent_weight=absent_weight, reduction=reduction)


def build_loss(loss_config: Mapping[str, Any]) -> Callable[[Arrays, Arrays], Tuple[jax.Array, Dict[str, jax.Array]]]:
  """``{term: {'weight': w, **options}}`` -> ``fn(outputs, batch) -> (total, {term: value})``.

  Terms with weight 0 are skipped (not computed). Unknown terms and options fail here, not in a step.
  """
  terms = []
  for name, spec in dict(loss_config).items():
    if hasattr(spec, "to_dict"):
      spec = spec.to_dict()
    if not isinstance(spec, Mapping):
      raise ValueError(f"config.loss.{name} = {spec!r}; expected a dict with 'weight' and the term's "
                       f"options (known terms: {LOSSES.names()})")
    spec = dict(spec)
    fn = LOSSES.get(name)
    weight = float(spec.pop("weight", 1.0))
    _check_options(fn, name, spec)
    if weight:
      terms.append((name, fn, weight, spec))
  if not terms:
    raise ValueError(f"config.loss has no term with a non-zero weight: {dict(loss_config)}")

  def loss_fn(outputs: Arrays, batch: Arrays):
    values = {name: fn(outputs, batch, **opts) for name, fn, _, opts in terms}
    total = sum(w * values[name] for name, _, w, _ in terms)
    return total, values

  return loss_fn


def _check_options(fn, name: str, options: Mapping[str, Any]) -> None:
  import inspect
  params = inspect.signature(fn).parameters
  allowed = [k for k, p in params.items() if p.kind == p.KEYWORD_ONLY]
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"config.loss.{name} has unknown option(s) {unknown}; the {name!r} term takes "
                     f"'weight' and {allowed}")
