"""Helpers for parity tests and benchmarks against the PyTorch originals (optional torch / timm)."""

from __future__ import annotations

import importlib
import sys
import types
import textwrap
from typing import Any, Tuple

# Prepended to a ``python -c`` program: ``import tensorflow`` then raises ModuleNotFoundError exactly as
# if it were not installed (``importlib.util.find_spec('tensorflow')`` returns None, as etils and flax
# expect; a meta-path finder that raises, or ``sys.modules['tensorflow'] = None``, would break them).
HIDE_TENSORFLOW = textwrap.dedent("""\
    import importlib.machinery
    import sys

    class _HideTensorFlow(importlib.machinery.PathFinder):
      @classmethod
      def find_spec(cls, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
          return None
        return super().find_spec(name, path, target)

    sys.meta_path[:] = [_HideTensorFlow if f is importlib.machinery.PathFinder else f
                        for f in sys.meta_path]
    """)


def import_timm() -> Tuple[Any, Any]:
  """Returns ``(torch, timm)``; raises ``ImportError`` saying why when they cannot be used.

  timm imports torchvision. The only torchvision wheel in the package registry for torch 2.13.0 is a
  CUDA build whose compiled ops (nms, roi_align, ...) cannot load beside CPU torch, and importing it
  fails while registering fake / autograd kernels for those ops. ConvNeXt (and every model we
  compare with) uses none of them, so on that failure the two registration modules are replaced by
  empty ones and the import retried. The replacement is process-wide.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"torch is not installed ({e}); run `make install-reference`") from e
  try:
    import timm  # pylint: disable=import-outside-toplevel
    return torch, timm
  except ModuleNotFoundError as e:
    raise ImportError(f"timm cannot import ({e}); run `make install-reference`") from e
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise
  for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules[name] = types.ModuleType(name)
  for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")
               and m not in ("torchvision._meta_registrations", "torchvision._autograd_registrations")]:
    del sys.modules[name]
  try:
    return torch, importlib.import_module("timm")
  except Exception as e:  # pylint: disable=broad-except
    raise ImportError(f"timm cannot import even with torchvision's op registrations stubbed: {e!r}") from e
