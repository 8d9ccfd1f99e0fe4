"""Context-aware emotion recognition in the EMOTIC layout (``config.task = 'emotic'``).

One example per person: ``body`` (person crop) and ``context`` (whole image) uint8 images, ``categories``
(26,) multi-hot over EMOTIC's discrete categories and ``vad`` (3,) valence / arousal / dominance in [0, 1]
(Kosti et al., TPAMI 2019); names and sizes in ``config.task_options`` (``default_options``). Models
declare ``input_names = ('body', 'context')`` (``fer_jax.models.emotic_baseline``, ``fer_jax.models.selinet``)
and output ``multilabel_logits`` (26 category scores), optionally ``vad`` (3), ``sentiment_logits`` (3) and
``aesthetics`` (5, SeLiNet's auxiliary branch).

Targets made on the accelerator (``preprocess``):

* ``sentiment`` (int 0 negative / 1 neutral / 2 positive), SeLiNet's second task. Paper says: the network
  "jointly estimates discrete emotion and human sentiments"; it does not say where sentiment labels come
  from (EMOTIC has none). ``task_options.sentiment_from``:

  - ``'valence'`` (default): negative if vad[0] < ``valence_low`` (0.4), positive if vad[0] >
    ``valence_high`` (0.6), else neutral. With EMOTIC's 1..10 valence scaled as (v - 1) / 9 this is
    negative 1-4, neutral 5-6, positive 7-10.
  - ``'categories'``: each category has a polarity (``CATEGORY_POLARITY``: 8 positive, 3 neutral, 15
    negative, from Kosti et al.'s Table 1 definitions); a person's sentiment is the sign of (#positive -
    #negative) of their categories: the majority polarity, neutral on a tie or with neutral categories
    only (Anticipation, Engagement, Surprise).

  We take ``'valence'`` to be what the paper most likely used: every EMOTIC person has a valence
  annotation by the same annotators, it gives the three classes without a rule for mixed category sets,
  and a sentiment that is a fixed function of the 26-way target (``'categories'``) would add no
  supervision that the category loss does not already give, while the paper presents sentiment as
  enriching the model ("sentiment-enriched").

* ``aesthetics`` (5 attributes of the whole image, ``fer_jax.data.aesthetics``), computed from the
  augmented context image only when the loss has an ``aesthetics`` term.

Loss terms registered here: ``smooth_l1`` (VAD; Kosti's continuous loss) and ``aesthetics`` (mean squared
error of the aesthetics branch); ``emotic_l2`` (categories) and ``sentiment`` (CE) are in
``fer_jax.losses.terms``. Evaluator: ``emotic`` (``fer_jax.evaluators.emotic``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fer_jax.data import aesthetics as aesthetics_lib
from fer_jax.data import pipeline
from fer_jax.data import emotic as emotic_data
from fer_jax.data.emotic import EMOTIC_CATEGORIES
from fer_jax.evaluators import emotic as _emotic_evaluator  # noqa: F401  (registers the 'emotic' evaluator)
from fer_jax.losses.terms import _get
from fer_jax.registry import LOSSES, TASKS
from fer_jax.train.tasks.base import ApplyFn, Batch, Task

SENTIMENT_NAMES = ("negative", "neutral", "positive")
# Polarity of each category (+1 / 0 / -1), our reading of Kosti et al.'s Table 1 definitions (we chose):
# neutral = categories whose definition carries no valence (Anticipation: looking forward to something,
# Engagement: paying attention, Surprise: an unexpected discovery).
_POSITIVE = ("Affection", "Confidence", "Esteem", "Excitement", "Happiness", "Peace", "Pleasure", "Sympathy")
_NEUTRAL = ("Anticipation", "Engagement", "Surprise")
CATEGORY_POLARITY = {c: (1 if c in _POSITIVE else 0 if c in _NEUTRAL else -1) for c in EMOTIC_CATEGORIES}
SENTIMENT_SOURCES = ("valence", "categories")


def default_options(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``config.task_options`` section of ``task='emotic'`` configs (EMOTIC's sizes: body 128, context
  224)."""
  c = ml_collections.ConfigDict(dict(
      body_key="body", context_key="context", categories_key="categories", vad_key="vad",
      body_size=emotic_data.BODY_SIZE, context_size=emotic_data.CONTEXT_SIZE,
      category_names=EMOTIC_CATEGORIES, sentiment_from="valence", valence_low=0.4, valence_high=0.6))
  c.update(overrides)
  return c


