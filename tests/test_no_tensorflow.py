"""The core runs with no TensorFlow importable: a subprocess whose ``import tensorflow`` fails builds a
dataset, trains, checkpoints, resumes, evaluates and writes TensorBoard events; TensorBoard's own event
reader parses them back here."""

import glob
import json
import os
import pathlib
import subprocess
import sys
import textwrap

from tensorboard.backend.event_processing import event_accumulator

from fer_jax.testing import HIDE_TENSORFLOW

ROOT = pathlib.Path(__file__).resolve().parents[1]

PROGRAM = textwrap.dedent("""
    import json, sys
    try:
      import tensorflow  # noqa: F401
      sys.exit("tensorflow imported although hidden")
    except ModuleNotFoundError:
      pass
    sys.path.insert(0, {tests!r})
    from fer_jax import config_utils
    from fer_jax.train import trainer

    c = config_utils.base_config()
    c.dataset.update(name="toy_blobs", import_module="toy_blobs", data_dir={data!r}, num_classes=4,
                     image_size=16)
    c.evals = config_utils.evals("classification", test=None, every_steps=3)
    c.input.update(batch_size=16, eval_batch_size=32, resize=18, crop=16, num_threads=1)
    c.model.backbone = dict(name="convnext", depths=(1, 1), dims=(8, 16), stem_patch_size=2)
    c.model.head = dict(name="linear", num_outputs=4)
    c.num_train_steps = {steps}
    c.log_every_steps = 2
    c.checkpoint.update(every_steps=3, keep=5)
    result = trainer.train_and_evaluate(c, {workdir!r})
    ev = trainer.evaluate_checkpoint(c, {workdir!r}, split="validation")
    leaked = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
    print("RESULT", json.dumps(dict(accuracy=result["validation"]["accuracy"], step=result["step"],
                                    eval_step=ev["step"], leaked=leaked)))
    """)


def _run(tmp_path, steps):
  code = PROGRAM.format(tests=str(ROOT / "tests"), data=str(tmp_path / "data"), steps=steps,
                        workdir=str(tmp_path / "run"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", HIDE_TENSORFLOW + code], env=env, cwd=str(ROOT),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def test_train_resume_evaluate_without_tensorflow(tmp_path):
  first = _run(tmp_path, 3)
  second = _run(tmp_path, 6)  # resumes from the step-3 checkpoint, without TensorFlow too
  assert first["leaked"] == second["leaked"] == []
  assert (first["step"], second["step"], second["eval_step"]) == (3, 6, 6)
  assert 0.0 <= second["accuracy"] <= 1.0
  workdir = tmp_path / "run"
  files = glob.glob(str(workdir / "events.out.tfevents.*"))
  assert len(files) == 4, files  # train + evaluate, twice
  steps, images = {}, set()
  for f in files:
    a = event_accumulator.EventAccumulator(f, size_guidance={event_accumulator.SCALARS: 0,
                                                            event_accumulator.IMAGES: 0})
    a.Reload()
    for tag in a.Tags()["scalars"]:
      steps.setdefault(tag, set()).update(e.step for e in a.Scalars(tag))
    images.update(a.Tags()["images"])
  assert steps["train/loss"] == {2, 3, 4, 6}
  assert steps["validation/accuracy"] == {3, 6}  # in-loop at 3, final / evaluate at 6
  assert "validation/confusion_matrix" in images
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert metrics["validation"]["accuracy"] == second["accuracy"]
