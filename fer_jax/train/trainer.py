"""The shared SPMD trainer: every experiment config runs through :func:`train_and_evaluate`.

Reads top to bottom as big_vision's train.py does: mesh -> input -> model and optimizer (shapes with
``jax.eval_shape``) -> shardings -> update step (``jax.jit``, donated state, explicit out shardings) ->
checkpoint (Orbax, train state + grain iterator) -> evaluators -> loop.

Nothing here knows a paper: the task (``config.task``, ``fer_jax.registry.TASKS``) declares fields,
model call and loss terms; the model is a registered backbone + head; evaluators come from
``config.evals``; the sampler from ``config.input.sampler``. No TensorFlow is imported (TensorBoard
events through ``fer_jax.train.summary``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import re
import time
from typing import Any, Dict, Optional, Tuple

import flax.struct
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from fer_jax import evaluators, registry
from fer_jax.data import pipeline, samplers, sources
from fer_jax.models import composite
from fer_jax.train import optim, preemption, sharding, summary
# Re-exported: the checkpoint API is part of the trainer's.
from fer_jax.train.checkpoints import (CheckpointMismatchError, checkpoint_dir,  # noqa: F401
                                       create_checkpoint_manager, restore_checkpoint)
from fer_jax.train import workdir as workdir_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any  # non-trainable collections (e.g. batch_stats); {} when the model has none
  ema_params: Any  # exponential moving average of params; {} when config.ema.decay == 0


class NonFiniteLossError(FloatingPointError):
  pass


class OutputWriteError(OSError):
  """The results were computed (and printed) but could not be written to the work dir."""


class _QuietLibraries:
  """Drops INFO chatter that orbax / grain / clu send through absl logging (warnings pass)."""

  NOISY = ("/orbax/", "/grain/", "/clu/", "/tensorstore/")

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not any(n in record.pathname for n in self.NOISY)


def quiet_library_logs() -> None:
  import logging as std_logging
  logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _QuietLibraries) for f in logger.filters):
    logger.addFilter(_QuietLibraries())


# ----------------------------------------------------------------------------------------------------
# Task, model, steps.
# ----------------------------------------------------------------------------------------------------

def get_task(config: ml_collections.ConfigDict):
  """The registered task ``config.task`` (``fer_jax.registry.TASKS``), built from the config."""
  return registry.TASKS.get(config.get("task", "classification"))(config)


def create_model(config: ml_collections.ConfigDict):
  """``config.model`` = dict(backbone=dict(name=...), head=dict(name=...)) -> ``composite.Model``."""
  dtype = None
  if config.get("compute_dtype", "float32") != "float32":
    dtype = jnp.dtype(config.compute_dtype)
  return composite.build_model(config.model, dtype)


def make_apply_fn(model, task, params, model_state, train: bool, rng=None):
  """``fn(preprocessed batch) -> outputs``; in train mode also collects updated non-param collections.

  Returns (fn, get_new_model_state)."""
  variables = {"params": params, **model_state}
  new_state = {}

  def fn(batch):
    inputs = task.model_inputs(batch, model.input_names)
    if train and model_state:
      out, updates = model.apply(variables, train=True, rngs={"dropout": rng}, mutable=list(model_state),
                                 **inputs)
      new_state.update(updates)
      return out
    return model.apply(variables, train=train, rngs={"dropout": rng} if train else None, **inputs)

  return fn, lambda: (dict(new_state) if new_state else model_state)


def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array, *, model, tx,
               config, task) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer step of ``task``'s loss. A non-finite loss or gradient leaves the state untouched
  (``finite`` = 0)."""
  step_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    apply_fn, new_model_state = make_apply_fn(model, task, params, state.model_state, True, step_rng)
    loss, task_metrics = task.train_step_outputs(apply_fn, batch)
    return loss, (task_metrics, new_model_state())

  (loss, (task_metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  decay = config.ema.get("decay", 0.0)
  if decay:
    every = config.ema.get("every", 1)
    if config.ema.get("warmup", False):
      # TF ExponentialMovingAverage's num_updates warm-up: decay_n = min(decay, (1 + n) / (10 + n)) for
      # the n-th average, so the early average is not dominated by the random initialisation.
      n = ((state.step + 1) // every).astype(jnp.float32)
      decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    d = jnp.where((state.step + 1) % every == 0, decay, 1.0)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
  frozen = config.optimizer.get("frozen")
  if frozen is not None:
    # Frozen parameters (optim.frozen_mask) keep their EMA, and modules whose parameters are all frozen
    # keep their batch statistics: a linear probe's backbone does not drift. Their forward pass in
    # training still normalises with the batch's statistics (the model runs in train mode as a whole).
    mask = optim.frozen_mask(params, frozen)
    if decay:
      ema = jax.tree.map(lambda f, e, o: o if f else e, mask, ema, state.ema_params)
    stats_mask = optim.frozen_stats_mask(new_model_state, mask)
    new_model_state = jax.tree.map(lambda f, n, o: o if f else n, stats_mask, new_model_state,
                                   state.model_state)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=new_model_state, ema_params=ema)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
  return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite, **task_metrics}


def eval_step(params, model_state, batch, *, model, task) -> Dict[str, jax.Array]:
  """The task's ``predict`` outputs for one batch (inference mode), handed to the evaluators."""
  apply_fn, _ = make_apply_fn(model, task, params, model_state, False)
  return task.predict(apply_fn, batch)


def create_train_state(config, model, tx, rng, mesh, task=None, source=None) -> Tuple[TrainState, Any]:
  """Initialises the state directly into its shardings (shapes first via ``jax.eval_shape``).

  Input shapes come from the first record of ``source`` when given, else from the config."""
  task = task or get_task(config)
  dummy = task.example_batch(model.input_names, source)

  def init(rng):
    variables = model.init({"params": rng, "dropout": rng}, train=False, **dummy)
    variables = dict(variables)
    params = variables.pop("params")
    ema = jax.tree.map(jnp.copy, params) if config.ema.get("decay", 0.0) else {}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=variables, ema_params=ema)

  abstract = jax.eval_shape(init, rng)
  shardings = sharding.tree_shardings(abstract, mesh, config.sharding.rules)
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