def polarity_vector(names: Sequence[str]) -> np.ndarray:
  """(K,) float32 polarity (+1 / 0 / -1) of the categories ``names`` (``CATEGORY_POLARITY``)."""
  unknown = [n for n in names if n not in CATEGORY_POLARITY]
  if unknown:
    raise ValueError(f"sentiment_from='categories' needs EMOTIC category names; {unknown} are not among "
                     f"{list(EMOTIC_CATEGORIES)}")
  return np.array([CATEGORY_POLARITY[n] for n in names], np.float32)


def sentiment_from_categories(multi_hot: jax.Array, polarity: Any) -> jax.Array:
  """(..., K) multi-hot -> (...) int32 sentiment: sign(sum_k y_k polarity_k) + 1 (0 neg, 1 neutral, 2 pos)."""
  score = jnp.asarray(multi_hot, jnp.float32) @ jnp.asarray(polarity, jnp.float32)
  return (jnp.sign(score) + 1).astype(jnp.int32)


def sentiment_from_valence(valence: jax.Array, low: float = 0.4, high: float = 0.6) -> jax.Array:
  """(...) valence in [0, 1] -> (...) int32 sentiment: 0 if v < low, 2 if v > high, else 1."""
  if not low <= high:
    raise ValueError(f"valence thresholds low={low} and high={high}: expected low <= high")
  v = jnp.asarray(valence, jnp.float32)
  return jnp.where(v < low, 0, jnp.where(v > high, 2, 1)).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------- loss terms


@LOSSES.register("smooth_l1")
def smooth_l1_term(outputs: Batch, batch: Batch, *, prediction: str = "vad", target: str = "vad",
                   beta: float = 0.1, margin: float = 0.0, mask: Optional[str] = None) -> jax.Array:
  """Smooth L1 (torch's ``smooth_l1_loss``: 0.5 x^2 / beta for |x| < beta, else |x| - 0.5 beta) summed over
  the dimensions, mean over (kept) examples; errors below ``margin`` count 0 (Kosti et al. sec. 5's v_k).

  beta = 0.1 (we chose: about one point of EMOTIC's 1..10 scale on our [0, 1] targets).
  """
  if not beta > 0 or margin < 0:
    raise ValueError(f"smooth_l1: beta={beta} must be > 0 and margin={margin} >= 0")
  y = _get(batch, target, "batch field", "smooth_l1").astype(jnp.float32)
  p = _get(outputs, prediction, "model output", "smooth_l1").astype(jnp.float32).reshape(y.shape)
  a = jnp.abs(p - y)
  per = jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)
  per = jnp.where(a < margin, 0.0, per).reshape(y.shape[0], -1).sum(1)
  m = batch[mask].astype(jnp.float32) if mask and mask in batch else jnp.ones_like(per)
  return (per * m).sum() / jnp.maximum(m.sum(), 1.0)


@LOSSES.register("aesthetics")
def aesthetics_term(outputs: Batch, batch: Batch, *, prediction: str = "aesthetics",
                    target: str = "aesthetics") -> jax.Array:
  """Mean squared error of the predicted image-aesthetics attributes (over examples and attributes)."""
  y = _get(batch, target, "batch field", "aesthetics").astype(jnp.float32)
  p = _get(outputs, prediction, "model output", "aesthetics").astype(jnp.float32)
  if p.shape != y.shape:
    raise ValueError(f"loss term 'aesthetics': prediction shape {p.shape} differs from target {y.shape}")
  return jnp.mean((p - y) ** 2)


# ----------------------------------------------------------------------------------------------- the task


