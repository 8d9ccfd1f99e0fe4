"""Name -> constructor registries (scenic / big_vision style).

Configs hold names plus kwargs (``model.backbone.name='convnext'``, ``task='classification'``,
``evals.validation.type='classification'``); code resolves the names here. An unknown name raises a
``KeyError`` that lists every known name, so a typo in a config fails at once with a message that
says what was expected.

The registries a paper adds to (none of them needs an edit of the trainer):

=============  =========================================================================
``MODELS``     whole models for import (``get_model('convnext_tiny')``, timm-parity classifiers)
``BACKBONES``  named inputs -> ``{'features': ..., aux...}`` (each family file in ``fer_jax.models``)
``HEADS``      features -> named outputs (``fer_jax.models.heads``)
``TASKS``      record fields, model call and loss terms (``fer_jax.train.tasks``)
``LOSSES``     named loss terms, weighted by ``config.loss.<term>.weight`` (``fer_jax.losses.terms``)
``EVALUATORS`` streamed metrics, JSON, PNGs (``fer_jax.evaluators``)
``SAMPLERS``   training-example order (``fer_jax.data.samplers``)
``PRETRAINED`` per-backbone import of PyTorch weights (``fer_jax.models.convnext``)
=============  =========================================================================
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Dict, Generic, List, Sequence, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """A named collection of constructors (models, losses, quantizers, ...).

  ``modules``: modules imported on first lookup, so that their ``@register`` lines have run.
  """

  def __init__(self, kind: str, modules: Sequence[str] = ()):
    self.kind = kind
    self._entries: Dict[str, Callable[..., T]] = {}
    self._modules = tuple(modules)
    self._loaded = not modules

  def _load(self) -> None:
    if not self._loaded:
      self._loaded = True
      for m in self._modules:
        importlib.import_module(m)

  def register(self, name: str, fn: Callable[..., T] | None = None):
    """Registers ``fn`` under ``name``; usable as ``@registry.register('name')``."""

    def _add(f):
      if name in self._entries and self._entries[name] is not f:
        raise KeyError(f"{self.kind} {name!r} is already registered")
      self._entries[name] = f
      return f

    return _add(fn) if fn is not None else _add

  def get(self, name: str) -> Callable[..., T]:
    self._load()
    if name not in self._entries:
      close = difflib.get_close_matches(str(name), self._entries, n=3)
      hint = f" Did you mean {close}?" if close else ""
      raise KeyError(
          f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {sorted(self._entries)}")
    return self._entries[name]

  def build(self, name: str, **kwargs: Any) -> T:
    return self.get(name)(**kwargs)

  def names(self) -> List[str]:
    self._load()
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    self._load()
    return name in self._entries


MODELS: Registry[Any] = Registry("model", ["fer_jax.models"])
BACKBONES: Registry[Any] = Registry("backbone", ["fer_jax.models"])
HEADS: Registry[Any] = Registry("head", ["fer_jax.models.heads", "fer_jax.train.tasks"])
PRETRAINED: Registry[Any] = Registry("pretrained-weight importer", ["fer_jax.models"])
TASKS: Registry[Any] = Registry("task", ["fer_jax.train.tasks"])
LOSSES: Registry[Any] = Registry("loss term", ["fer_jax.losses.terms", "fer_jax.train.tasks"])
EVALUATORS: Registry[Any] = Registry("evaluator", ["fer_jax.evaluators"])
SAMPLERS: Registry[Any] = Registry("sampler", ["fer_jax.data.samplers"])


def register(name: str, fn: Callable[..., Any] | None = None):
  """Registers a model constructor: ``@register('convnext_tiny')``."""
  return MODELS.register(name, fn)


def get_model(name: str, **kwargs: Any):
  """Builds the registered model ``name`` (a Linen module) with ``kwargs``."""
  return MODELS.build(name, **kwargs)


def list_models() -> List[str]:
  return MODELS.names()


def all_registries() -> Dict[str, List[str]]:
  """Every registry's entries (for docs and the closing note)."""
  regs = {"models": MODELS, "backbones": BACKBONES, "heads": HEADS, "pretrained": PRETRAINED,
          "tasks": TASKS, "losses": LOSSES, "evaluators": EVALUATORS, "samplers": SAMPLERS}
  return {k: r.names() for k, r in regs.items()}
