"""Device mesh and parameter placement (big_vision-style regex -> tactic rules).

``config.mesh = [('data', -1), ('fsdp', 1)]``: -1 takes the devices left over. The batch is split over
every mesh axis; parameters are replicated or, with the ``'fsdp'`` tactic, split along their largest
dimension that the ``fsdp`` axis divides.
"""

from __future__ import annotations

import re
from typing import Any, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def create_mesh(axes: Sequence[Tuple[str, int]], devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  names = [a for a, _ in axes]
  sizes = [int(s) for _, s in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={list(axes)}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if len(devices) % known:
    raise ValueError(f"config.mesh={list(axes)} does not divide the {len(devices)} devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"config.mesh={list(axes)} uses {int(np.prod(sizes))} devices; "
                     f"there are {len(devices)}")
  return Mesh(np.asarray(devices).reshape(sizes), names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every mesh axis."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: Tuple[int, ...], axis_size: int) -> P:
  if axis_size == 1:
    return P()
  for dim in np.argsort(shape)[::-1]:
    if shape[dim] % axis_size == 0 and shape[dim] >= axis_size:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[Tuple[str, str]]) -> Any:
  """Maps a tree of arrays / ShapeDtypeStructs to NamedShardings by the first matching rule.

  Rules are ``(regex on 'a/b/c' path, tactic)`` with tactic 'replicate' or 'fsdp'; unmatched leaves are
  replicated.
  """
  compiled = [(re.compile(r), t) for r, t in rules]
  for _, t in rules:
    if t not in ("replicate", "fsdp"):
      raise ValueError(f"Unknown sharding tactic {t!r}; expected 'replicate' or 'fsdp'")
  fsdp = mesh.shape.get("fsdp", 1)

  def place(path, leaf):
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    shape = tuple(getattr(leaf, "shape", ()))
    for pattern, tactic in compiled:
      if pattern.search(name):
        if tactic == "fsdp":
          return NamedSharding(mesh, _fsdp_spec(shape, fsdp))
        break
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(place, tree)
