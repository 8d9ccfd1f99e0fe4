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


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def frozen_mask(params: Any, frozen: Any) -> Any:
  """True for the parameters whose '/'-joined path (e.g. ``backbone/stem/conv/kernel``) the regex
  ``frozen`` (``config.optimizer.frozen``) matches (``re.search``); all False when it is None. A regex
  matching no parameter is an error."""
  if frozen is None:
    return jax.tree.map(lambda _: False, params)
  if not isinstance(frozen, str) or not frozen:
    raise ValueError(f"config.optimizer.frozen={frozen!r}; expected None or a regex over parameter paths")
  try:
    pattern = re.compile(frozen)
  except re.error as e:
    raise ValueError(f"config.optimizer.frozen={frozen!r} is not a valid regex: {e}") from None
  mask = jax.tree_util.tree_map_with_path(lambda path, _: bool(pattern.search(_path_name(path))), params)
  if not any(jax.tree.leaves(mask)):
    names = [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    raise ValueError(f"config.optimizer.frozen={frozen!r} matches no parameter; paths look like "
                     f"{names[:3]} ... {names[-2:]}")
  return mask


def frozen_stats_mask(model_state: Any, params_mask: Any) -> Any:
  """True for the non-param variables (e.g. BatchNorm ``batch_stats``) of modules whose parameters are all
  frozen: the trainer keeps them unchanged (a linear probe's backbone statistics do not drift)."""
  flat = {_path_name(p): m for p, m in jax.tree_util.tree_flatten_with_path(params_mask)[0]}

  def keep(path, _):
    module = _path_name(path[1:-1])  # drop the collection name and the variable name
    under = [m for k, m in flat.items() if k.startswith(module + "/")]
    return bool(under) and all(under)

  return jax.tree_util.tree_map_with_path(keep, model_state)


def create_optimizer(config: Any, schedule: Schedule) -> optax.GradientTransformation:
  """Gradient clipping -> the named optimizer -> latent-kernel clipping (binarized layers only).

  No weight decay on 1-D params (norms, biases, gammas). ``optimizer.frozen`` (a regex, see
  :func:`frozen_mask`): those parameters get zero updates (``optax.multi_transform`` with
  ``optax.set_to_zero``: no decay, no optimizer state, bit-identical after any number of steps).
  """
  tx = _create_optimizer(config, schedule)
  frozen = config.optimizer.get("frozen")
  if frozen is None:
    return tx
  return optax.multi_transform(
      {"train": tx, "frozen": optax.set_to_zero()},
      lambda p: jax.tree.map(lambda f: "frozen" if f else "train", frozen_mask(p, frozen)))


def _create_optimizer(config: Any, schedule: Schedule) -> optax.GradientTransformation:
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
    # torch.optim.Adam(weight_decay=wd): L2 added to the gradient (after clipping) before the moments,
    # unlike adamw's decoupled decay.
    if oc.get("weight_decay"):
      chain.append(optax.add_decayed_weights(
          oc.weight_decay, mask=lambda p: _decay_mask(p, oc.get("no_decay_regex", "$^"))))
    chain.append(optax.adam(schedule, b1=oc.get("b1", 0.9), b2=oc.get("b2", 0.999), eps=oc.get("eps", 1e-8)))
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
