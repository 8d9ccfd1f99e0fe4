"""Optimizers and learning-rate schedules built from ``config.optimizer`` / ``config.schedule``."""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]


def cosine_warm_restarts(peak_value: float, min_value: float, warmup_steps: int, cycle_steps: int,
                         gamma: float = 1.0) -> Schedule:
  """Cosine annealing with warm restarts and per-cycle linear warm-up (EmoNeXt's official schedule).

  Each cycle of ``cycle_steps`` warms up linearly from ``min_value`` to ``peak * gamma**cycle`` over
  ``warmup_steps``, then follows half a cosine back to ``min_value`` (SGDR, Loshchilov & Hutter 2017,
  eq. 5, with a warm-up). EmoNeXt's code: peak 1e-3, 128 warm-up steps, 1024-step cycles.
  """
  if not 0 <= warmup_steps < cycle_steps:
    raise ValueError(f"schedule.warmup_steps={warmup_steps} must be in [0, cycle_steps={cycle_steps})")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    cycle = jnp.floor(step / cycle_steps)
    t = step - cycle * cycle_steps
    peak = peak_value * gamma ** cycle
    warm = min_value + (peak - min_value) * t / max(warmup_steps, 1)
    frac = (t - warmup_steps) / (cycle_steps - warmup_steps)
    cos = min_value + (peak - min_value) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
    return jnp.where(t < warmup_steps, warm, cos)

  return schedule


def create_schedule(config: Any, num_train_steps: int) -> Schedule:
  """``config.schedule.name`` in {'constant', 'warmup_cosine', 'cosine_warm_restarts'}."""
  sc, lr = config.schedule, config.optimizer.lr
  name = sc.name
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=sc.get("init_value", 0.0), peak_value=lr, warmup_steps=sc.warmup_steps,
        decay_steps=max(num_train_steps, sc.warmup_steps + 1), end_value=sc.get("end_value", 0.0))
  if name == "cosine_warm_restarts":
    return cosine_warm_restarts(sc.get("peak_value", lr), sc.get("min_value", 0.0), sc.warmup_steps,
                                sc.cycle_steps, sc.get("gamma", 1.0))
  raise ValueError(f"Unknown schedule.name {name!r}; expected one of "
                   "['constant', 'warmup_cosine', 'cosine_warm_restarts']")


def _decay_mask(params: Any, no_decay_regex: str) -> Any:
  """True for parameters that get weight decay: all but those whose path matches the regex."""
  pattern = re.compile(no_decay_regex)

  def keep(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return not (pattern.search(name) or leaf.ndim <= 1)

  return jax.tree_util.tree_map_with_path(keep, params)


def create_optimizer(config: Any, schedule: Schedule) -> optax.GradientTransformation:
  """Gradient clipping -> the named optimizer -> latent-kernel clipping (binarized layers only).

  No weight decay on 1-D params (norms, biases, gammas).
  """
  oc = config.optimizer
  chain = []
  if oc.get("grad_clip_norm"):
    chain.append(optax.clip_by_global_norm(oc.grad_clip_norm))
  name = oc.name
  if name == "adamw":
    chain.append(optax.adamw(schedule, b1=oc.get("b1", 0.9), b2=oc.get("b2", 0.999),
                             eps=oc.get("eps", 1e-8), weight_decay=oc.get("weight_decay", 0.0),
                             mask=lambda p: _decay_mask(p, oc.get("no_decay_regex", "$^"))))
  elif name == "adam":
    chain.append(optax.adam(schedule, b1=oc.get("b1", 0.9), b2=oc.get("b2", 0.999)))
  elif name == "sgd":
    chain.append(optax.sgd(schedule, momentum=oc.get("momentum", 0.9), nesterov=oc.get("nesterov", False)))
    if oc.get("weight_decay"):
      chain.insert(-1, optax.add_decayed_weights(
          oc.weight_decay, mask=lambda p: _decay_mask(p, oc.get("no_decay_regex", "$^"))))
  else:
    raise ValueError(f"Unknown optimizer.name {name!r}; expected one of ['adam', 'adamw', 'sgd']")
  # Binarized layers: project their latent kernels back into [-1, 1] after every update (BNN, Hubara
  # et al. 2016, Alg. 1). A no-op for models without 'latent_kernel' parameters.
  from fer_jax.layers import quant
  chain.append(quant.clip_latent_kernels(oc.get("latent_clip_value", 1.0)))
  return optax.chain(*chain)
