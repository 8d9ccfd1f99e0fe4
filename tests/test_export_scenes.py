"""fer_jax.export.scenes and ``fer-jax export --workdir`` of an ``emotic``-task run (two inputs), and the named
inputs / outputs of fer_jax.export.onnx.

A tiny SeLiNet (ResNet body, 16 px body crops, 24 px scenes) is trained for 2 steps on the ``toy_emotic`` scenes
of test_emotic_task.py. References are independent of the exporter: the run's model applied by hand (NumPy
scaling and normalisation), the files run with onnxruntime sessions and ai_edge_litert's signature runner, mAP
from scikit-learn."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from fer_jax import export
from fer_jax.export import cli, scenes
from test_emotic_task import ToyEmotic, toy_config  # noqa: F401  (tests/test_emotic_task.py; registers toy_emotic)

N_CHECK = 12


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A 2-step toy SeLiNet run (config.json + a checkpoint at step 2)."""
  from fer_jax.train import trainer
  data_dir = str(tmp_path_factory.mktemp("toy_emotic"))
  c = toy_config("selinet_emotic.py", data_dir, steps=2)
  c.evals = {}
  run = str(tmp_path_factory.mktemp("run") / "toy_selinet")
  trainer.train_and_evaluate(c, run)
  return run


@pytest.fixture(scope="module")
def run(workdir):
  return scenes.load_run(workdir)


def reference(run, x):
  """The run's model (as trained) on uint8 examples, scaled and normalised in NumPy."""
  mean, std = np.asarray(run.config.input.mean), np.asarray(run.config.input.std)
  norm = {k: ((v.astype(np.float64) / 255.0 - mean) / std).astype(np.float32) for k, v in x.items()}
  out = run.exp.model.apply(run.variables, train=False, **norm)
  logits = np.asarray(out["sentiment_logits"], np.float64)
  e = np.exp(logits - logits.max(1, keepdims=True))
  return {"category_scores": np.asarray(out["multilabel_logits"]), "sentiment_probs": e / e.sum(1, keepdims=True)}


def toy_test_split(run, n=N_CHECK):
  """The first ``n`` test examples straight from the TFDS source (the toy images are at the task's sizes)."""
  src = run.exp.source("test")
  rec = [src[i] for i in range(n)]
  return {k: np.stack([r[k] for r in rec]) for k in ("body", "context")}, np.stack([r["categories"] for r in rec])


def sklearn_map(scores, labels):
  return float(np.mean([average_precision_score(labels[:, j], scores[:, j]) if labels[:, j].any() else 0.0
                        for j in range(labels.shape[1])]))


def run_onnx(path, x):
  import onnxruntime as ort
  s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  names = [o.name for o in s.get_outputs()]
  rows = [dict(zip(names, s.run(None, {k: v[i:i + 1].astype(np.float32) for k, v in x.items()})))
          for i in range(len(x["body"]))]
  return {k: np.concatenate([r[k] for r in rows]) for k in names}


def run_tflite(path, x):
  from ai_edge_litert.interpreter import Interpreter
  runner = Interpreter(model_path=str(path)).get_signature_runner()
  rows = [runner(**{k: v[i:i + 1].astype(np.float32) for k, v in x.items()}) for i in range(len(x["body"]))]
  return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def check_float_file(run, path, report):
  x, labels = toy_test_split(run)
  want = reference(run, x)
  got = (run_onnx if str(path).endswith(".onnx") else run_tflite)(path, x)
  assert sorted(got) == ["category_scores", "sentiment_probs"]
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=export.FLOAT_TOLERANCE, err_msg=k)
  # The report measured the same: JAX and the file on the same N_CHECK examples.
  assert report["passed"] and report["n_check"] == N_CHECK and report["check_split"] == "test"
  assert max(report["max_abs_diff"].values()) <= export.FLOAT_TOLERANCE
  np.testing.assert_allclose(report["jax"]["map"], sklearn_map(want["category_scores"], labels), atol=1e-6)
  np.testing.assert_allclose(report["file"]["map"], sklearn_map(got["category_scores"], labels), atol=1e-6)
  assert report["sentiment_agreement"] == 1.0 and report["size_bytes"] == os.path.getsize(path)
  meta = export.read_metadata(str(path))
  assert meta["task"] == "emotic" and meta["step"] == 2 and meta["model"] == "toy_selinet"
  assert meta["category_names"][0] == "Affection" and len(meta["category_names"]) == 26
  assert meta["sentiment_names"] == ["negative", "neutral", "positive"]
  assert meta["input_shapes"] == {"body": [1, 16, 16, 3], "context": [1, 24, 24, 3]}
  assert meta["output_names"] == ["category_scores", "sentiment_probs"] and "0..255" in meta["inputs"]["body"]


