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

from absl import app, flags

from fer_jax import pretrained
from fer_jax.pretrained.from_run import LICENSE_NOTES, build_meta, variables_from_workdir  # noqa: F401
from fer_jax.train import workdir as workdir_lib

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
