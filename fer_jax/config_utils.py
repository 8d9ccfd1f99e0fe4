"""Helpers for big_vision-style experiment configs (``get_config(arg)``).

``--config=experiments/convnext_fer2013.py:size=atto,res=64,runlocal`` passes the string after ``:`` to
``get_config``; :func:`parse_arg` turns it into typed options with defaults, rejecting unknown keys.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from typing import Any, List, Optional, Sequence

import ml_collections


def _convert(value: str, default: Any, key: str) -> Any:
  if isinstance(default, bool):
    if value.lower() in ("", "1", "true", "yes", "on"):
      return True
    if value.lower() in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"Config option {key}={value!r}: expected a boolean (true/false)")
  if isinstance(default, int):
    try:
      return int(value)
    except ValueError:
      raise ValueError(f"Config option {key}={value!r}: expected an integer") from None
  if isinstance(default, float):
    try:
      return float(value)
    except ValueError:
      raise ValueError(f"Config option {key}={value!r}: expected a number") from None
  return value


def parse_arg(arg: Any, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``'a=1,b,c=x'`` (or a dict of already typed options) into a ConfigDict typed like ``defaults``.

  A bare key (``runlocal``) means ``True``. Unknown keys raise a ``ValueError`` naming the key and
  listing the accepted ones. The shared vocabulary: ``size`` (model size), ``arch`` (architecture
  within a paper), ``res``, ``batch`` (examples per global batch; ``clip_batch`` for clips),
  ``epochs`` or ``steps``, ``runlocal`` (``apply_runlocal``).
  """
  out = dict(defaults)
  if isinstance(arg, (dict, ml_collections.ConfigDict)):
    for key, value in dict(arg).items():
      if key not in defaults:
        raise ValueError(f"Unknown config option {key!r}; accepted options: {sorted(defaults)}")
      out[key] = value
    return ml_collections.ConfigDict(out)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      close = difflib.get_close_matches(key, defaults, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ValueError(
          f"Unknown config option {key!r}{hint}; accepted options: {sorted(defaults)}")
    out[key] = _convert(value if sep else "true", defaults[key], key)
  return ml_collections.ConfigDict(out)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads ``'path/to/config.py[:arg]'`` the way ``config_flags`` does."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  return module.get_config(arg) if arg else module.get_config()


def check_overrides(config: ml_collections.ConfigDict, argv: Sequence[str],
                    flag: str = "config") -> List[str]:
  """Returns a message for every ``--config.a.b=v`` in ``argv`` whose field does not exist."""
  errors = []
  pattern = re.compile(rf"^--?{flag}\.([^=]+)(=.*)?$")
  for a in argv:
    m = pattern.match(a)
    if not m:
      continue
    node: Any = config
    walked = []
    for part in m.group(1).split("."):
      keys = list(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
      if part not in keys:
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f" (did you mean {'.'.join(walked + [close[0]])!r}?)" if close else ""
        where = ".".join(walked) or "<top level>"
        errors.append(f"{a}: config has no field {'.'.join(walked + [part])!r}{hint}; "
                      f"fields under {where}: {sorted(keys)}")
        break
      walked.append(part)
      node = node[part]
  return errors



RUNLOCAL_STEPS = 4
RUNLOCAL_BATCH = 8


def apply_overrides(config: ml_collections.ConfigDict, argv: Sequence[str],
                    flag: str = "config") -> ml_collections.ConfigDict:
  """Sets every ``--config.a.b=value`` of ``argv`` in ``config`` (in place; returned) as absl's config flags
  do: strings (and fields typed str) raw, booleans true / false, anything else a Python literal. An unknown
  field or an unparsable value raises ``ValueError`` naming the flag."""
  errors = check_overrides(config, argv, flag)
  if errors:
    raise ValueError("; ".join(errors))
  pattern = re.compile(rf"^--?{flag}\.([^=]+)=(.*)$")
  for a in argv:
    m = pattern.match(a)
    if not m:
      if re.match(rf"^--?{flag}\.", a):
        raise ValueError(f"{a}: expected --{flag}.FIELD=VALUE")
      continue
    *parents, leaf = m.group(1).split(".")
    node = config
    for part in parents:
      node = node[part]
    raw, old = m.group(2), node[leaf]
    field_type = node.get_type(leaf) if isinstance(node, ml_collections.ConfigDict) else type(old)
    if field_type is str or isinstance(old, str):
      value: Any = raw
    elif field_type is bool:
      value = _convert(raw, False, f"--{flag}.{m.group(1)}")
    else:
      try:
        value = ast.literal_eval(raw)
      except (ValueError, SyntaxError):
        raise ValueError(f"{a}: {raw!r} is not a Python literal (the field holds {old!r})") from None
    try:
      node[leaf] = value
    except TypeError as e:
      raise ValueError(f"{a}: {e}") from None
  return config


def base_config() -> ml_collections.ConfigDict:
  """Trainer defaults shared by every experiment; experiment files override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classification"  # a name in fer_jax.registry.TASKS
  c.dataset = ml_collections.ConfigDict(dict(
      name="", import_module=ml_collections.FieldReference(None, field_type=str),
      data_dir=ml_collections.FieldReference(None, field_type=str),
      manual_dir=ml_collections.FieldReference(None, field_type=str), rebuild=False,
      train_split="train", num_classes=7, image_size=48, image_key="image", label_key="label",
      # a tuple of original class ids: train and evaluate on these only, relabelled classes[i] -> i
      classes=ml_collections.FieldReference(None, field_type=tuple)))
  c.input = ml_collections.ConfigDict(dict(
      batch_size=128, eval_batch_size=256, resize=48, crop=48, channels=3, rotation=0.0,
      hflip=True, vflip=False, eval_crops="center", num_threads=2, prefetch=4,
      per_image_standardization=False,
      mean=ml_collections.FieldReference(None, field_type=tuple),
      std=ml_collections.FieldReference(None, field_type=tuple),
      sampler=ml_collections.ConfigDict(dict(name="uniform"))))  # fer_jax.registry.SAMPLERS
  # backbone + head, each a registered name plus its kwargs (fer_jax.models.composite).
  c.model = ml_collections.ConfigDict(dict(
      backbone=ml_collections.ConfigDict(dict(name="convnext", size="atto")),
      head=ml_collections.ConfigDict(dict(name="linear", num_outputs=7))))
  # Pretrained backbone weights (.safetensors or a torch file), imported by fer_jax.registry.PRETRAINED.
  c.init_weights = ml_collections.FieldReference(None, field_type=str)
  c.compute_dtype = "float32"
  # Named loss terms {term: {weight, **options}} (fer_jax.losses.terms); empty = the task's default.
  c.loss = ml_collections.ConfigDict()
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, grad_clip_norm=1.0,
      no_decay_regex="$^",
      # regex over '/'-joined param paths: zero updates; BN stats of all-frozen modules kept (optim.py)
      frozen=ml_collections.FieldReference(None, field_type=str)))
  c.schedule = ml_collections.ConfigDict(dict(name="warmup_cosine", warmup_steps=100))
  c.ema = ml_collections.ConfigDict(dict(decay=0.0, every=1, eval_with_ema=True, warmup=False))
  c.num_train_steps = 1000
  c.num_epochs = 0.0
  c.train_time_limit_minutes = 0.0
  c.log_every_steps = 50
  # Named evaluators {name: dict(type, split, every_steps, final, **options)} (fer_jax.evaluators).
  c.evals = ml_collections.ConfigDict()
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, **{"async": True}))
  c.mesh = [("data", -1), ("fsdp", 1)]
  c.sharding = ml_collections.ConfigDict(dict(rules=[(".*", "replicate")]))
  return c


def evals(kind: str, validation: Optional[str] = "validation", test: Optional[str] = "test",
          every_steps: int = 0, **options: Any) -> ml_collections.ConfigDict:
  """``config.evals`` with one evaluator of type ``kind`` on the validation split (also run every
  ``every_steps``) and one on the test split (at the end; skipped when the dataset has no such split)."""
  out = ml_collections.ConfigDict()
  if validation:
    out[validation] = dict(type=kind, split=validation, every_steps=every_steps, **options)
  if test:
    out[test] = dict(type=kind, split=test, every_steps=0, optional=True, **options)
  return out


def apply_runlocal(c: ml_collections.ConfigDict, batch: int = RUNLOCAL_BATCH) -> ml_collections.ConfigDict:
  """``runlocal``, the same everywhere: RUNLOCAL_STEPS steps of ``batch`` examples, a checkpoint at
  the end, every evaluator only at the end and on the first 2 eval batches' worth of its split."""
  c.num_epochs = 0.0
  c.num_train_steps = RUNLOCAL_STEPS
  c.train_time_limit_minutes = 0.0
  c.input.batch_size = batch
  c.input.eval_batch_size = 2 * batch
  c.log_every_steps = 2
  c.checkpoint.every_steps = RUNLOCAL_STEPS
  for name in list(c.evals.keys()):
    c.evals[name].every_steps = 0
    c.evals[name].split = f"{c.evals[name].split.split('[')[0]}[:{4 * batch}]"
  return c


def check_steps_or_epochs(arg: ml_collections.ConfigDict) -> None:
  """``steps=`` and ``epochs=`` contradict each other: at most one may be set (> 0)."""
  if arg.get("steps", 0) and arg.get("epochs", 0):
    raise ValueError(f"Config options steps={arg.steps} and epochs={arg.epochs} contradict each other; "
                     "give one of them")


def check_choice(arg: ml_collections.ConfigDict, key: str, choices) -> None:
  if arg[key] not in choices:
    raise ValueError(f"Config option {key}={arg[key]!r}; expected one of {list(choices)}")


def affect_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``config.affect`` section of ``task='affect'`` configs (see ``fer_jax.data.clips.ClipConfig``)."""
  c = ml_collections.ConfigDict(dict(
      frames_key="frames", target_keys=("valence", "arousal"),
      mask_key=ml_collections.FieldReference(None, field_type=str),
      frame_index_key=ml_collections.FieldReference(None, field_type=str),
      video_key="id", window=1, stride=1, eval_hop=1, output="valence_arousal"))
  c.update(overrides)
  return c


def load_module(path: str):
  """Imports an experiment file as a module (derived configs call ``load_module(base).get_config``)."""
  module_spec = importlib.util.spec_from_file_location(
      "_fer_jax_config_" + re.sub(r"\W", "_", path), path)
  if module_spec is None or module_spec.loader is None:
    raise FileNotFoundError(f"Config file {path!r} not found (expected a Python file with get_config)")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module
