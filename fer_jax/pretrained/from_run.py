"""A training work dir's checkpoint as a model: its variables and the metadata ``fer_jax.pretrained`` reads.

Shared by ``pretrained.from_workdir`` (``--workdir`` of predict / explain / export) and the packaging CLI
``fer_jax.pretrained.package``; defines no absl flags, so importing it next to ``fer_jax.main`` is safe.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import jax
import ml_collections

from fer_jax.train import checkpoints, optim, trainer
from fer_jax.train import workdir as workdir_lib

LICENSE_NOTES = {
    "fer2013": ("Trained on FER2013 (Goodfellow et al. 2013, Kaggle 'Challenges in Representation Learning'): "
                "the dataset is for non-commercial research, and so are these weights."),
}


def variables_from_workdir(workdir: str, step: Optional[int] = None):
  """(config, exp, variables {'params', 'batch_stats'...}, step) of a training work dir's checkpoint."""
  saved = workdir_lib.read_saved_config(workdir)
  if saved is None:
    raise FileNotFoundError(f"{workdir} has no readable {workdir_lib.CONFIG_NAME}: is it a training work dir?")
  config = ml_collections.ConfigDict(saved)
  exp = trainer.Experiment(config, workdir)
  manager = checkpoints.create_checkpoint_manager(workdir, config, create=False)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint in {manager.directory}")
  tx = optim.create_optimizer(config, optim.create_schedule(config, 1))
  state, _ = trainer.create_train_state(config, exp.model, tx, jax.random.key(0), exp.mesh, exp.task,
                                        exp.source(config.dataset.train_split))
  state, step = checkpoints.restore_checkpoint(manager, state, None, step)
  manager.close()
  params = trainer._eval_params(state, config)  # noqa: SLF001 -- the evaluators' choice, on purpose
  variables = {"params": jax.device_get(params), **jax.device_get(dict(state.model_state))}
  return config, exp, variables, int(step)


def build_meta(config, exp, step: int, name: str, command: str, metrics: Dict[str, Any]) -> Dict[str, Any]:
  inp = config.input
  val = metrics.get("validation") or {}
  dataset = str(config.dataset.name)
  family = dataset.split("/")[0]
  return {
      "name": name,
      "model": {"backbone": dict(config.model.backbone), "head": dict(config.model.head)},
      "input": {"image_size": int(inp.resize or config.dataset.image_size), "crop": int(inp.crop),
                "channels": int(inp.channels),
                "per_image_standardization": bool(inp.get("per_image_standardization", False)),
                "mean": inp.get("mean"), "std": inp.get("std"),
                "test_crops": str(inp.get("eval_crops", "center"))},
      "class_names": list(exp.task.class_names),
      "dataset": dataset,
      "trained": {"command": command, "step": step, "seed": int(config.seed),
                  "train_seconds": metrics.get("train_seconds")},
      "results": {"split": "validation (FER2013 PublicTest)" if family == "fer2013" else "validation",
                  "accuracy": val.get("accuracy"), "macro_f1": val.get("macro_f1")},
      "license": LICENSE_NOTES.get(family, "See the training dataset's terms."),
  }
