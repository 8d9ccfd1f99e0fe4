r"""Training work dir -> a loadable model file pair (``<name>.msgpack`` + ``<name>.json``).

    python -m fer_jax.pretrained.package --workdir=runs/resnet_fer2013_seed0 --name=fer2013_resnet_s \
        --command="python -m fer_jax.main --config=experiments/resnet_fer2013.py ..."

Takes the latest checkpoint (or ``--step``), the weights the evaluators used (the EMA when
``config.ema.eval_with_ema``) and the BatchNorm statistics, the model spec and test-time preprocessing
of the run's ``config.json``, the class names of its dataset, and its final validation results from
``metrics.json``. Writes into ``fer_jax/pretrained/weights/`` (shipped with the package) unless
``--out_dir`` is given; ``fer_jax.pretrained.load(name_or_json_path)`` reads it back.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import jax
import ml_collections
from absl import app, flags

from fer_jax import pretrained
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


_WORKDIR = flags.DEFINE_string("workdir", None, "Training work dir (config.json, checkpoints/, metrics.json).")
_NAME = flags.DEFINE_string("name", None, "Model name (file stem).")
_OUT_DIR = flags.DEFINE_string("out_dir", pretrained.WEIGHTS_DIR, "Where to write <name>.msgpack / .json.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_COMMAND = flags.DEFINE_string("command", "", "The training command, recorded in the metadata.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing <name>.msgpack / .json.")


def main(argv):
  del argv
  prefix = os.path.join(_OUT_DIR.value, _NAME.value)
  existing = [p for p in (prefix + ".msgpack", prefix + ".json") if os.path.exists(p)]
  if existing and not _OVERWRITE.value:
    raise SystemExit(f"{existing} already exist; pass --overwrite to replace them, or another --name")
  config, exp, variables, step = variables_from_workdir(_WORKDIR.value, _STEP.value)
  metrics = workdir_lib.read_metrics(_WORKDIR.value)
  meta = build_meta(config, exp, step, _NAME.value, _COMMAND.value, metrics)
  weights, meta_path = pretrained.save(prefix, meta, variables)
  size = os.path.getsize(weights) / 2**20
  print(f"Wrote {weights} ({size:.2f} MiB) and {meta_path}: step {step}, validation accuracy "
        f"{meta['results']['accuracy']}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "name"])
  app.run(main)
