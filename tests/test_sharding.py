"""Mesh construction and regex -> tactic parameter placement."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from fer_jax.train import sharding


def test_fsdp_spec_picks_largest_divisible_dim():
  assert sharding._fsdp_spec((7, 7, 1, 64), 4) == P(None, None, None, "fsdp")
  assert sharding._fsdp_spec((96, 384), 4) == P(None, "fsdp")
  assert sharding._fsdp_spec((6, 9), 4) == P()  # nothing divisible: replicated
  assert sharding._fsdp_spec((6,), 1) == P()


def test_rules_first_match_wins():
  mesh = sharding.create_mesh([("data", -1), ("fsdp", 1)])
  tree = {"stem": {"kernel": np.zeros((2, 2, 3, 8))}, "head": {"bias": np.zeros((4,))}}
  out = sharding.tree_shardings(tree, mesh, [("head", "replicate"), (".*", "fsdp")])
  assert out["head"]["bias"].spec == P()
  assert out["stem"]["kernel"].mesh.shape == {"data": jax.device_count(), "fsdp": 1}
  with pytest.raises(ValueError, match="Unknown sharding tactic 'shard'"):
    sharding.tree_shardings(tree, mesh, [(".*", "shard")])


def test_mesh_errors_name_the_config():
  n = jax.device_count()
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.create_mesh([("data", -1), ("fsdp", -1)])
  with pytest.raises(ValueError, match=r"config.mesh=.*does not divide"):
    sharding.create_mesh([("data", -1), ("fsdp", n + 1)])