@TASKS.register("emotic")
class EmoticTask(Task):
  """EMOTIC categories (+ VAD, sentiment, aesthetics) from a body crop and its whole image."""

  name = "emotic"
  default_loss = {"emotic_l2": {"weight": 1.0, "weights": "dynamic", "target": "categories"},
                  "smooth_l1": {"weight": 1.0}}
  default_evaluator = "emotic"

  def __init__(self, config):
    if "task_options" not in config:
      raise ValueError("config.task='emotic' needs a config.task_options section "
                       "(fer_jax.train.tasks.emotic.default_options())")
    super().__init__(config)
    o = config.task_options
    self.options = o
    self.category_names: Tuple[str, ...] = tuple(o.category_names)
    self.class_names = self.category_names
    self.num_categories = len(self.category_names)
    self.sentiment_names = SENTIMENT_NAMES
    if o.sentiment_from not in SENTIMENT_SOURCES:
      raise ValueError(f"task_options.sentiment_from={o.sentiment_from!r}; expected one of "
                       f"{SENTIMENT_SOURCES}")
    if not 0.0 <= o.valence_low <= o.valence_high <= 1.0:
      raise ValueError(f"task_options.valence_low={o.valence_low}, valence_high={o.valence_high}: expected "
                       "0 <= low <= high <= 1")
    self.polarity = polarity_vector(self.category_names) if o.sentiment_from == "categories" else None
    for k in ("body_size", "context_size"):
      if not isinstance(o[k], int) or o[k] < 8:
        raise ValueError(f"task_options.{k}={o[k]!r}; expected an int >= 8 (pixels)")

  @property
  def metric_names(self):
    terms = self.loss_terms
    return ((("sentiment_accuracy",) if "sentiment" in terms else ())
            + (("vad_mae",) if "smooth_l1" in terms else ())
            + (("aesthetics_mae",) if "aesthetics" in terms else ()))

  @property
  def wants_aesthetics(self) -> bool:
    return "aesthetics" in self.loss_terms

  def fields(self) -> Dict[str, pipeline.Field]:
    o = self.options
    aug = pipeline.aug_from_config(self.config.input)
    return {"body": pipeline.Field(o.body_key, "image", aug=aug.replace(resize=o.body_size, crop=None)),
            "context": pipeline.Field(o.context_key, "image",
                                      aug=aug.replace(resize=o.context_size, crop=None)),
            "categories": pipeline.Field(o.categories_key, "float", shape=(self.num_categories,)),
            "vad": pipeline.Field(o.vad_key, "float", shape=(3,))}

  def bind(self, builder) -> None:
    super().bind(builder)
    shape = tuple(builder.info.features[self.options.categories_key].shape)
    if shape != (self.num_categories,):
      raise ValueError(f"task_options.category_names lists {self.num_categories} categories; the dataset's "
                       f"{self.options.categories_key!r} field has shape {shape}")

  # Steps (traced under jit).
  def sentiment(self, batch: Batch) -> jax.Array:
    o = self.options
    if o.sentiment_from == "categories":
      return sentiment_from_categories(batch["categories"], self.polarity)
    return sentiment_from_valence(batch["vad"][..., 0], o.valence_low, o.valence_high)

  def preprocess(self, batch: Batch) -> Dict[str, jax.Array]:
    out = dict(batch)
    if "categories" in batch and "vad" in batch:
      out["sentiment"] = self.sentiment(batch)
    if self.wants_aesthetics and "context" in batch:
      ctx = batch["context"].astype(jnp.float32) / 255.0
      if ctx.shape[-1] == 1:
        ctx = jnp.broadcast_to(ctx, ctx.shape[:-1] + (3,))
      out["aesthetics"] = aesthetics_lib.aesthetic_features(ctx)
    return super().preprocess(out)

  def train_metrics(self, outputs: Batch, batch: Batch) -> Dict[str, jax.Array]:
    metrics = {}
    if "sentiment" in self.loss_terms:
      pred = jnp.argmax(outputs["sentiment_logits"], -1)
      metrics["sentiment_accuracy"] = jnp.mean(pred == batch["sentiment"])
    if "smooth_l1" in self.loss_terms:
      metrics["vad_mae"] = jnp.mean(jnp.abs(outputs["vad"].astype(jnp.float32) - batch["vad"]))
    if self.wants_aesthetics:
      metrics["aesthetics_mae"] = jnp.mean(jnp.abs(outputs["aesthetics"].astype(jnp.float32)
                                                   - batch["aesthetics"]))
    return metrics

  def predict(self, apply_fn: ApplyFn, batch: Batch) -> Dict[str, jax.Array]:
    x = self.preprocess(batch)
    out = apply_fn(x)
    if "multilabel_logits" not in out:
      raise KeyError(f"task 'emotic' needs the model output 'multilabel_logits'; it outputs {sorted(out)}")
    result = {"scores": out["multilabel_logits"].astype(jnp.float32), "labels": batch["categories"],
              "mask": batch["mask"]}
    if "vad" in out:
      result.update(vad_pred=out["vad"].astype(jnp.float32).reshape(batch["vad"].shape), vad=batch["vad"])
    if "sentiment_logits" in out:
      result.update(sentiment_pred=jnp.argmax(out["sentiment_logits"], -1).astype(jnp.int32),
                    sentiment=x["sentiment"])
    return result
