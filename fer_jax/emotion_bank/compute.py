"""Compute of the bank's models: multiply-accumulates counted per layer, XLA's count, measured latency and
the bare train-step time of each variant.

``macs(backbone, num_frames, num_landmarks, channels)`` counts the multiply-accumulates of one clip
through a ``landmark_cnn_lstm`` model with a 1-logit linear head, layer by layer:

* conv i: for every frame and output landmark, the kernel taps that fall on real (not padded) inputs,
  times C_in x F (XLA's convention: the taps on 'SAME' padding are not counted);
* frame dense: T x (L_out F) x frame_features;
* LSTM: T x 4 H (D + H) (input and recurrent products of the four gates);
* head: H.

BatchNorm, activations and the gates' elementwise work are left out (a few percent here). We count
instead of using ``jax.jit(f).lower(x).cost_analysis()['flops']`` alone because XLA counts the body of the
LSTM's scan once, not T times; ``xla_flops`` is reported beside it. For the binary variant the counts
are those of the float simulation; the packed XNOR-popcount path (``landmark_lstm.pack_landmark_model``)
does the binary layers' products 32 per word.

``latency_ms`` times batch-1 calls (median of interleaved rounds, each call until its result is ready);
``time_train_steps`` times one jitted ``trainer.train_step`` of each variant's model, interleaved on
the same batch of training clips, so load from other processes hits every variant alike.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.models import landmark_lstm

__all__ = ["conv_taps", "macs", "xla_flops", "time_interleaved", "latency_ms", "time_train_steps"]


def conv_taps(length: int, kernel: int, stride: int) -> Tuple[int, int]:
  """(output length, kernel taps on real inputs summed over the outputs) of a 'SAME' conv along one axis."""
  out = -(-length // stride)
  total = max((out - 1) * stride + kernel - length, 0)
  lo = total // 2
  taps = 0
  for j in range(out):
    start = j * stride - lo
    taps += min(start + kernel, length) - max(start, 0)
  return out, taps


def macs(backbone: Mapping[str, Any], num_frames: int, num_landmarks: int, channels: int) -> Dict[str, int]:
  """Multiply-accumulates per clip of a ``landmark_cnn_lstm`` + 1-logit head, by layer and ``total``."""
  fields = {k: backbone[k] for k in ("size", "conv_features", "conv_kernel", "conv_strides", "frame_features",
                                      "lstm_hidden") if backbone.get(k) is not None}
  feats, kernel, strides, frame_features, hidden = landmark_lstm.LandmarkCNNLSTM(**fields).resolved()
  out: Dict[str, int] = {}
  t_len, t_taps = conv_taps(num_frames, kernel[0], 1)
  length, c = num_landmarks, channels
  for i, (f, s) in enumerate(zip(feats, strides)):
    l_out, l_taps = conv_taps(length, kernel[1], s)
    out[f"conv{i}"] = t_taps * l_taps * c * f
    length, c = l_out, f
  out["frame_dense"] = t_len * length * c * frame_features
  out["lstm"] = t_len * 4 * hidden * (frame_features + hidden)
  out["head"] = hidden
  out["total"] = int(sum(out.values()))
  return out


def xla_flops(fn: Callable, *args) -> float:
  """XLA's ``cost_analysis()['flops']`` of ``jax.jit(fn)`` at ``args`` (scan bodies counted once)."""
  cost = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def time_interleaved(fns: Mapping[Any, Callable[[], Any]], warmup: int = 3, rounds: int = 5,
                     calls: int = 20) -> Dict[Any, np.ndarray]:
  """Seconds per call of each function (blocked until ready), ``rounds`` rounds of ``calls`` calls each,
  function after function."""
  for f in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(f())
  times: Dict[Any, list] = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        times[k].append(time.perf_counter() - t0)
  return {k: np.asarray(v) for k, v in times.items()}


def latency_ms(fns: Mapping[Any, Callable[[], Any]], **kwargs) -> Dict[Any, Dict[str, float]]:
  """Median and minimum milliseconds per call of each function (``time_interleaved``)."""
  return {k: {"median_ms": float(np.median(t) * 1e3), "min_ms": float(t.min() * 1e3), "calls": int(t.size)}
          for k, t in time_interleaved(fns, **kwargs).items()}


def time_train_steps(specs: Mapping[str, Tuple[str, Sequence[str]]], batch_clips: int = 0,
                     rounds: int = 5, calls: int = 20) -> Dict[str, Dict[str, float]]:
  """Bare train-step time of each variant: name -> (config spec, overrides) of one of its models.

  Every variant's step (``trainer.train_step``, jitted, the config's optimizer, frozen front end for
  R-EMO) runs on the same batch: the first ``batch_clips`` (default: the config's batch size) training
  clips of the first variant's dataset. Returns name -> {'median_ms', 'min_ms', 'calls', 'batch'}."""
  from fer_jax.emotion_bank import bank as bank_lib
  from fer_jax.emotion_bank import members as members_lib
  from fer_jax.train import optim, sharding, trainer
  fns, batch = {}, None
  for name, (spec, overrides) in specs.items():
    c = bank_lib.emotion_config(spec, None, overrides)
    if batch is None:
      exp = trainer.Experiment(c, "/tmp")
      n = batch_clips or int(c.input.batch_size)
      lm, labels = members_lib.split_clips(exp, f"{c.dataset.train_split}[:{n}]")
      batch = {"landmarks": jnp.asarray(lm), "label": jnp.asarray(labels.astype(np.int32))}
    model = trainer.create_model(c)
    task = trainer.get_task(c)
    task.bind_model(model.input_names)
    tx = optim.create_optimizer(c, optim.create_schedule(c, int(c.num_train_steps or 1000)))
    state, _ = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh), task)
    step = jax.jit(lambda s, b, model=model, tx=tx, c=c, task=task: trainer.train_step(
        s, b, jax.random.key(1), model=model, tx=tx, config=c, task=task))
    fns[name] = (lambda step=step, state=state: step(state, batch))
  res = latency_ms(fns, rounds=rounds, calls=calls)
  return {k: {**v, "batch": int(batch["label"].shape[0])} for k, v in res.items()}