def load_init_weights(state: TrainState, config, shardings) -> TrainState:
  """Replaces the backbone of a fresh state with pretrained weights (``config.init_weights``).

  The importer is the backbone's entry in ``fer_jax.registry.PRETRAINED`` (timm / official ConvNeXt
  checkpoints for the ConvNeXt and EmoNeXt backbones); ``.safetensors`` or a torch file read with
  ``weights_only=True`` (nothing is unpickled). ``'pretrained:NAME'`` (a ``fer_jax.pretrained`` model)
  or the path of a shipped-model ``.json`` takes the backbone (params and BatchNorm statistics) of our own
  msgpack model, without torch; its backbone config must match ``config.model.backbone``. The head keeps
  its fresh initialisation; the EMA copy starts from the loaded weights.
  """
  path = config.get("init_weights")
  if not path:
    return state
  path = os.path.expanduser(path)
  name = config.model.backbone.name
  if name not in registry.PRETRAINED:
    raise ValueError(f"config.init_weights is given but backbone {name!r} has no pretrained-weight "
                     f"importer; backbones with one: {registry.PRETRAINED.names()}")
  from fer_jax.models import convert
  if path.startswith("pretrained:") or path.endswith(".json"):
    weights = _shipped_backbone_weights(path, config)
  else:
    if not os.path.exists(path):
      raise FileNotFoundError(f"config.init_weights={path!r} does not exist")
    weights = convert.load_torch_weights(path)
    _check_finite_weights(weights, path)
  params = jax.device_get(state.params)
  importer = registry.PRETRAINED.get(name)
  model_state = jax.device_get(state.model_state)
  old_stats = dict(model_state.get("batch_stats", {})).get("backbone")
  if old_stats is not None and "batch_stats" in inspect.signature(importer).parameters:
    imported = importer(params["backbone"], weights, batch_stats=old_stats)
  else:
    imported = importer(params["backbone"], weights)
  if isinstance(imported, convert.BackboneVariables):
    backbone, stats = imported.params, imported.batch_stats
  else:
    backbone, stats = imported, None
  new = dict(params)
  new["backbone"] = backbone
  new = jax.tree.map(lambda old, v: np.asarray(v, dtype=old.dtype), params, new)
  new = jax.device_put(new, shardings.params)
  ema = jax.tree.map(jnp.copy, new) if config.ema.get("decay", 0.0) else state.ema_params
  if stats is not None:
    new_state = dict(model_state)
    new_state["batch_stats"] = dict(new_state["batch_stats"], backbone=stats)
    new_state = jax.tree.map(lambda old, v: np.asarray(v, dtype=old.dtype), model_state, new_state)
    state = state.replace(model_state=jax.device_put(new_state, shardings.model_state))
  logging.info("Initialised the %s backbone%s from %s.", name,
               " and its BatchNorm statistics" if stats is not None else "", path)
  return state.replace(params=new, ema_params=ema)


