"""Face crops -> class probabilities (and valence / arousal, for models that predict them)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

AFFECT_OUTPUT = "valence_arousal"


def model_outputs(predictor: Any) -> dict[str, tuple[int, ...]]:
  """The shapes of what ``predictor.model.apply`` returns for one crop (no computation: ``eval_shape``)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  dummy = jnp.zeros((1, predictor.crop, predictor.crop, predictor.channels), jnp.float32)
  out = jax.eval_shape(lambda v: predictor.model.apply(v, train=False, image=dummy), predictor.variables)
  return {k: tuple(v.shape) for k, v in out.items()}


class Classifier:
  """``classifier(uint8 crops (N, S, S, 3)) -> (probs float32 (N, classes), valence_arousal float32 (N, 2)
  or None)``.

  Probabilities are ``predictor.predict_proba`` (test crops averaged in logit space). If the model also
  outputs ``valence_arousal`` (N, 2) (an affect head, e.g. ``multitask`` with ``tanh``), ``affect`` is True
  and one jitted pass computes both (``Predictor.forward_outputs``: valence / arousal averaged over the test
  crops, like the logits).
  """

  def __init__(self, predictor: Any, *, test_crops: Optional[str] = None, batch_size: int = 256):
    from fer_jax import pretrained  # pylint: disable=import-outside-toplevel
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
      raise ValueError(f"batch_size={batch_size!r}; expected a positive int")
    self.predictor = predictor
    self.test_crops = test_crops or predictor.default_test_crops
    if self.test_crops not in pretrained.TEST_CROPS:
      raise ValueError(f"test_crops={self.test_crops!r}; expected one of {pretrained.TEST_CROPS}")
    self.batch_size = batch_size
    shapes = model_outputs(predictor)
    self.affect = shapes.get(AFFECT_OUTPUT, (None, None))[-1] == 2
    self._fns: dict[int, Any] = {}

  def _affect_fn(self):
    import jax  # pylint: disable=import-outside-toplevel
    p, mode = self.predictor, self.test_crops

    def fn(variables, faces):
      out = p.forward_outputs(variables, p.to_model_input(faces), mode)
      return jax.nn.softmax(out["logits"], axis=-1), out[AFFECT_OUTPUT]
    return jax.jit(fn)

  def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Fewer crops than ``batch_size`` are zero-padded to a power of two (results cut back), so that a run
    compiles a handful of batch shapes, not one per flush size."""
    from fer_jax import pretrained  # pylint: disable=import-outside-toplevel
    crops = pretrained.check_faces(crops)
    n = crops.shape[0]
    padded = min(self.batch_size, 1 << (n - 1).bit_length())
    if padded > n:
      crops = np.concatenate([crops, np.zeros((padded - n,) + crops.shape[1:], np.uint8)])
    if not self.affect:
      return self.predictor.predict_proba(crops, test_crops=self.test_crops, batch_size=self.batch_size)[:n], None
    probs, va = self._affect(crops)
    return probs[:n], va[:n]

  def _affect(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = crops.shape[0]
    bs = min(self.batch_size, n)
    if bs not in self._fns:
      self._fns[bs] = self._affect_fn()
    probs, vas = [], []
    for start in range(0, n, bs):
      chunk = crops[start:start + bs]
      m = chunk.shape[0]
      if m < bs:
        chunk = np.concatenate([chunk, np.zeros((bs - m,) + chunk.shape[1:], np.uint8)])
      pr, va = self._fns[bs](self.predictor.variables, chunk)
      probs.append(np.asarray(pr)[:m])
      vas.append(np.asarray(va)[:m])
    return np.concatenate(probs).astype(np.float32), np.concatenate(vas).astype(np.float32)
