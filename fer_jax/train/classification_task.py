"""Single-label image classification for the shared trainer (``config.task = 'classification'``).

Loss: softmax cross-entropy with optional label smoothing. Evaluation: a streamed confusion matrix ->
accuracy, per-class precision / recall / F1, macro-F1; ten-crop batches average the logits.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fer_jax.data import pipeline
from fer_jax.metrics import classification
from fer_jax.train import plots
from fer_jax.train.preprocess import input_shape, preprocess_images


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy against (optionally smoothed) one-hot targets."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


class ClassificationTask:
  """Cross-entropy training and confusion-matrix evaluation of an image classifier."""

  name = "classification"
  train_log_keys: Tuple[str, ...] = ("loss", "accuracy")
  images_per_example = 1

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.num_classes = config.dataset.num_classes
    # EmoNeXt's self-attention regulariser (L = CE + lambda * L_SA): the model returns (logits, aux)
    # with aux['sa_loss'] when called with return_features=True.
    self.sa_weight = float(config.loss.get("sa_weight", 0.0) or 0.0)
    self.train_apply_kwargs = {"return_features": True} if self.sa_weight else {}
    if self.sa_weight:
      self.train_log_keys = ("loss", "accuracy", "sa_loss")
    self.class_names: Sequence[str] = [str(i) for i in range(self.num_classes)]

  def set_names_from_builder(self, builder) -> None:
    key = self.config.dataset.get("label_key", "label")
    try:
      names = list(builder.info.features[key].names)
    except (KeyError, AttributeError):
      names = []
    if len(names) == self.num_classes:
      self.class_names = names

  # Steps (traced under jit).
  def init_input(self) -> jax.Array:
    return jnp.zeros((1,) + input_shape(self.config), jnp.float32)

  def model_input(self, batch: Dict[str, jax.Array]) -> jax.Array:
    return preprocess_images(batch["image"], self.config)

  def loss(self, outputs: Any, batch: Dict[str, jax.Array]) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Cross-entropy (+ ``loss.sa_weight`` * the model's self-attention term when configured)."""
    logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    loss = cross_entropy(logits, batch["label"], self.num_classes,
                         self.config.loss.get("label_smoothing", 0.0))
    metrics = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
    if self.sa_weight:
      if not isinstance(aux, dict) or "sa_loss" not in aux:
        raise ValueError(f"config.loss.sa_weight={self.sa_weight} but model {self.config.model_name!r} "
                         "returns no aux['sa_loss'] with return_features=True (EmoNeXt models do)")
      metrics["sa_loss"] = aux["sa_loss"]
      loss = loss + self.sa_weight * aux["sa_loss"]
    return loss, metrics

  def eval_step(self, apply_fn: Callable[[jax.Array], jax.Array],
                batch: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """Predictions for a batch; ten-crop batches (B, 10, H, W, C) average the logits over crops."""
    images = batch["image"]
    crops = images.ndim == 5
    if crops:
      b, n = images.shape[:2]
      images = images.reshape((b * n,) + images.shape[2:])
    logits = apply_fn(preprocess_images(images, self.config)).astype(jnp.float32)
    if crops:
      logits = logits.reshape(b, n, -1).mean(1)
    return {"logits": logits, "predictions": jnp.argmax(logits, -1), "labels": batch["label"],
            "mask": batch["mask"]}

  # Input pipelines.
  def train_dataset(self, source, aug: pipeline.AugmentConfig, **kwargs):
    ds = self.config.dataset
    return pipeline.train_dataset(source, aug, image_key=ds.get("image_key", "image"),
                                  label_key=ds.get("label_key", "label"), **kwargs)

  def eval_dataset(self, source, aug: pipeline.AugmentConfig, **kwargs):
    ds = self.config.dataset
    return pipeline.eval_dataset(source, aug, image_key=ds.get("image_key", "image"),
                                 label_key=ds.get("label_key", "label"), **kwargs)

  # Evaluation on the host.
  def evaluate(self, jit_eval_step, params, model_state, dataset, to_global) -> Dict[str, Any]:
    """One pass over ``dataset``: scores and the confusion matrix."""
    cm = np.zeros((self.num_classes, self.num_classes), np.int64)
    for batch in dataset:
      out = jax.device_get(jit_eval_step(params, model_state, to_global(batch)))
      cm += classification.confusion_matrix(out["labels"], out["predictions"], self.num_classes,
                                            out["mask"])
    return {"scores": classification.scores_from_confusion(cm), "confusion_matrix": cm}

  def write(self, writer, workdir: str, prefix: str, step: int, result: Dict[str, Any],
            plot: bool) -> None:
    scores, cm = result["scores"], result["confusion_matrix"]
    scalars = {f"{prefix}/accuracy": scores["accuracy"], f"{prefix}/macro_f1": scores["macro_f1"]}
    scalars.update({f"{prefix}/f1_{n}": f for n, f in zip(self.class_names, scores["f1"])})
    writer.write_scalars(step, scalars)
    if plot and jax.process_index() == 0:
      image = plots.save_confusion_matrix(
          cm, self.class_names, os.path.join(workdir, f"confusion_matrix_{prefix}.png"),
          title=f"{prefix} (step {step}): acc {scores['accuracy']:.3f}, "
                f"macro-F1 {scores['macro_f1']:.3f}")
      writer.write_images(step, {f"{prefix}/confusion_matrix": image[None]})

  def to_json(self, result: Dict[str, Any]) -> Dict[str, Any]:
    scores, cm = result["scores"], result["confusion_matrix"]
    return {
        "accuracy": float(scores["accuracy"]), "macro_f1": float(scores["macro_f1"]),
        "summary": self.summary(result),
        "per_class": {n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for n, p, r, f, s in zip(self.class_names, scores["precision"],
                                               scores["recall"], scores["f1"], scores["support"])},
        "confusion_matrix": cm.tolist(), "class_names": list(self.class_names),
    }

  def summary(self, result: Dict[str, Any]) -> str:
    s = result["scores"]
    return f"accuracy {s['accuracy']:.4f}  macro-F1 {s['macro_f1']:.4f}"

  def report(self, result: Dict[str, Any]) -> str:
    return classification.format_report(result["scores"], self.class_names)