def _backbone_arch(spec) -> Any:
  spec = dict(spec)
  module = composite.build_backbone(spec)
  if hasattr(module, "resolved"):  # named sizes and explicit fields describe the same network
    return (spec.get("name"), module.resolved())
  return spec


def _shipped_backbone_weights(path: str, config) -> Dict[str, Any]:
  """``{'params', 'batch_stats'}`` of the backbone of a ``fer_jax.pretrained`` model (name or .json)."""
  from fer_jax import pretrained
  name = path[len("pretrained:"):] if path.startswith("pretrained:") else path
  meta_path, weights_path = pretrained._resolve(name)
  with open(meta_path) as f:
    meta = json.load(f)
  ours = config.model.backbone
  theirs, ours = dict(meta["model"]["backbone"]), (ours.to_dict() if hasattr(ours, "to_dict") else dict(ours))
  if _backbone_arch(theirs) != _backbone_arch(ours):
    raise ValueError(f"config.init_weights={path!r}: the shipped model's backbone {theirs} differs from "
                     f"config.model.backbone={ours}")
  variables = pretrained.read_variables(weights_path, meta.get("sha256"))
  out = {"params": variables["params"]["backbone"]}
  if "backbone" in variables.get("batch_stats", {}):
    out["batch_stats"] = variables["batch_stats"]["backbone"]
  return out


def _check_finite_weights(weights, path: str) -> None:
  """Rejects a pretrained-weight file holding NaN or Inf, naming the file and the parameter."""
  for key, value in (weights.items() if isinstance(weights, dict) else []):
    try:
      arr = np.asarray(value)
    except (TypeError, RuntimeError):  # torch bfloat16 tensors: NumPy cannot hold them
      arr = value.float().numpy()
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
      n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
      raise ValueError(f"config.init_weights={path!r}: parameter {key!r} (shape {tuple(arr.shape)}) holds "
                       f"non-finite values ({n_nan} NaN, {n_inf} Inf); the file is damaged or was saved "
                       "from a diverged model.")


def param_count(params: Any) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------------------------------
# Input, evaluators, the experiment.
# ----------------------------------------------------------------------------------------------------