def test_cli_tflite_float_matches_jax(workdir, run, tmp_path, capsys):
  out, report = tmp_path / "m.tflite", tmp_path / "r.json"
  rc = cli.main(["--workdir", workdir, "--format", "tflite", "--output", str(out), "--check_size", str(N_CHECK),
                 "--report", str(report)])
  text = capsys.readouterr().out
  assert rc == 0, text
  assert "emotic-task run (body + context inputs)" in text and "PASS" in text and "batch-1 CPU latency" in text
  r = json.loads(report.read_text())
  assert r["format"] == "tflite" and not r["int8"] and r["latency_ms_batch1"] > 0
  check_float_file(run, out, r)


@pytest.mark.slow  # ~25 s of jax2onnx conversion
def test_onnx_float_matches_jax(run, tmp_path):
  out = tmp_path / "m.onnx"
  r = scenes.export_run(run, "onnx", str(out), n_check=N_CHECK, latency_runs=5, verbose=False)
  check_float_file(run, out, r.to_dict())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_slow_int8_runs_and_reports(run, tmp_path, fmt):
  """int8 files: quantized for real, and the report's mAP / agreement are the written file's. The 2-step toy
  model is not the acceptance setting, so the check is reported (strict=False), and measured here."""
  out = tmp_path / f"m.{fmt}"
  r = scenes.export_run(run, fmt, str(out), int8=True, n_check=N_CHECK, n_calibration=16, latency_runs=5,
                        strict=False, verbose=False)
  x, labels = toy_test_split(run)
  got = (run_onnx if fmt == "onnx" else run_tflite)(out, x)
  want = reference(run, x)
  np.testing.assert_allclose(r.file["map"], sklearn_map(got["category_scores"], labels), atol=1e-6)
  agreement = float(np.mean(got["sentiment_probs"].argmax(1) == want["sentiment_probs"].argmax(1)))
  assert r.sentiment_agreement == agreement and r.int8 and r.n_calibration == 16 and r.written
  assert r.passed == (r.jax["map"] - r.file["map"] <= scenes.INT8_MAX_MAP_DROP)
  assert 1e-5 < r.max_abs_diff["category_scores"] < 0.5 * np.abs(want["category_scores"]).max()
  if fmt == "tflite":
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(out))
    dtypes = {d["index"]: d["dtype"] for d in it.get_tensor_details()}
    convs = [op for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    kinds = [dtypes[op["inputs"][1]] for op in convs]
    assert kinds.count(np.float32) == 2 and kinds.count(np.int8) >= 4, kinds  # each input's first conv float
  else:
    import onnx
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 4
  assert export.read_metadata(str(out))["quantization"].startswith("int8 weights")


def test_failed_check_and_bad_arguments_leave_files_alone(workdir, run, tmp_path, monkeypatch, capsys):
  keep = tmp_path / "keep.onnx"
  keep.write_bytes(b"previous export")
  with pytest.raises(FileExistsError, match=r"keep\.onnx' already exists; pass overwrite=True"):
    scenes.export_run(run, "onnx", str(keep))
  assert cli.main(["--workdir", workdir, "--format", "onnx", "--output", str(keep)]) == 1
  assert "already exists; pass --overwrite" in capsys.readouterr().err
  with pytest.raises(ValueError, match=r"m\.tflite' does not end in '\.onnx', as format='onnx'"):
    scenes.export_run(run, "onnx", str(tmp_path / "m.tflite"))
  with pytest.raises(ValueError, match=r"format='coreml'; expected one of \['onnx', 'tflite'\]"):
    scenes.export_run(run, "coreml", str(tmp_path / "m.coreml"))
  with pytest.raises(ValueError, match=r"batch_size=None; expected a positive int \(two-input files"):
    scenes.export_run(run, "onnx", str(tmp_path / "m.onnx"), batch_size=None)
  with pytest.raises(ValueError, match=r"Dataset 'toy_emotic' has no split 'holdout'"):
    scenes.export_run(run, "onnx", str(tmp_path / "m.onnx"), check_split="holdout")
  # A failed check (every float export "fails" at tolerance 0) writes nothing, even with overwrite.
  monkeypatch.setattr(export, "FLOAT_TOLERANCE", 0.0)
  with pytest.raises(export.ExportCheckError, match=r"fails its check against JAX, so .*keep\.onnx was not written"
                     ) as e:
    scenes.export_run(run, "onnx", str(keep), n_check=4, overwrite=True, latency_runs=0, verbose=False)
  assert e.value.report.max_abs_diff["category_scores"] > 0 and not e.value.report.written
  assert keep.read_bytes() == b"previous export" and sorted(os.listdir(tmp_path)) == ["keep.onnx"]


def test_cli_refuses_face_options_for_scene_runs_and_other_runs(workdir, tmp_path, capsys):
  out = str(tmp_path / "m.onnx")
  for extra, msg in ((["--test_crops", "flip"], "--test_crops: face-classifier options"),
                     (["--check", "fer2013.csv"], "--check: face-classifier options"),
                     (["--batch_size", "dynamic"], "--batch_size=dynamic: a two-input (emotic-task) file")):
    assert cli.main(["--workdir", workdir, "--format", "onnx", "--output", out] + extra) == 1
    err = capsys.readouterr().err
    assert msg in err, err
  # A classification run is not routed here, and scenes refuses it by name.
  other = tmp_path / "faces_run"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"task": "classification"}))
  assert not scenes.is_scene_run(str(other)) and scenes.is_scene_run(workdir)
  with pytest.raises(ValueError, match=r"faces_run trains task 'classification'; fer_jax.export.scenes exports "
                                       r"'emotic' runs"):
    scenes.load_run(str(other))
  with pytest.raises(FileNotFoundError, match=r"nothing' is not a directory"):
    scenes.load_run(str(tmp_path / "nothing"))
  assert cli.main(["--model", "fer2013_resnet_s", "--format", "onnx", "--check_split", "test",
                   "--output", out]) == 1
  assert "--check_split='test' is for emotic-task work dirs" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ["faces_run"]


