"""Command line: ``python -m fer_jax.main --config=experiments/X.py:opts --workdir=DIR [--mode=train]``.

Also installed as ``fer-jax train|evaluate --config=... --workdir=...``. Any config field can be
overridden (``--config.optimizer.lr=3e-4``); an unknown field fails at once with its name.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:options].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summaries.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "train (resumes) or evaluate.")
_SPLIT = flags.DEFINE_string(
    "split", None, "evaluate: run the config.evals evaluators on this split (default: every evaluator).")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() first (multi-host TPU / GPU pods).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  import jax
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  from fer_jax.train import trainer
  config = _CONFIG.value
  logging.info("Config:\n%s", config)
  logging.info("JAX %s: %d process(es), devices %s", jax.__version__, jax.process_count(), jax.devices())
  from fer_jax.train import workdir as workdir_lib
  try:
    if _MODE.value == "train":
      results = trainer.train_and_evaluate(config, _WORKDIR.value)
      trainer.print_final(results, _WORKDIR.value)  # nothing when preempted (that line is printed)
    else:  # prints its FINAL lines itself, before writing any file
      trainer.evaluate_checkpoint(config, _WORKDIR.value, split=_SPLIT.value)
  except (workdir_lib.WorkdirLockedError, trainer.CheckpointMismatchError, trainer.OutputWriteError) as e:
    # Errors of the work dir's state, not of the code: the message says all (no traceback). Exit 1.
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def _preflight(argv):
  """Checks --config.a.b overrides against the config before absl does (clear errors, exit 2)."""
  from fer_jax import config_utils
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    i = argv.index("--config") if "--config" in argv else -1
    spec = argv[i + 1] if 0 <= i < len(argv) - 1 else None
  if spec is None:
    print("error: --config=experiments/<file>.py[:options] is required", file=sys.stderr)
    sys.exit(2)
  try:
    config = config_utils.load_config_file(spec)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: --config={spec}: {e}", file=sys.stderr)
    sys.exit(2)
  errors = config_utils.check_overrides(config, argv)
  if errors:
    print("error: " + "\nerror: ".join(errors), file=sys.stderr)
    sys.exit(2)


def run(argv=None):
  """Console-script entry: ``fer-jax train|evaluate --config=... --workdir=...``."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) > 1 and argv[1] in ("train", "evaluate"):
    argv = [argv[0], f"--mode={argv[1]}"] + argv[2:]
  _preflight(argv[1:])
  app.run(main, argv=argv)


if __name__ == "__main__":
  run()
