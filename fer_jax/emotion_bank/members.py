"""One trained model of the bank (a ``landmark_sequence`` work dir) as plain functions of landmark clips.

``load_member(workdir)`` restores the work dir's last checkpoint (``fer_jax.pretrained.from_run``: the
evaluators' weights, EMA when the run evaluated with it) and gives:

* ``logits(raw)``: stored landmark clips (B, T, L, 2) in pixels -> (B,) logits, through the task's own
  ``preprocess`` (normalisation, kept landmarks, displacement channels) and the model: the scores the
  trainer's ``binary`` evaluator saw;
* ``normalize(raw)`` and ``logit_of_normalized(z)``: the same split in two, so that Integrated Gradients
  differentiate the model with respect to the NORMALISED landmarks z (B, T, L, 2) (translation, roll and
  size removed: the coordinates the model actually compares; ``fer_jax.emotion_bank.explain``);
  ``logit_of_normalized(normalize(raw)) == logits(raw)``.

``split_clips(exp, split)`` reads a split's clips and class labels in the evaluators' order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.train.tasks import landmark_sequence

__all__ = ["Member", "load_member", "split_clips", "variant_name"]


def variant_name(config) -> str:
  """'remo' (random frozen front end), 'temo' (all trained), 'binary' (binarized T-EMO) or 'binary_lstm'
  (its LSTM binarized too), read from the backbone config; '_remo' appended to a binary R-EMO."""
  bb = config.model.backbone
  if bb.get("name") != "landmark_cnn_lstm":
    raise ValueError(f"config.model.backbone.name={bb.get('name')!r}; the emotion bank needs "
                     "'landmark_cnn_lstm' models (experiments/emotion_bank_synthetic.py)")
  binary, random = bool(bb.get("binary", False)), bool(bb.get("random_front_end", False))
  if binary:
    name = "binary_lstm" if bb.get("binary_lstm", False) else "binary"
    return name + "_remo" if random else name
  return "remo" if random else "temo"


@dataclasses.dataclass(eq=False)
class Member:
  """A per-emotion model: config, task, model, variables and its functions; ``exp`` (the
  ``trainer.Experiment``: dataset and evaluation pipeline) when loaded from a work dir."""

  config: Any
  task: landmark_sequence.LandmarkSequenceTask
  model: Any
  variables: Any
  workdir: Optional[str] = None
  step: int = 0
  exp: Any = None

  @classmethod
  def from_config(cls, config, variables, **kwargs) -> "Member":
    """A member of ``config`` with given variables (no dataset: the task is not bound to one)."""
    from fer_jax.train import trainer
    model, task = trainer.create_model(config), trainer.get_task(config)
    task.bind_model(model.input_names)
    return cls(config, task, model, variables, **kwargs)

  @property
  def positive_class(self) -> int:
    return int(self.task.positive_class)

  @property
  def kept(self) -> Tuple[int, ...]:
    return self.task.kept_landmarks

  def normalize(self, raw) -> jax.Array:
    """Stored clips (B, T, L, 2) -> normalised clips, exactly as the task's ``preprocess``."""
    o = self.task.options
    return landmark_sequence.normalize_landmarks(raw, center=o.center, rotate=o.rotate, scale=o.scale,
                                                 eyes=self.task.eyes)

  def model_input(self, z: jax.Array) -> jax.Array:
    """Normalised clips (B, T, L, 2) -> the model's input: kept landmarks (+ displacement x_t - x_0)."""
    if self.task.kept is not None:
      z = z[:, :, jnp.asarray(self.task.kept)]
    if self.task.options.displacement:
      z = jnp.concatenate([z, z - z[:, :1]], axis=-1)
    return z

  def logit_of_normalized(self, z: jax.Array, variables: Optional[Any] = None) -> jax.Array:
    """(B,) logits of normalised clips (B, T, L, 2) (differentiable in ``z``)."""
    out = self.model.apply(self.variables if variables is None else variables, train=False,
                           landmarks=self.model_input(z))
    return out["logits"][:, 0].astype(jnp.float32)

  @functools.cached_property
  def signature(self) -> str:
    """The model and input pipeline, without the positive class: members of one bank share it, and so
    their compiled functions (variables are arguments)."""
    options = {k: v for k, v in self.config.task_options.to_dict().items() if k != "positive_class"}
    return json.dumps({"model": self.config.model.to_dict(), "task_options": options,
                       "dtype": self.config.get("compute_dtype", "float32")}, sort_keys=True, default=str)

  @property
  def _jit_logits(self) -> Callable:
    if self.signature not in _LOGITS:
      def fn(variables, raw):
        batch = self.task.preprocess({"landmarks": raw})
        out = self.model.apply(variables, train=False, **self.task.model_inputs(batch, self.model.input_names))
        return out["logits"][:, 0].astype(jnp.float32)
      _LOGITS[self.signature] = jax.jit(fn)
    return _LOGITS[self.signature]

  def logits(self, raw, batch_size: int = 512) -> np.ndarray:
    """(N,) float32 logits of stored clips (N, T, L, 2) (the trainer's evaluation path), in chunks."""
    raw = np.asarray(raw, np.float32)
    out = [np.asarray(self._jit_logits(self.variables, raw[i:i + batch_size]))
           for i in range(0, raw.shape[0], batch_size)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


_LOGITS: Dict[str, Callable] = {}  # Member.signature -> jitted logits (shared by the members of a bank)


def load_member(workdir: str) -> Member:
  """The last checkpoint of a finished ``landmark_sequence`` work dir with one logit."""
  from fer_jax.pretrained import from_run  # the trainer: imported when a model is loaded
  config, exp, variables, step = from_run.variables_from_workdir(workdir)
  if config.get("task") != "landmark_sequence" or exp.task.positive_class is None:
    raise ValueError(f"{workdir} holds a {config.get('task')!r} model with task_options.positive_class="
                     f"{config.get('task_options', {}).get('positive_class')}; a bank member is a one-vs-rest "
                     "landmark_sequence model")
  return Member(config, exp.task, exp.model, variables, workdir=workdir, step=step, exp=exp)


def split_clips(exp, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """(landmarks (N, T, L, 2) float32, class labels (N,) int64) of ``split`` in the evaluators' order."""
  lms, labels = [], []
  for batch in exp.eval_dataset(split):
    keep = np.asarray(batch["mask"]).astype(bool)
    lms.append(np.asarray(batch["landmarks"], np.float32)[keep])
    labels.append(np.asarray(batch["label"]).astype(np.int64)[keep])
  if not lms:
    raise ValueError(f"split {split!r} of {exp.config.dataset.name} gave no clips")
  return np.concatenate(lms), np.concatenate(labels)
