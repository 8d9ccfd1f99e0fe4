"""Command line: ``fer-jax SUBCOMMAND ...`` (``fer-jax --help`` lists them), or as before
``python -m fer_jax.main --config=experiments/X.py:opts --workdir=DIR [--mode=train]``.

``train`` / ``evaluate`` take absl flags; any config field can be overridden (``--config.optimizer.lr=3e-4``)
and an unknown field fails at once with its name. ``predict`` / ``explain`` / ``export`` / ``pairwise`` /
``emotion-bank`` are argparse programs in ``fer_jax.predict.cli``, ``fer_jax.explain.cli``,
``fer_jax.export.cli``, ``fer_jax.pairwise.sweep`` and ``fer_jax.emotion_bank.bank``.
"""

from __future__ import annotations

import importlib
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


SUBCOMMANDS = {
    "train": "Train (or resume) an experiment config into a work dir.",
    "evaluate": "Run a config's evaluators on a work dir's latest checkpoint.",
    "predict": "Faces and emotions of photos, folders and videos -> CSV / JSON lines / Parquet.",
    "explain": "Integrated Gradients heat maps per face (PNG) and attribution per facial region (CSV).",
    "export": "A model as a TFLite or ONNX file (float or int8), checked against JAX.",
    "pairwise": "Every pair of classes as a two-class model (resumable), one-vs-one voting, pair heat map.",
    "emotion-bank": "One-vs-rest landmark models per emotion (resumable): calibrated bank, IG landmark relevance, "
                    "pruning.",
}
_ARGPARSE_SUBCOMMANDS = {"predict": "fer_jax.predict.cli", "explain": "fer_jax.explain.cli",
                         "export": "fer_jax.export.cli", "pairwise": "fer_jax.pairwise.sweep",
                         "emotion-bank": "fer_jax.emotion_bank.bank"}
_TRAIN_EXAMPLES = {
    "train": ("fer-jax train --config=experiments/resnet_fer2013.py:epochs=30 \\\n"
              "    --config.dataset.manual_dir=~/data/fer2013 --workdir=runs/resnet_fer2013"),
    "evaluate": "fer-jax evaluate --config=experiments/resnet_fer2013.py --workdir=runs/resnet_fer2013",
}


def version() -> str:
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel
    return metadata.version("fer_jax")
  except Exception:  # pylint: disable=broad-except  (running from a source tree that is not installed)
    from fer_jax import __version__  # pylint: disable=import-outside-toplevel
    return __version__


def top_level_help() -> str:
  width = max(map(len, list(SUBCOMMANDS) + ["-h, --help"]))
  lines = ["usage: fer-jax SUBCOMMAND [FLAGS]   (fer-jax SUBCOMMAND --help for its flags and an example)", "",
           "Facial emotion recognition in JAX / Flax.", "", "subcommands:"]
  lines += [f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()]
  lines += ["", "options:", f"  {'-h, --help':<{width}}  show this message and exit",
            f"  {'--version':<{width}}  print the version and exit"]
  return "\n".join(lines)


def train_help(mode: str) -> str:
  """``fer-jax train|evaluate --help``: this module's flags (their absl help strings) and an example."""
  rows = [("--config=FILE.py[:k=v,...]", _CONFIG), ("--config.FIELD=VALUE", None), ("--workdir=DIR", _WORKDIR)]
  if mode == "evaluate":
    rows.append(("--split=SPLIT", _SPLIT))
  rows.append(("--[no]jax_distributed", _DISTRIBUTED))
  width = max(len(r[0]) for r in rows)
  text = {None: "Override one config field (an unknown field fails at once, naming it)."}
  lines = [f"usage: fer-jax {mode} --config=experiments/<file>.py[:options] --workdir=DIR [FLAGS]", "",
           SUBCOMMANDS[mode], "", "flags:"]
  for flag, holder in rows:
    help_text = text[None] if holder is None else flags.FLAGS[holder.name].help
    lines.append(f"  {flag:<{width}}  {help_text}")
  lines += ["", "Experiment configs and their options: experiments/*.py (each file's docstring).", "",
            "example:", "  " + _TRAIN_EXAMPLES[mode]]
  return "\n".join(lines)


def run(argv=None):
  """Console-script entry ``fer-jax`` (and ``python -m fer_jax.main``): dispatches the subcommands."""
  argv = list(sys.argv if argv is None else argv)
  first = argv[1] if len(argv) > 1 else None
  if first in ("-h", "--help", "help"):
    print(top_level_help())
    sys.exit(0)
  if first in ("--version", "-V", "version"):
    print(f"fer-jax {version()}")
    sys.exit(0)
  if first in _ARGPARSE_SUBCOMMANDS:
    try:
      module = importlib.import_module(_ARGPARSE_SUBCOMMANDS[first])
    except ImportError as e:
      print(f"error: fer-jax {first} cannot start: {e}", file=sys.stderr)
      sys.exit(1)
    sys.exit(module.main(argv[2:]))
  if first in ("train", "evaluate"):
    if any(a in ("-h", "--help", "--helpfull", "--helpshort") for a in argv[2:]):
      print(train_help(first))
      sys.exit(0)
    argv = [argv[0], f"--mode={first}"] + argv[2:]
  elif first is None:
    print(top_level_help(), file=sys.stderr)
    print("\nerror: give a subcommand", file=sys.stderr)
    sys.exit(2)
  elif not first.startswith("-"):
    print(f"error: unknown subcommand {first!r}; expected one of {', '.join(SUBCOMMANDS)} "
          "(fer-jax --help)", file=sys.stderr)
    sys.exit(2)
  _preflight(argv[1:])
  app.run(main, argv=argv)


if __name__ == "__main__":
  run()
