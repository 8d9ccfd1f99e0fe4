"""Loading the shipped MTCNN weights (``weights/mtcnn.msgpack``, checked against ``weights/mtcnn.json``).

Plain Flax msgpack (no pickle, no torch): written once by :mod:`fer_jax.detect.convert_mtcnn` from
facenet-pytorch's weights (MIT, ``weights/LICENSE-facenet-pytorch.txt``).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional

import numpy as np

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
WEIGHTS_FILE = os.path.join(WEIGHTS_DIR, "mtcnn.msgpack")
NETS = ("pnet", "rnet", "onet")


class MTCNNWeightsError(ValueError):
  """The MTCNN weight file or its sidecar is missing, corrupt, or not the expected networks."""


def load_variables(path: Optional[str] = None) -> Dict[str, Any]:
  """``{'pnet': {'params': ...}, 'rnet': ..., 'onet': ...}`` (NumPy float32) from ``path`` (default: the
  shipped file), after checking its SHA-256 against the JSON sidecar next to it (same stem)."""
  from flax import serialization  # pylint: disable=import-outside-toplevel
  path = WEIGHTS_FILE if path is None else str(path)
  sidecar = os.path.splitext(path)[0] + ".json"
  for p in (path, sidecar):
    if not os.path.isfile(p):
      raise MTCNNWeightsError(f"MTCNN weight file {p} is missing (regenerate it with "
                              f"`python -m fer_jax.detect.convert_mtcnn`)")
  try:
    with open(sidecar) as f:
      want = json.load(f)["sha256"]
  except (ValueError, KeyError, TypeError) as e:
    raise MTCNNWeightsError(f"{sidecar} is not a valid MTCNN weights sidecar (JSON with 'sha256'): {e!r}") from e
  with open(path, "rb") as f:
    blob = f.read()
  got = hashlib.sha256(blob).hexdigest()
  if got != want:
    raise MTCNNWeightsError(f"{path} is corrupt: sha256 {got}, expected {want} (from {sidecar})")
  try:
    tree = serialization.msgpack_restore(blob)
  except Exception as e:  # pylint: disable=broad-except
    raise MTCNNWeightsError(f"{path} is not a Flax msgpack file: {e!r}") from e
  if not isinstance(tree, dict) or sorted(tree) != sorted(NETS):
    raise MTCNNWeightsError(f"{path} must hold the networks {NETS}, got {sorted(tree) if isinstance(tree, dict) else type(tree)}")
  return {net: {"params": _as_float32(tree[net]["params"])} for net in NETS}


def _as_float32(tree):
  if isinstance(tree, dict):
    return {k: _as_float32(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)