def _global_batch(batch: Dict[str, np.ndarray], batch_sharding) -> Dict[str, jax.Array]:
  """Host batch -> global arrays (host-only fields such as strings stay behind)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()
          if np.asarray(v).dtype.kind in "biuf"}


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _num_train_steps(config, num_examples: int) -> int:
  if config.get("num_train_steps"):
    return int(config.num_train_steps)
  if config.get("num_epochs"):
    return int(config.num_epochs * num_examples // config.input.batch_size)
  raise ValueError("Set config.num_train_steps or config.num_epochs")


def _check_batch_sizes(config) -> None:
  n_dev = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    bs = config.input[name]
    if not isinstance(bs, int) or bs < 1:
      raise ValueError(f"config.input.{name}={bs!r}; expected a positive integer")
    if bs % n_dev:
      raise ValueError(f"config.input.{name}={bs} is not divisible by the {n_dev} devices")


def _check_classes(config, task, builder):
  """``config.dataset.classes`` as a tuple (None when unset); renames the task's classes to those of the
  subset. ``dataset.num_classes`` must be its length."""
  classes = config.dataset.get("classes")
  if classes is None:
    return None
  if not getattr(task, "label_field", None):
    raise ValueError(f"config.dataset.classes={classes!r}: task {task.name!r} has no class labels")
  classes = tuple(int(c) for c in classes)
  if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
    raise ValueError(f"config.dataset.classes={list(classes)}; expected distinct class ids >= 0")
  if int(config.dataset.num_classes) != len(classes):
    raise ValueError(f"config.dataset.num_classes={config.dataset.num_classes} but config.dataset.classes="
                     f"{list(classes)} has {len(classes)} classes; set num_classes={len(classes)}")
  feature = builder.info.features[task.fields()[task.label_field].key]
  names = list(getattr(feature, "names", None) or [])
  if names and max(classes) >= len(names):
    raise ValueError(f"config.dataset.classes={list(classes)}: the dataset has {len(names)} classes {names}")
  task.class_names = [names[c] if names else str(c) for c in classes]
  return classes


def _clamp_split(split: str, num_examples: int) -> str:
  """'test[:32]' of a 16-example split -> 'test' (TFDS refuses a slice longer than its split; ``runlocal``
  asks for the first few batches' worth of every evaluation split, whatever its size)."""
  m = re.fullmatch(r"([^\[]+)\[:(\d+)\]", split)
  if m and int(m.group(2)) > num_examples:
    logging.info("Split %s: the split has %d examples; reading all of them.", split, num_examples)
    return m.group(1)
  return split


def _split_name(split: str) -> str:
  """'validation[:64]' -> 'validation' (TFDS slicing syntax)."""
  return split.split("[")[0]


class Experiment:
  """Everything built from a config once: mesh, data, task, model, evaluators, jitted steps."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    _check_batch_sizes(config)
    self.mesh = sharding.create_mesh(config.mesh)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    ds = config.dataset
    if ds.get("import_module"):
      importlib.import_module(ds.import_module)  # registers the user's own TFDS builders
    self.builder = sources.get_builder(ds.name, data_dir=ds.get("data_dir"),
                                       manual_dir=ds.get("manual_dir"), rebuild=ds.get("rebuild", False))
    self.task = get_task(config)
    self.task.bind(self.builder)
    self.classes = _check_classes(config, self.task, self.builder)
    self.aug = pipeline.aug_from_config(config.input)
    self.model = create_model(config)
    self.task.bind_model(self.model.input_names)
    self.evaluators = []
    for spec, evaluator in evaluators.build_evaluators(self.task, config.get("evals") or {}):
      if spec.optional and _split_name(spec.split) not in self.builder.info.splits:
        logging.warning("Dataset %s has no split %r; skipping evaluator %r.", ds.name, spec.split, spec.name)
        continue
      self.source(spec.split)  # an unknown split fails now, not after training
      self.evaluators.append((spec, evaluator))
    if self.classes is None:
      self.sampler = samplers.from_config(config.input.get("sampler"))
    else:
      self.sampler = samplers.subset_sampler(config.input.get("sampler"), self.classes, self._label_key())

  def _label_key(self) -> str:
    return self.task.fields()[self.task.label_field].key

  def subset(self, source):
    """``source`` restricted to ``config.dataset.classes`` (relabelled), or ``source`` itself."""
    if self.classes is None:
      return source
    return samplers.SubsetSource(source, samplers.read_labels(source, self._label_key()), self.classes,
                                 self._label_key())

  def source(self, split: str):
    if _split_name(split) not in self.builder.info.splits:
      raise ValueError(f"Dataset {self.config.dataset.name!r} has no split {split!r}; "
                       f"it has {sorted(self.builder.info.splits)}")
    num_examples = self.builder.info.splits[_split_name(split)].num_examples
    return self.builder.as_data_source(split=_clamp_split(split, num_examples))

  def eval_dataset(self, split: str):
    c = self.config
    return self.task.eval_dataset(
        self.subset(self.source(split)), self.aug, batch_size=c.input.eval_batch_size // jax.process_count(),
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_threads=c.input.get("num_threads", 2))

  def train_dataset(self, source):
    c = self.config
    labels = None
    if getattr(self.sampler, "needs_labels", False):
      if not self.task.label_field:
        raise ValueError(f"config.input.sampler={dict(c.input.sampler)} needs class labels; task "
                         f"{self.task.name!r} has none")
      labels = samplers.read_labels(source, self.task.fields()[self.task.label_field].key)
    return self.task.train_dataset(
        source, self.aug, batch_size=c.input.batch_size // jax.process_count(), seed=c.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_threads=c.input.get("num_threads", 2), prefetch=c.input.get("prefetch", 4),
        sampler=self.sampler, labels=labels)

  def jit_eval_step(self, state_shardings):
    replicated = sharding.replicated(self.mesh)
    step = jax.jit(functools.partial(eval_step, model=self.model, task=self.task),
                   in_shardings=(state_shardings.params, state_shardings.model_state, self.batch_sharding),
                   out_shardings=replicated)
    return step

  def predict_fn(self, jit_eval_step, params, model_state):
    """host batch -> host outputs of the task's ``predict`` on the global batch."""
    def fn(batch):
      return jax.device_get(jit_eval_step(params, model_state, _global_batch(batch, self.batch_sharding)))
    return fn

  def run_eval(self, spec, evaluator, predict_fn, writer, step: int, plot: bool, datasets) -> Dict[str, Any]:
    if spec.split not in datasets:
      datasets[spec.split] = self.eval_dataset(spec.split)
    result = evaluator.run(predict_fn, datasets[spec.split])
    evaluator.write(writer, self.workdir, spec.name, step, result, plot=plot)
    return result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds checkpoints), evaluates, writes results.

  Holds the work dir lock (``workdir/.fer_jax.lock``, process 0) for its duration. SIGTERM / SIGINT save a
  checkpoint at the next step boundary and return ``{'preempted_at_step': N, ...}`` (see
  ``fer_jax.train.preemption``); rerunning the same call resumes.
  """
  _check_batch_sizes(config)  # before the work dir, the data or the devices' memory are touched
  os.makedirs(workdir, exist_ok=True)
  quiet_library_logs()
  with preemption.StopSignals() as signals:
    lock = _take_lock(workdir)
    try:
      return _train_and_evaluate(config, workdir, signals)
    finally:
      if lock is not None:
        lock.release()


def _take_lock(workdir: str):
  """Process 0 takes the work dir lock; in multi-process runs every process learns whether it did."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = workdir_lib.WorkdirLock(workdir).acquire()
    except workdir_lib.WorkdirLockedError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    ok = multihost_utils.broadcast_one_to_all(np.asarray(error is None, np.int32))
    if error is None and not bool(ok):
      error = workdir_lib.WorkdirLockedError(
          f"Process 0 could not take the lock of the work dir {workdir}; its log says which run holds it.")
  if error is not None:
    raise error
  return lock


