"""The optional dependencies of ``fer_jax.export`` (a clear error naming the extra when one is missing), and
helpers its backends share."""

from __future__ import annotations

import importlib
from typing import Callable, List, Optional

import numpy as np

INSTALL = "pip install 'fer_jax[export]' and pip install --no-deps jax2onnx==0.17.1"


class MissingExtraError(ImportError):
  """An export format needs a package of the ``export`` extra that is not installed."""


def require(fmt: str, *modules: str) -> None:
  """Imports ``modules`` or raises :class:`MissingExtraError` naming the format, the module and the fix."""
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise MissingExtraError(f"Exporting to {fmt} needs the Python package {name!r}, which cannot be imported "
                              f"({e}); install the export extra: {INSTALL}") from e


def calibration_batches(calibration: np.ndarray, batch: Optional[int]) -> List[np.ndarray]:
  """Calibration inputs cut into batches of the model's batch size (the last filled from the first faces)."""
  b = batch or 1
  n = -(-len(calibration) // b) * b
  full = np.resize(calibration, (n,) + calibration.shape[1:]) if n != len(calibration) else calibration
  return [full[i:i + b] for i in range(0, n, b)]


def call_in_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: Optional[int],
                    max_batch: int = 256) -> np.ndarray:
  """``run`` over ``x`` in chunks: of the file's fixed ``batch_size`` (the last chunk zero-padded, its padding
  rows dropped), or of up to ``max_batch`` rows for a dynamic-batch file (``batch_size`` None)."""
  x = np.ascontiguousarray(x, np.float32)
  bs = batch_size or min(max_batch, len(x))
  out = []
  for start in range(0, len(x), bs):
    chunk = x[start:start + bs]
    n = len(chunk)
    if batch_size is not None and n < bs:
      chunk = np.concatenate([chunk, np.zeros((bs - n,) + chunk.shape[1:], np.float32)])
    out.append(run(chunk)[:n])
  return np.concatenate(out)
