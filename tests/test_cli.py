"""The command line: config errors fail fast and clearly; train + evaluate leave their outputs."""

import glob
import json
import re
import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYN = str(ROOT / "experiments" / "convnext_synthetic.py")


def _cli(*args, env_extra=None, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "fer_jax.main", *args], env=env, capture_output=True,
                        text=True, timeout=timeout, cwd=str(ROOT))


def test_typo_in_field_fails_at_once_naming_it(tmp_path):
  p = _cli("train", f"--config={SYN}", "--config.optimizer.lrr=3e-4", f"--workdir={tmp_path}/w")
  assert p.returncode == 2
  assert "config has no field 'optimizer.lrr' (did you mean 'optimizer.lr'?)" in p.stderr
  assert not (tmp_path / "w").exists()  # nothing was started


def test_bad_config_option_and_missing_file(tmp_path):
  p = _cli("train", f"--config={SYN}:stepz=3", f"--workdir={tmp_path}")
  assert p.returncode == 2 and "Unknown config option 'stepz'" in p.stderr and "'steps'" in p.stderr
  p = _cli("train", "--config=experiments/nope.py", f"--workdir={tmp_path}")
  assert p.returncode == 2 and "nope.py" in p.stderr


def test_wrong_type_override_is_rejected(tmp_path):
  p = _cli("train", f"--config={SYN}", "--config.optimizer.lr=fast", f"--workdir={tmp_path}/w")
  assert p.returncode != 0 and "lr" in p.stderr


def _toy_overrides(tmp_path, workdir):
  return [
      f"--config={SYN}:runlocal", "--config.dataset.name=toy_blobs",
      "--config.dataset.import_module=toy_blobs", f"--config.dataset.data_dir={tmp_path}/data",
      "--config.dataset.num_classes=4", "--config.evals.validation.split=validation",
      "--config.input.resize=16", "--config.input.crop=16", "--config.input.batch_size=16",
      "--config.input.eval_batch_size=32", "--config.model.head.num_outputs=4",
      "--config.model.backbone.dims=(8,16,16,16)", "--config.num_train_steps=6",
      "--config.log_every_steps=2", "--config.checkpoint.every_steps=3", f"--workdir={workdir}"]


@pytest.mark.parametrize("bs", ["0", "-16"])
def test_non_positive_batch_size_fails_naming_the_field(tmp_path, bs):
  p = _cli("train", f"--config={SYN}", f"--config.input.batch_size={bs}", f"--workdir={tmp_path}/w")
  assert p.returncode != 0
  assert f"config.input.batch_size={bs}; expected a positive integer" in p.stderr
  assert not (tmp_path / "w").exists()  # checked before the work dir, the data or the devices


def test_evaluate_without_checkpoint_fails_and_leaves_no_folder(tmp_path):
  workdir = tmp_path / "empty"
  workdir.mkdir()
  p = _cli("evaluate", "--split=validation", *_toy_overrides(tmp_path, workdir))
  assert p.returncode != 0
  assert f"No checkpoint in {workdir / 'checkpoints'}; train first (fer-jax train ...)" in p.stderr
  assert os.listdir(workdir) == []