def _stop_for_signal(signals, manager, step: int, workdir: str, results: Dict[str, Any], is_main: bool):
  """Waits for the checkpoint of ``step``, writes metrics.json, says how to resume."""
  manager.wait_until_finished()
  manager.close()
  message = preemption.preempted_message(step, manager.directory)
  results = {"preempted_at_step": int(step), **results}
  if is_main:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
    print(message, flush=True)
  logging.warning("%s", message)
  return results


def _train_and_evaluate(config, workdir: str, signals) -> Dict[str, Any]:
  exp = Experiment(config, workdir)
  c = config
  is_main = jax.process_index() == 0
  writer = summary.create_writer(workdir, just_logging=not is_main)

  # Input.
  train_source = exp.source(c.dataset.train_split)
  num_train_steps = _num_train_steps(c, len(train_source))
  train_iter = iter(exp.train_dataset(train_source))

  # Model, optimizer, state.
  schedule = optim.create_schedule(c, num_train_steps)
  tx = optim.create_optimizer(c, schedule)
  rng = jax.random.key(c.seed)
  init_rng, dropout_rng = jax.random.split(rng)
  state, state_shardings = create_train_state(c, exp.model, tx, init_rng, exp.mesh, exp.task, train_source)
  state = load_init_weights(state, c, state_shardings)
  n_params = param_count(state.params)
  if c.optimizer.get("frozen") is not None:
    mask = optim.frozen_mask(state.params, c.optimizer.frozen)
    n_frozen = sum(int(np.size(p)) for p, f in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask)) if f)
    logging.info("optimizer.frozen=%r: %s parameters trainable, %s frozen.", c.optimizer.frozen,
                 f"{n_params - n_frozen:,}", f"{n_frozen:,}")
  logging.info("Task %s, model %s + %s: %s parameters; mesh %s; %d train steps of global batch %d.",
               exp.task.name, c.model.backbone.name, c.model.head.name, f"{n_params:,}",
               dict(exp.mesh.shape), num_train_steps, c.input.batch_size)

  # Checkpoint: resume automatically (comparing the config with the one the checkpoints were made with).
  manager = create_checkpoint_manager(workdir, c)
  start_step = 0
  current_config = workdir_lib.config_to_dict(c)
  if manager.latest_step() is not None:
    saved_config = workdir_lib.read_saved_config(workdir)
    changes = workdir_lib.config_changes(saved_config, current_config) if saved_config is not None else []
    for path, old, new in changes:
      logging.warning("Resuming with a changed config field %s: %r -> %r%s", path, old, new,
                      "" if workdir_lib.is_layout_safe(path) else
                      " (the checkpoint's state must still fit this config)")
    state, start_step = restore_checkpoint(manager, state, train_iter, config_changes=changes)
    logging.info("Resumed from %s at step %d.", manager.directory, start_step)
    if is_main and (saved_config is None or changes):
      workdir_lib.write_config(workdir, c)
  elif is_main:
    workdir_lib.write_config(workdir, c)
  previous_metrics = workdir_lib.read_metrics(workdir) if start_step else {}

  p_train_step = jax.jit(
      functools.partial(train_step, model=exp.model, tx=tx, config=c, task=exp.task),
      in_shardings=(state_shardings, exp.batch_sharding, None),
      out_shardings=(state_shardings, sharding.replicated(exp.mesh)), donate_argnums=(0,))
  p_eval_step = exp.jit_eval_step(state_shardings)

  if start_step == 0:
    writer.write_hparams({k: str(v) for k, v in c.items()})
  eval_datasets: Dict[str, Any] = {}
  log_every = c.get("log_every_steps", 50)
  time_limit = c.get("train_time_limit_minutes", 0) * 60
  t_start = time.time()
  t_log, step_log = t_start, start_step
  history = []
  loss_log = []  # (step, mean train loss over the logging interval)
  step = start_step

  def run_summary(preempted: bool) -> Dict[str, Any]:
    """The fields of metrics.json that describe training (merged with the earlier runs' ones)."""
    seconds = time.time() - t_start
    run = {"start_step": int(start_step), "end_step": int(step), "train_seconds": seconds,
           "preempted": preempted}
    merged_log, runs = workdir_lib.merge_previous_metrics(previous_metrics, start_step, loss_log, run)
    return {"step": int(step), "num_train_steps": num_train_steps, "train_seconds_this_run": seconds,
            "train_seconds": float(sum(r.get("train_seconds", 0.0) for r in runs)), "runs": runs,
            "param_count": n_params, "task": exp.task.name, "backbone": c.model.backbone.name,
            "head": c.model.head.name, "dataset": c.dataset.name, "train_loss_log": merged_log}

  while step < num_train_steps:
    batch = _global_batch(next(train_iter), exp.batch_sharding)
    state, metrics = p_train_step(state, batch, dropout_rng)
    if not bool(metrics["finite"]):
      loss = float(metrics["loss"])
      raise NonFiniteLossError(
          f"Non-finite loss ({loss}) or gradient (norm {float(metrics['grad_norm'])}) at step {step + 1}; "
          f"stopped without applying that update. Last checkpoint: step {manager.latest_step()} in "
          f"{manager.directory}. Try a lower config.optimizer.lr (now {c.optimizer.lr}) or set "
          "config.optimizer.grad_clip_norm.")
    step += 1
    history.append(metrics)
    if step % log_every == 0 or step == num_train_steps:
      host = jax.device_get(history)
      history = []
      now = time.time()
      steps_per_s = (step - step_log) / max(now - t_log, 1e-9)
      t_log, step_log = now, step
      keys = ("grad_norm",) + tuple(exp.task.train_log_keys)
      scalars = {f"train/{k}": float(np.mean([h[k] for h in host])) for k in keys}
      scalars["train/lr"] = float(schedule(step))
      scalars["train/steps_per_s"] = steps_per_s
      scalars["train/images_per_s"] = steps_per_s * c.input.batch_size * exp.task.images_per_example
      writer.write_scalars(step, scalars)
      loss_log.append((step, scalars["train/loss"]))
      eta = (num_train_steps - step) / max(steps_per_s, 1e-9)
      shown = " ".join(f"{k} {scalars['train/' + k]:.4g}" for k in exp.task.train_log_keys)
      logging.info("step %d/%d | %s | lr %.2e | %.2f steps/s %.0f img/s | ETA %s",
                   step, num_train_steps, shown, scalars["train/lr"], steps_per_s,
                   scalars["train/images_per_s"], _format_duration(eta))
    for spec, evaluator in exp.evaluators:
      if spec.every_steps and step % spec.every_steps == 0 and step < num_train_steps:
        predict = exp.predict_fn(p_eval_step, state.params, state.model_state)
        result = exp.run_eval(spec, evaluator, predict, writer, step, False, eval_datasets)
        logging.info("eval %s (%s) at step %d: %s", spec.name, spec.split, step, evaluator.summary(result))
    out_of_time = time_limit and time.time() - t_start > time_limit
    preempted = signals.agreed(step, manager)
    force = step == num_train_steps or out_of_time or preempted
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(train_iter)),
        force=force)
    if preempted:
      writer.flush()
      return _stop_for_signal(signals, manager, step, workdir, run_summary(True), is_main)
    if out_of_time:
      logging.warning("config.train_time_limit_minutes=%s reached at step %d of %d; stopping.",
                      c.train_time_limit_minutes, step, num_train_steps)
      break
  manager.wait_until_finished()

  # Final evaluation (EMA weights when configured). A signal now stops before the next evaluator: the
  # checkpoint of `step` is on disk, and a rerun evaluates again.
  results: Dict[str, Any] = run_summary(False)
  predict = exp.predict_fn(p_eval_step, _eval_params(state, c), state.model_state)
  for spec, evaluator in exp.evaluators:
    if not spec.final:
      continue
    if signals.agreed(step, manager):
      return _stop_for_signal(signals, manager, step, workdir, run_summary(True), is_main)
    result = exp.run_eval(spec, evaluator, predict, writer, step, True, eval_datasets)
    results[spec.name] = {"split": spec.split, "type": spec.type, **evaluator.to_json(result)}
    logging.info("Final %s on %s (step %d):\n%s", spec.name, spec.split, step, evaluator.report(result))
  writer.flush()
  if is_main:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
  manager.close()
  return results


