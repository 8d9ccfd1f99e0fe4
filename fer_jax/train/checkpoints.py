"""Orbax checkpoints of the train state and the grain iterator: the manager (keep-last-N, async,
preemption policy), and a restore that tells a config change from corruption and resumes the input of a
run written by another number of processes."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from fer_jax.train import workdir as workdir_lib


class CheckpointMismatchError(RuntimeError):
  """The checkpoints in the work dir hold a state of another shape than the current config builds."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_checkpoint_manager(workdir: str, config, create: bool = True) -> ocp.CheckpointManager:
  cc = config.checkpoint
  policies = ocp.checkpoint_managers
  options = ocp.CheckpointManagerOptions(
      max_to_keep=cc.get("keep", 3),
      # Every `every_steps`, on a preemption signal, and when the loop forces the final save.
      save_decision_policy=policies.AnySavePolicy([
          policies.FixedIntervalPolicy(cc.get("every_steps", 1000)),
          policies.PreemptionCheckpointingPolicy()]),
      enable_async_checkpointing=cc.get("async", True), create=create)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "data"))


def _saved_shapes(manager: ocp.CheckpointManager, step: int) -> Optional[Dict[str, Tuple[int, ...]]]:
  """{keystr path: shape} of the state saved at ``step`` (from its metadata; None if unreadable)."""
  tree = None
  try:  # the saved tree metadata of the "state" item (<step>/state/_METADATA)
    tree = ocp.StandardCheckpointHandler().metadata(
        ocp.path.step.build_step_path(manager.directory, ocp.path.step.standard_name_format(), step)
        / "state")
  except Exception:  # noqa: BLE001 -- metadata is best effort
    try:
      meta = manager.item_metadata(step)
      tree = meta["state"] if "state" in meta else None
    except Exception:  # noqa: BLE001
      tree = None
  if tree is None:
    return None
  tree = getattr(tree, "tree", tree)
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in leaves if hasattr(v, "shape")}


def _shape_differences(saved: Dict[str, Tuple[int, ...]], abstract) -> List[str]:
  """['.params['backbone']['x']: checkpoint (8,) vs config (16,)', ...] (saved state vs new state)."""
  def norm(path: str) -> str:  # orbax metadata may use dict keys where the state has attributes
    return path.replace("['", ".").replace("']", "").lstrip(".")
  new = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
  saved_n = {norm(k): v for k, v in saved.items()}
  new_n = {norm(k): (k, v) for k, v in new.items()}
  out = []
  order = ("params.", "model_state.", "ema_params.", "opt_state.")  # the model's own parameters first
  rank = lambda k: (next((i for i, p in enumerate(order) if k.startswith(p)), len(order)), k)  # noqa: E731
  for k in sorted(set(saved_n) | set(new_n), key=rank):
    if k not in saved_n:
      out.append(f"{k}: not in the checkpoint, shape {new_n[k][1]} in the config")
    elif k not in new_n:
      out.append(f"{k}: shape {saved_n[k]} in the checkpoint, not in the config")
    elif saved_n[k] != new_n[k][1]:
      out.append(f"{k}: shape {saved_n[k]} in the checkpoint vs {new_n[k][1]} in the config")
  return out


def _raise_mismatch(path: str, step: int, diffs: List[str], config_changes, cause) -> None:
  shown = "\n  ".join(diffs[:20]) + (f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20 else "")
  changed = (f"Config fields changed since the checkpoints were made: "
             f"{workdir_lib.format_changes(config_changes)}." if config_changes else
             "No saved config.json to compare with; some config field that shapes the model changed.")
  raise CheckpointMismatchError(
      f"The checkpoint at {path} (step {step}) does not fit the state this config builds: "
      f"{len(diffs)} array(s) differ:\n  {shown}\n{changed}\n"
      "The checkpoints are valid for the old config; use a new --workdir or restore the old config. "
      "Nothing was deleted.") from cause


def restore_checkpoint(manager: ocp.CheckpointManager, state: Any, train_iter=None,
                       step: Optional[int] = None, config_changes: Optional[List[Tuple[str, Any, Any]]] = None):
  """Restores ``state`` (shardings taken from the given state) and, if given, the grain iterator.

  ``config_changes`` (from ``workdir.config_changes``) are named when the saved state does not fit."""
  step = manager.latest_step() if step is None else step
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  path = os.path.join(str(manager.directory), str(step))
  # Shapes first (from the saved metadata): a state of another layout is a config change, not corruption,
  # and orbax is not left with a half-done restore.
  saved = _saved_shapes(manager, step)
  diffs = _shape_differences(saved, abstract) if saved else []
  if diffs:
    _raise_mismatch(path, step, diffs, config_changes, None)
  items = {"state": ocp.args.StandardRestore(abstract)}
  foreign_data_state = _data_state_of_other_process_count(path) if train_iter is not None else None
  if train_iter is not None and foreign_data_state is None:
    items["data"] = grain.checkpoint.CheckpointRestore(train_iter)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    if foreign_data_state is not None:
      train_iter.set_state(foreign_data_state)
  except Exception as e:  # orbax raises many kinds; we name the path and keep the files.
    raise RuntimeError(
        f"Could not restore the checkpoint at {path} (step {step}): {type(e).__name__}: {e}\n"
        "Nothing was deleted. If the checkpoint is corrupt, move that directory away and rerun to "
        "resume from the previous one, or use a new --workdir.") from e
  return restored["state"], step


def _data_state_of_other_process_count(path: str):
  """The grain iterator state of a checkpoint written by another number of processes, else None.

  grain saves one ``process_<p>-of-<n>.json`` per process. The training input is process-count
  invariant (``pipeline.train_dataset``: every process is at the same batch index of the same global
  stream), so when this run's file is missing, the other count's states (which must agree) apply."""
  data_dir = os.path.join(path, "data")
  mine = os.path.join(data_dir, f"process_{jax.process_index()}-of-{jax.process_count()}.json")
  if not os.path.isdir(data_dir) or os.path.exists(mine):
    return None
  files = sorted(f for f in os.listdir(data_dir) if f.startswith("process_") and f.endswith(".json"))
  if not files:
    return None
  states = []
  for f in files:
    with open(os.path.join(data_dir, f)) as fh:
      states.append(fh.read())
  if len(set(states)) != 1:
    raise RuntimeError(f"The checkpoint {path} was written by {len(files)} processes whose input positions "
                       f"differ ({files}); it cannot be resumed with {jax.process_count()} process(es).")
  logging.info("Resuming the input pipeline from %s (written by another number of processes).", files[0])
  return json.loads(states[0])