def test_train_then_evaluate_writes_outputs(tmp_path):
  workdir = tmp_path / "run"
  overrides = _toy_overrides(tmp_path, workdir)
  p = _cli("train", *overrides)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "step 6/6" in p.stderr and "steps/s" in p.stderr and "ETA" in p.stderr
  assert "FINAL validation: accuracy" in p.stdout
  metrics = json.loads((workdir / "metrics.json").read_text())
  cm = metrics["validation"]["confusion_matrix"]
  assert sum(map(sum, cm)) == 64  # every validation example counted exactly once
  assert metrics["validation"]["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(4)) / 64)
  assert (workdir / "confusion_matrix_validation.png").stat().st_size > 1000
  assert glob.glob(str(workdir / "events.out.tfevents.*"))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  p = _cli("evaluate", "--split=validation", *overrides)
  assert p.returncode == 0, p.stderr[-3000:]
  ev = json.loads((workdir / "metrics_eval_validation.json").read_text())
  assert ev["step"] == 6 and ev["validation"]["confusion_matrix"] == cm
  assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 6
  assert not (workdir / ".fer_jax.lock").exists()  # released at the end of training
  # Evaluation while a run holds the work dir (a live lock: this test's process), with an output that
  # cannot be written: the metrics are printed first, then a clear error naming the path, exit 1.
  (workdir / ".fer_jax.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
  (workdir / "metrics_eval_all.json").mkdir()
  p = _cli("evaluate", *overrides)
  assert p.returncode == 1, p.stderr[-3000:]
  assert "FINAL validation: accuracy" in p.stdout
  assert (f"error: Could not write the evaluation outputs to {workdir / 'metrics_eval_all.json'}: "
          "IsADirectoryError") in p.stderr
  assert "Traceback" not in p.stderr
  (workdir / "metrics_eval_all.json").rmdir()
  (workdir / ".fer_jax.lock").unlink()
  # A corrupt checkpoint: a clear error naming it, and nothing deleted.
  state_dir = workdir / "checkpoints" / "6" / "state"
  files = sorted(p for p in state_dir.rglob("*") if p.is_file())
  for f in files:
    f.write_bytes(b"garbage")
  p = _cli("evaluate", "--split=validation", *overrides)
  assert p.returncode != 0
  assert "Could not restore the checkpoint at" in p.stderr and str(workdir / "checkpoints" / "6") in p.stderr
  assert sorted(p for p in state_dir.rglob("*") if p.is_file()) == files
  assert (workdir / "checkpoints" / "3").is_dir() and (workdir / "metrics.json").exists()


def _run_in_process(capsys, *args):
  from fer_jax import main as main_lib
  with pytest.raises(SystemExit) as e:
    main_lib.run(["fer-jax", *args])
  out = capsys.readouterr()
  return e.value.code, out.out, out.err


def test_help_lists_every_subcommand_and_version_prints(capsys):
  from fer_jax import __version__
  code, out, _ = _run_in_process(capsys, "--help")
  assert code == 0
  for name in ("train", "evaluate", "predict", "explain", "export", "pairwise", "emotion-bank"):
    assert f"\n  {name} " in out, (name, out)
  code, out, _ = _run_in_process(capsys, "--version")
  assert code == 0 and out.strip() == f"fer-jax {__version__}"


@pytest.mark.parametrize("mode", ["train", "evaluate"])
def test_train_and_evaluate_help_list_their_flags_and_an_example(capsys, mode):
  code, out, _ = _run_in_process(capsys, mode, "--help")
  assert code == 0
  for flag in ("--config=", "--workdir=", "--config.FIELD=VALUE", "jax_distributed"):
    assert flag in out
  assert ("--split=" in out) == (mode == "evaluate")
  assert f"example:\n  fer-jax {mode} --config=experiments/" in out


def test_unknown_or_missing_subcommand_fails_naming_the_choices(capsys):
  code, _, err = _run_in_process(capsys, "trian")
  assert code == 2 and "unknown subcommand 'trian'" in err and "train, evaluate, predict" in err
  code, _, err = _run_in_process(capsys)
  assert code == 2 and "give a subcommand" in err


@pytest.mark.parametrize("sub,flags", [
    ("predict", ["--output", "--no-detect", "--every", "--annotate", "--model", "--workdir"]),
    ("explain", ["--out_dir", "--target", "--baseline", "--steps", "--model", "--workdir"]),
    ("export", ["--format", "--int8", "--output", "--model", "--workdir"]),
    ("pairwise", ["--config", "--workdir", "--pairs", "--single", "--single_budget"]),
    ("emotion-bank", ["--config", "--workdir", "--emotions", "--explain", "--prune", "--noise"]),
])
def test_argparse_subcommands_help_lists_flags_and_an_example(capsys, sub, flags):
  code, out, _ = _run_in_process(capsys, sub, "--help")
  assert code == 0 and out.startswith(f"usage: fer-jax {sub}")
  for flag in flags:
    assert flag in out, (sub, flag)
  assert re.search(rf"examples?:\n  fer-jax {sub} ", out), out