def print_final(results: Dict[str, Any], workdir: str) -> None:
  """One ``FINAL <evaluator>: <summary>`` line per evaluator result on stdout (process 0)."""
  if jax.process_index() != 0:
    return
  for name, r in results.items():
    if isinstance(r, dict) and "summary" in r:
      print(f"FINAL {name}: {r['summary']}  (step {results.get('step')}, workdir {os.path.abspath(workdir)})",
            flush=True)


def _eval_params(state: TrainState, config):
  use_ema = config.ema.get("decay", 0.0) and config.ema.get("eval_with_ema", True)
  return state.ema_params if use_ema else state.params


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        split: Optional[str] = None, step: Optional[int] = None) -> Dict[str, Any]:
  """Runs the evaluators of ``config.evals`` (those on ``split``, when given) on the latest (or given)
  checkpoint in ``workdir``; writes metrics_eval_<split>.json and the PNGs.

  Read-only on the checkpoints (no lock is taken; a training run may hold the work dir). The results are
  logged and printed (``FINAL ...`` lines) before anything is written, so a work dir that cannot be
  written still shows them; the write then fails with :class:`OutputWriteError` naming the path.
  """
  _check_batch_sizes(config)
  exp = Experiment(config, workdir)
  chosen = [(s, e) for s, e in exp.evaluators if split is None or s.split == split]
  if not chosen:
    if split is None or not exp.task.default_evaluator:
      raise ValueError(f"config.evals has no evaluator{'' if split is None else ' on split ' + repr(split)}; "
                       f"it has {[(s.name, s.split) for s, _ in exp.evaluators]}")
    exp.source(split)
    spec = evaluators.base.EvalSpec(name=split, type=exp.task.default_evaluator, split=split)
    chosen = [(spec, registry.EVALUATORS.get(spec.type)(exp.task, spec.name))]
  ckpt_dir = checkpoint_dir(workdir)
  if not os.path.isdir(ckpt_dir):  # checked first: orbax would create the folder
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}; train first (fer-jax train ...)")
  manager = create_checkpoint_manager(workdir, config, create=False)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint in {manager.directory}; train first (fer-jax train ...)")
  saved_config = workdir_lib.read_saved_config(workdir)
  changes = (workdir_lib.config_changes(saved_config, workdir_lib.config_to_dict(config))
             if saved_config is not None else [])
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1))
  state, state_shardings = create_train_state(config, exp.model, tx, jax.random.key(0), exp.mesh, exp.task,
                                              exp.source(chosen[0][0].split))
  state, step = restore_checkpoint(manager, state, None, step, config_changes=changes)
  manager.close()
  predict = exp.predict_fn(exp.jit_eval_step(state_shardings), _eval_params(state, config), state.model_state)
  out: Dict[str, Any] = {"step": int(step)}
  datasets: Dict[str, Any] = {}
  raw = []
  for spec, evaluator in chosen:
    if spec.split not in datasets:
      datasets[spec.split] = exp.eval_dataset(spec.split)
    result = evaluator.run(predict, datasets[spec.split])
    raw.append((spec, evaluator, result))
    out[spec.name] = {"split": spec.split, "type": spec.type, **evaluator.to_json(result)}
    logging.info("Evaluation %s of step %d on %s:\n%s", spec.name, step, spec.split, evaluator.report(result))
  print_final(out, workdir)
  # Now the files (events, PNGs, metrics_eval_<split>.json).
  path = workdir
  try:
    writer = summary.create_writer(workdir, just_logging=jax.process_index() > 0)
    for spec, evaluator, result in raw:
      evaluator.write(writer, workdir, spec.name, step, result, plot=True)
    writer.flush()
    if jax.process_index() == 0:
      path = os.path.join(workdir, f"metrics_eval_{split or 'all'}.json")
      with open(path, "w") as f:
        json.dump(out, f, indent=2)
  except OSError as e:
    raise OutputWriteError(
        f"Could not write the evaluation outputs to {path}: {type(e).__name__}: {e}. The metrics above were "
        "computed; rerun with a writable --workdir (a copy of the checkpoints) to keep the files.") from e
  return out
