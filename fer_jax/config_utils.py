"""Helpers for big_vision-style experiment configs (``get_config(arg)``).

``--config=experiments/convnext_fer2013.py:variant=atto,res=64,runlocal`` passes the string after ``:`` to
``get_config``; :func:`parse_arg` turns it into typed options with defaults, rejecting unknown keys.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from typing import Any, List, Sequence

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


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``'a=1,b,c=x'`` into a ConfigDict typed like ``defaults``.

  A bare key (``runlocal``) means ``True``. Unknown keys raise a ``ValueError`` naming the key and
  listing the accepted ones.
  """
  out = dict(defaults)
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
  module_spec = importlib.util.spec_from_file_location("_fer_jax_config", path)
  if module_spec is None or module_spec.loader is None:
    raise FileNotFoundError(f"Config file {path!r} not found (expected a Python file with get_config)")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
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



def base_config() -> ml_collections.ConfigDict:
  """Trainer defaults shared by every experiment; experiment files override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classification"  # or "affect" (per-frame valence / arousal regression on clips)
  c.dataset = ml_collections.ConfigDict(dict(
      name="", import_module=ml_collections.FieldReference(None, field_type=str), data_dir=ml_collections.FieldReference(None, field_type=str),
      manual_dir=ml_collections.FieldReference(None, field_type=str),
      train_split="train", eval_split="validation",
      test_split=ml_collections.FieldReference(None, field_type=str),
      num_classes=7, image_size=48, image_key="image", label_key="label"))
  c.input = ml_collections.ConfigDict(dict(
      batch_size=128, eval_batch_size=256, resize=48, crop=48, channels=3, rotation=0.0,
      hflip=True, vflip=False, eval_crops="center", num_threads=2, prefetch=4,
      per_image_standardization=False,
      mean=ml_collections.FieldReference(None, field_type=tuple),
      std=ml_collections.FieldReference(None, field_type=tuple)))
  c.model_name = "convnext_atto"
  c.model = ml_collections.ConfigDict()
  # Pretrained ConvNeXt backbone (timm / official .safetensors or torch file), see trainer.load_init_weights.
  c.init_weights = ml_collections.FieldReference(None, field_type=str)
  c.init_weights_include_head = False
  c.compute_dtype = "float32"
  c.loss = ml_collections.ConfigDict(dict(label_smoothing=0.0))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, grad_clip_norm=1.0,
      no_decay_regex="$^"))
  c.schedule = ml_collections.ConfigDict(dict(name="warmup_cosine", warmup_steps=100))
  c.ema = ml_collections.ConfigDict(dict(decay=0.0, every=1, eval_with_ema=True))
  c.num_train_steps = 1000
  c.num_epochs = 0.0
  c.train_time_limit_minutes = 0.0
  c.log_every_steps = 50
  c.eval_every_steps = 0
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, **{"async": True}))
  c.mesh = [("data", -1), ("fsdp", 1)]
  c.sharding = ml_collections.ConfigDict(dict(rules=[(".*", "replicate")]))
  return c


def affect_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``config.affect`` section of ``task='affect'`` configs (see ``fer_jax.data.clips.ClipConfig``)."""
  c = ml_collections.ConfigDict(dict(
      frames_key="frames", target_keys=("valence", "arousal"),
      mask_key=ml_collections.FieldReference(None, field_type=str),
      frame_index_key=ml_collections.FieldReference(None, field_type=str),
      video_key="id", window=1, stride=1, eval_hop=1, sequence_model=False))
  c.update(overrides)
  return c