def test_onnx_named_inputs_and_outputs_against_numpy():
  """onnx.convert with {name: shape} and a mapping output; Runner pads the last batch of a fixed-batch file."""
  from fer_jax.export import onnx as onnx_export

  def fn(a, b):  # outputs deliberately not in sorted order
    return {"z_sum": a.sum(axis=(1, 2, 3)) * 2.0 + b.mean(axis=(1, 2, 3)), "a_max": jax.numpy.max(b, axis=(1, 2))}

  model = onnx_export.convert(fn, {"a": (2, 4, 4, 1), "b": (2, 3, 3, 2)}, metadata={"k": [1, 2]})
  runner = onnx_export.Runner(model)
  assert runner.input_names == ["a", "b"] and runner.output_names == ["z_sum", "a_max"] and runner.batch_size == 2
  rng = np.random.default_rng(0)
  x = {"a": rng.normal(size=(5, 4, 4, 1)).astype(np.float32), "b": rng.normal(size=(5, 3, 3, 2)).astype(np.float32)}
  got = runner(x)
  np.testing.assert_allclose(got["z_sum"], 2 * x["a"].sum((1, 2, 3)) + x["b"].mean((1, 2, 3)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["a_max"], x["b"].max((1, 2)), rtol=0, atol=0)
  with pytest.raises(ValueError, match=r"the model's inputs are \['a', 'b'\]; got \['a'\]"):
    runner({"a": x["a"]})
  with pytest.raises(ValueError, match=r"named inputs need one fixed batch size"):
    onnx_export.convert(fn, {"a": (2, 4, 4, 1), "b": (None, 3, 3, 2)})
  with pytest.raises(ValueError, match=r"needs calibration data as a mapping with those names; got ndarray"):
    onnx_export.convert(fn, {"a": (2, 4, 4, 1), "b": (2, 3, 3, 2)}, int8=True, calibration=x["a"])


@pytest.mark.slow
def test_slow_baseline_exports_vad_and_no_sentiment(tmp_path_factory):
  """The EMOTIC baseline (two tiny ResNets: stem max-pools with explicit padding; categories + VAD heads):
  ONNX float against the model applied by hand, TFLite int8 runs (edge-padded pools: finite calibration)."""
  from fer_jax.train import trainer
  c = toy_config("emotic_baseline.py", str(tmp_path_factory.mktemp("toy_emotic_b")), steps=2)
  c.evals = {}
  workdir = str(tmp_path_factory.mktemp("run") / "toy_baseline")
  trainer.train_and_evaluate(c, workdir)
  run = scenes.load_run(workdir)
  assert run.output_names == ("category_scores", "vad")
  out = tmp_path_factory.mktemp("files")
  r = scenes.export_run(run, "onnx", str(out / "b.onnx"), n_check=N_CHECK, latency_runs=0, verbose=False)
  x, _ = toy_test_split(run)
  got = run_onnx(out / "b.onnx", x)
  mean, std = np.asarray(run.config.input.mean), np.asarray(run.config.input.std)
  want = run.exp.model.apply(run.variables, train=False, **{
      k: ((v / 255.0 - mean) / std).astype(np.float32) for k, v in x.items()})
  np.testing.assert_allclose(got["category_scores"], want["multilabel_logits"], atol=export.FLOAT_TOLERANCE)
  np.testing.assert_allclose(got["vad"], np.asarray(want["vad"]).reshape(-1, 3), atol=export.FLOAT_TOLERANCE)
  assert r.passed and r.sentiment_agreement is None and "sentiment_accuracy" not in r.file
  assert "sentiment_names" not in export.read_metadata(str(out / "b.onnx"))
  r8 = scenes.export_run(run, "tflite", str(out / "b.tflite"), int8=True, n_check=N_CHECK, n_calibration=16,
                         latency_runs=0, strict=False, verbose=False)
  assert r8.written and np.isfinite(r8.file["map"]) and 0 < r8.max_abs_diff["vad"] < 1


def test_onnx_max_pool_with_explicit_padding_matches_flax():
  """ResNet's stem pool (3x3 / 2, pad 1; jax2onnx 0.17.1 cannot trace it as written): edge padding + 'VALID'
  gives flax's -inf-padded values, odd and even sizes, negative inputs included."""
  import flax.linen as nn
  from fer_jax.export import onnx as onnx_export

  def fn(x):
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))

  x = np.random.default_rng(1).normal(size=(2, 9, 8, 3)).astype(np.float32) - 1.0
  model = onnx_export.convert(fn, (2, 9, 8, 3))
  np.testing.assert_array_equal(onnx_export.Runner(model)(x), np.asarray(fn(x)))
  np.testing.assert_array_equal(np.asarray(onnx_export.max_pool_compatible(fn)(x)), np.asarray(fn(x)))
