"""Per-frame valence / arousal regression on video clips (``config.task = 'affect'``).

Frame models (backbone input ``image``: (N, H, W, C) -> (N, D)) train on windows of ``affect.window``
frames reshaped into a batch of frames and are evaluated frame by frame; clip models (backbone input
``frames``: (N, T, H, W, C) -> (N, T, D)) see windows of T frames and are evaluated on dense sliding
windows whose overlapping predictions are averaged per frame (:mod:`fer_jax.data.clips`).

Loss terms (``config.loss``): ``mse`` (Hasani & Mahoor's likely L2) and / or ``ccc`` (1 - CCC on
batch moments), with per-dimension ``dim_weights``. The model output read is ``affect.output``
(default ``valence_arousal``, the ``tanh`` head's). Evaluation: the ``affect`` evaluator.
"""

from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.data import clips, pipeline
from fer_jax.losses import affect as affect_losses
from fer_jax.registry import TASKS
from fer_jax.train.preprocess import preprocess_images
from fer_jax.train.tasks.base import ApplyFn, Batch, Task


@TASKS.register("affect")
class AffectTask(Task):
  """Valence / arousal (or any per-frame continuous targets) regression on clips."""

  name = "affect"
  default_loss = {"mse": {"weight": 1.0}}
  default_evaluator = "affect"

  def __init__(self, config):
    if "affect" not in config:
      raise ValueError("config.task='affect' needs a config.affect section "
                       "(see fer_jax.config_utils.affect_config)")
    super().__init__(config)
    self.clip = clips.clip_config_from(config.affect)
    self.names = tuple(self.clip.target_keys)
    self.output = config.affect.get("output", "valence_arousal")
    self.frames_per_example = self.clip.window
    self.images_per_example = self.clip.window
    self.video_names: Dict[int, str] = {}

  @property
  def metric_names(self):
    return ("rmse",) + tuple(f"ccc_{n}" for n in self.names)

  @property
  def sequence_model(self) -> bool:
    return "frames" in self.input_names

  def fields(self) -> Dict[str, pipeline.Field]:
    return {"frames": pipeline.Field(self.clip.frames_key, "frames")}

  def bind(self, builder) -> None:
    """Checks that the dataset has the fields ``config.affect`` names."""
    features = builder.info.features
    c = self.clip
    wanted = [c.frames_key, c.video_key, *c.target_keys]
    wanted += [k for k in (c.mask_key, c.frame_index_key) if k]
    missing = [k for k in wanted if k not in features]
    if missing:
      raise ValueError(f"Dataset {builder.info.full_name} has no field(s) {missing} named in "
                       f"config.affect; its fields: {sorted(features.keys())}")
    length = features[c.frames_key].shape[0]
    if length is not None and c.span > length:
      raise ValueError(f"affect.window={c.window} at stride {c.stride} spans {c.span} frames; "
                       f"{builder.info.full_name} stores clips of {length} frames")

  def train_transform(self, aug):
    return clips.ClipTrainTransform(aug, self.clip)

  def eval_transform(self, aug):
    return clips.ClipEvalTransform(aug, self.clip)

  # Steps (traced under jit).
  def model_inputs(self, batch: Batch, input_names) -> Dict[str, jax.Array]:
    x = batch["frames"]
    if "frames" in input_names:
      return {"frames": x}
    if "image" in input_names:
      return {"image": x.reshape((-1,) + x.shape[2:])}
    raise ValueError(f"The affect task feeds 'frames' (clip models) or 'image' (frame models); the "
                     f"model needs {tuple(input_names)}")

  def _predictions(self, outputs: Batch, shape) -> jax.Array:
    if self.output not in outputs:
      raise KeyError(f"affect.output={self.output!r} is not a model output; it outputs {sorted(outputs)}")
    return outputs[self.output].astype(jnp.float32).reshape(shape)

  def train_metrics(self, outputs: Batch, batch: Batch) -> Dict[str, jax.Array]:
    targets, mask = batch["targets"], batch["mask"]
    pred = self._predictions(outputs, targets.shape)
    metrics = {"rmse": jnp.sqrt(affect_losses.mse_loss(pred, targets, mask))}
    ccc = affect_losses.batch_ccc(pred, targets, mask)  # pooled over all frames of the batch
    for i, n in enumerate(self.names):
      metrics[f"ccc_{n}"] = ccc[i]
    return metrics

  def eval_window_indices(self, length: int) -> np.ndarray:
    c = self.clip
    if not self.sequence_model:
      return clips.window_indices(length, 1)
    return clips.window_indices(length, c.window, c.stride, c.eval_hop)

  def predict(self, apply_fn: ApplyFn, batch: Batch) -> Dict[str, jax.Array]:
    """Whole clips (B, L, ...) -> per-frame predictions (B, L, D), overlapping windows averaged."""
    frames = batch["frames"]
    b, length = frames.shape[:2]
    idx = self.eval_window_indices(length)
    x = preprocess_images(frames, self.config)[:, idx]  # (B, nW, T, h, w, c)
    nw, t = idx.shape
    out = apply_fn({"frames": x.reshape((b * nw, t) + x.shape[3:])})
    out = self._predictions(out, (b * nw, t, -1))
    per_frame = clips.average_overlapping(out.reshape(b, nw, t, -1), idx, length)
    return {"predictions": per_frame, "targets": batch["targets"], "mask": batch["mask"],
            "video": batch["video"], "frame_index": batch["frame_index"]}
