"""Name -> constructor registries (scenic / big_vision style).

Configs hold names plus kwargs (``model_name='convnext_atto'``, ``model=dict(...)``); code resolves the
names here. An unknown name raises a ``KeyError`` that lists every known name, so a typo in a config
fails at once with a message that says what was expected.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Generic, List, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """A named collection of constructors (models, losses, quantizers, ...)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, Callable[..., T]] = {}

  def register(self, name: str, fn: Callable[..., T] | None = None):
    """Registers ``fn`` under ``name``; usable as ``@registry.register('name')``."""

    def _add(f):
      if name in self._entries and self._entries[name] is not f:
        raise KeyError(f"{self.kind} {name!r} is already registered")
      self._entries[name] = f
      return f

    return _add(fn) if fn is not None else _add

  def get(self, name: str) -> Callable[..., T]:
    if name not in self._entries:
      close = difflib.get_close_matches(name, self._entries, n=3)
      hint = f" Did you mean {close}?" if close else ""
      raise KeyError(
          f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {sorted(self._entries)}")
    return self._entries[name]

  def build(self, name: str, **kwargs: Any) -> T:
    return self.get(name)(**kwargs)

  def names(self) -> List[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries


MODELS: Registry[Any] = Registry("model")


def register(name: str, fn: Callable[..., Any] | None = None):
  """Registers a model constructor: ``@register('convnext_tiny')``."""
  return MODELS.register(name, fn)


def get_model(name: str, **kwargs: Any):
  """Builds the registered model ``name`` (a Linen module) with ``kwargs``."""
  import fer_jax.models  # noqa: F401  (registers the built-in models)
  return MODELS.build(name, **kwargs)


def list_models() -> List[str]:
  import fer_jax.models  # noqa: F401
  return MODELS.names()
