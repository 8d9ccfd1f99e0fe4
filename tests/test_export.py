"""fer_jax.export: TFLite / ONNX files of the shipped model against the JAX predictor on real FER2013 faces.

References are independent of the exporter's own check: ``Predictor.predict_proba`` (tested against a NumPy
reference in test_pretrained.py) on the uint8 faces, and the files run here with ai_edge_litert's Interpreter
and an onnxruntime session, not fer_jax's runners. One conversion per format and precision is shared by the
module's tests."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fer_jax import export, pretrained
from fer_jax.export import cli, faces

ROOT = pathlib.Path(__file__).resolve().parents[1]
FER_CSV = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
SHIPPED = "fer2013_resnet_s"
needs_fer = pytest.mark.skipif(not FER_CSV.exists(), reason=f"real FER2013 data not found at {FER_CSV}")


@pytest.fixture(scope="module")
def predictor():
  return pretrained.load(SHIPPED)


@pytest.fixture(scope="module")
def fer():
  """1,000 PublicTest faces (the acceptance check) and 200 Training faces (int8 calibration)."""
  if not FER_CSV.exists():
    pytest.skip(f"real FER2013 data not found at {FER_CSV}")
  check = faces.read_fer2013(str(FER_CSV), "PublicTest", 1000)[0]
  calib = faces.read_fer2013(str(FER_CSV), "Training", 200)[0]
  return check, calib


def _export(tmp_path_factory, predictor, fer, fmt, int8, **kw):
  path = tmp_path_factory.mktemp(f"{fmt}{int8}") / f"m.{fmt}"
  check, calib = fer
  report = export.export(predictor, fmt, str(path), int8=int8, calibration=calib if int8 else None,
                         check_faces=check, latency_runs=10, verbose=False, **kw)
  return report, path


@pytest.fixture(scope="module")
def tflite_float(tmp_path_factory, predictor, fer):
  return _export(tmp_path_factory, predictor, fer, "tflite", False)


@pytest.fixture(scope="module")
def onnx_float(tmp_path_factory, predictor, fer):
  return _export(tmp_path_factory, predictor, fer, "onnx", False)


@pytest.fixture(scope="module")
def tflite_int8(tmp_path_factory, predictor, fer):
  return _export(tmp_path_factory, predictor, fer, "tflite", True)


@pytest.fixture(scope="module")
def onnx_int8(tmp_path_factory, predictor, fer):
  return _export(tmp_path_factory, predictor, fer, "onnx", True)


def run_tflite(path, x):
  """ai_edge_litert directly: one call per face (batch-1 files) or one per batch (dynamic files)."""
  from ai_edge_litert.interpreter import Interpreter
  it = Interpreter(model_path=str(path))
  inp, out = it.get_input_details()[0], it.get_output_details()[0]
  if inp["shape_signature"][0] == -1:
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(out["index"]).copy()
  it.allocate_tensors()
  rows = []
  for face in x:
    it.set_tensor(inp["index"], face[None])
    it.invoke()
    rows.append(it.get_tensor(out["index"])[0].copy())
  return np.stack(rows)


def run_onnx(path, x):
  import onnxruntime as ort
  s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  inp = s.get_inputs()[0]
  if isinstance(inp.shape[0], int):
    return np.concatenate([s.run(None, {inp.name: x[i:i + 1]})[0] for i in range(len(x))])
  return s.run(None, {inp.name: x})[0]


RUN = {"tflite": run_tflite, "onnx": run_onnx}


@needs_fer
@pytest.mark.parametrize("fixture", ["tflite_float", "onnx_float"])
def test_float_export_matches_jax_on_real_faces(request, predictor, fer, fixture):
  report, path = request.getfixturevalue(fixture)
  fmt = fixture.split("_")[0]
  check = fer[0]
  want = predictor.predict_proba(check, test_crops="center")
  got = RUN[fmt](path, check.astype(np.float32))  # 48x48 grey uint8 faces: model input = the pixels as float
  diff = float(np.abs(got - want).max())
  assert diff <= export.FLOAT_TOLERANCE, diff
  np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
  # The report measured the same thing.
  assert report.passed and report.written and report.n_check_faces == 1000 and report.check_source == "given"
  assert report.max_abs_diff <= export.FLOAT_TOLERANCE and abs(report.max_abs_diff - diff) < 1e-5
  assert report.size_bytes == os.path.getsize(path) and report.latency_ms_batch1 > 0
  # The contract is in the file.
  meta = export.read_metadata(str(path))
  assert meta["class_names"] == list(predictor.class_names) and meta["test_crops"] == "center"
  assert meta["input_shape"] == [1, 48, 48, 1] and "0..255" in meta["input"] and "probabilities" in meta["output"]


@needs_fer
@pytest.mark.parametrize("fixture", ["tflite_int8", "onnx_int8"])
def test_int8_export_agrees_with_jax_on_1000_publictest_faces(request, predictor, fer, fixture):
  report, path = request.getfixturevalue(fixture)
  fmt = fixture.split("_")[0]
  check = fer[0]
  want = predictor.predict_proba(check, test_crops="center")
  got = RUN[fmt](path, check.astype(np.float32))
  agreement = float(np.mean(got.argmax(1) == want.argmax(1)))
  assert agreement >= export.INT8_MIN_AGREEMENT, agreement
  assert abs(report.top1_agreement - agreement) <= 0.002 and report.passed
  # Quantized for real: a fraction of the float file's size, and int8 weights in the graph.
  assert report.size_bytes < 0.35 * os.path.getsize(pretrained.WEIGHTS_DIR + f"/{SHIPPED}.msgpack")
  assert float(np.abs(got - want).max()) > 1e-3  # not the float model under another name
  if fmt == "tflite":
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path))
    dtypes = {d["index"]: d["dtype"] for d in it.get_tensor_details()}
    convs = [op for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    weight_types = [dtypes[op["inputs"][1]] for op in convs]
    assert weight_types[0] == np.float32 and all(t == np.int8 for t in weight_types[1:]), weight_types
  else:
    import onnx
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 10
    int8_inits = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_inits) >= 10


def test_cli_flip_crops_dynamic_batch_image_folder(tmp_path, predictor, fer, capsys):
  from PIL import Image
  folder = tmp_path / "faces"
  folder.mkdir()
  x = fer[0][100:130]
  for i, face in enumerate(x):
    Image.fromarray(face[..., 0]).save(folder / f"{i:03d}.png")
  out, report = tmp_path / "flip.tflite", tmp_path / "r.json"
  rc = cli.main(["--model", SHIPPED, "--format", "tflite", "--test_crops", "flip", "--batch_size", "dynamic",
                 "--check", str(folder), "--output", str(out), "--report", str(report)])
  text = capsys.readouterr().out
  assert rc == 0, text
  assert f"check: 30 faces from {folder}" in text and "PASS" in text and "batch-1 CPU latency" in text
  r = json.loads(report.read_text())
  assert r["test_crops"] == "flip" and r["batch_size"] is None and r["n_check_faces"] == 30 and r["passed"]
  got = run_tflite(out, x.astype(np.float32))  # one dynamic batch of 30
  np.testing.assert_allclose(got, predictor.predict_proba(x, test_crops="flip"), atol=export.FLOAT_TOLERANCE)
  assert export.read_metadata(str(out))["input_shape"] == [None, 48, 48, 1]
  # An existing output stays as it is without --overwrite.
  before = out.read_bytes()
  assert cli.main(["--model", SHIPPED, "--format", "tflite", "--output", str(out)]) == 1
  assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == before


def test_cli_usage_errors(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--model", SHIPPED, "--format", "coreml", "--output", str(tmp_path / "m.coreml")])
  assert e.value.code == 2 and "invalid choice: 'coreml'" in capsys.readouterr().err
  assert cli.main(["--model", "nope", "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 1
  err = capsys.readouterr().err
  assert f"No shipped model named 'nope'; shipped: ['{SHIPPED}'" in err
  assert cli.main(["--model", SHIPPED, "--format", "onnx", "--output", str(tmp_path / "m.tflite")]) == 1
  assert "does not end in '.onnx'" in capsys.readouterr().err
  assert cli.main(["--model", SHIPPED, "--format", "onnx", "--batch_size", "0",
                   "--output", str(tmp_path / "m.onnx")]) == 1
  assert "--batch_size='0'; expected a positive integer or 'dynamic'" in capsys.readouterr().err
  assert not list(tmp_path.iterdir())
  parser = cli.build_parser()
  assert parser.prog == "fer-jax export" and "fer-jax export --model" in parser.epilog


def test_bad_arguments_are_named(tmp_path, predictor):
  out = str(tmp_path / "m.tflite")
  with pytest.raises(ValueError, match=r"format='coreml'; expected one of \['onnx', 'tflite'\]"):
    export.export(predictor, "coreml", out)
  with pytest.raises(ValueError, match=r"test_crops='five'; expected one of"):
    export.export(predictor, "tflite", out, test_crops="five")
  with pytest.raises(ValueError, match=r"batch_size=0; expected a positive int or None"):
    export.export(predictor, "tflite", out, batch_size=0)
  with pytest.raises(ValueError, match=r"int8 export needs a fixed batch_size; got batch_size=None"):
    export.export(predictor, "onnx", str(tmp_path / "m.onnx"), int8=True, batch_size=None)
  with pytest.raises(TypeError, match=r"check_faces got dtype float32 with shape \(2, 48, 48\); expected a uint8"):
    export.export(predictor, "tflite", out, check_faces=np.zeros((2, 48, 48), np.float32))
  with pytest.raises(ValueError, match=r"calibration got shape \(48, 48\) \(2-D\); expected"):
    export.export(predictor, "tflite", out, int8=True, calibration=np.zeros((48, 48), np.uint8))
  with pytest.raises(TypeError, match=r"predictor is a str without \.forward"):
    export.export("fer2013_resnet_s", "tflite", out)
  (tmp_path / "keep.onnx").write_text("keep me")
  with pytest.raises(FileExistsError, match=r"keep\.onnx' already exists; pass overwrite=True"):
    export.export(predictor, "onnx", str(tmp_path / "keep.onnx"))
  assert (tmp_path / "keep.onnx").read_text() == "keep me"
  with pytest.raises(FileNotFoundError, match=r"No FER2013 CSV file '.*nothing\.csv'"):
    faces.load_faces(str(tmp_path / "nothing.csv"), 10, "Training", 48)
  bad = tmp_path / "bad.csv"
  bad.write_text("a,b,c\n")
  with pytest.raises(ValueError, match=r"bad\.csv line 1 is \['a', 'b', 'c'\]; expected the FER2013 header"):
    faces.read_fer2013(str(bad), "Training", 5)


@pytest.mark.parametrize("fmt,module", [("tflite", "tensorflow"), ("onnx", "jax2onnx"), ("onnx", "onnxruntime")])
def test_missing_extra_is_named(tmp_path, predictor, monkeypatch, fmt, module):
  monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
  out = tmp_path / f"m.{fmt}"
  with pytest.raises(export.MissingExtraError, match=rf"{fmt} needs the Python package '{module}'.*"
                     r"pip install 'fer_jax\[export\]' and pip install --no-deps jax2onnx==0\.17\.1"):
    export.export(predictor, fmt, str(out), check_faces=np.zeros((2, 48, 48), np.uint8))
  assert not out.exists()


@needs_fer
def test_failed_check_writes_nothing(tmp_path, predictor, fer, monkeypatch):
  out = tmp_path / "m.tflite"
  out.write_bytes(b"previous export")
  monkeypatch.setattr(export, "FLOAT_TOLERANCE", 0.0)  # every real float export now "fails"
  with pytest.raises(export.ExportCheckError, match=r"fails its check against JAX, so .*m\.tflite was not written"
                     ) as e:
    export.export(predictor, "tflite", str(out), check_faces=fer[0][:20], overwrite=True, latency_runs=0,
                  verbose=False)
  assert e.value.report.max_abs_diff > 0 and not e.value.report.written
  assert out.read_bytes() == b"previous export" and os.listdir(tmp_path) == ["m.tflite"]


def test_export_package_imports_without_tensorflow():
  """With TensorFlow hidden, fer_jax.export and its CLI import (nothing heavy is imported) and a TFLite
  export fails with the missing-extra message."""
  from fer_jax.testing import HIDE_TENSORFLOW
  code = textwrap.dedent(f"""
      import sys
      import numpy as np
      from fer_jax import export, pretrained
      from fer_jax.export import cli
      cli.build_parser()
      heavy = [m for m in ("tensorflow", "jax2onnx", "onnxruntime", "ai_edge_litert") if m in sys.modules]
      try:
        export.export(pretrained.load({SHIPPED!r}), "tflite", "/nonexistent_dir/m.tflite",
                      check_faces=np.zeros((1, 48, 48), np.uint8))
      except export.MissingExtraError as e:
        print("RESULT", heavy, str(e))
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", HIDE_TENSORFLOW + code], env=env, cwd="/", capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "RESULT [] Exporting to tflite needs the Python package 'tensorflow'" in proc.stdout, proc.stdout
  assert "pip install 'fer_jax[export]'" in proc.stdout


@needs_fer
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
@pytest.mark.parametrize("crops", ["ten", "flip"])
def test_slow_other_crops_and_batches(tmp_path, predictor, fer, fmt, crops):
  """Ten-crop and flip files, fixed batch 4 (the last batch padded) and dynamic, against predict_proba."""
  check = fer[0][:50]
  want = predictor.predict_proba(check, test_crops=crops)
  for bs in (4, None):
    path = tmp_path / f"m{bs}.{fmt}"
    report = export.export(predictor, fmt, str(path), test_crops=crops, batch_size=bs, check_faces=check,
                           latency_runs=5, verbose=False)
    assert report.passed and report.max_abs_diff <= export.FLOAT_TOLERANCE
    got = export.runner(str(path))(check.astype(np.float32))
    np.testing.assert_allclose(got, want, atol=export.FLOAT_TOLERANCE)


def test_calibration_batches_fill_the_last_batch_from_the_first_faces():
  from fer_jax.export.extras import calibration_batches
  x = np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 1), np.float32)
  got = calibration_batches(x, 2)
  assert [b.shape for b in got] == [(2, 2, 2, 1)] * 3
  np.testing.assert_array_equal(np.concatenate(got)[:, 0, 0, 0], [0, 1, 2, 3, 4, 0])
  assert [b[0, 0, 0, 0] for b in calibration_batches(x, None)] == [0, 1, 2, 3, 4]


@needs_fer
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_slow_int8_flip_crops_fixed_batch(tmp_path, predictor, fer, fmt):
  """int8 with flip crops and a fixed batch of 4 (calibration fed in batches of 4) on 1,000 PublicTest faces."""
  check, calib = fer
  path = tmp_path / f"m.{fmt}"
  report = export.export(predictor, fmt, str(path), int8=True, test_crops="flip", batch_size=4,
                         calibration=calib, check_faces=check, latency_runs=0, verbose=False)
  want = predictor.predict_proba(check, test_crops="flip")
  got = export.runner(str(path))(check.astype(np.float32))
  agreement = float(np.mean(got.argmax(1) == want.argmax(1)))
  assert agreement >= export.INT8_MIN_AGREEMENT and abs(agreement - report.top1_agreement) <= 0.002


@needs_fer
@pytest.mark.slow
def test_slow_cli_int8_falls_back_to_synthetic_calibration(tmp_path, capsys):
  out, report = tmp_path / "m.tflite", tmp_path / "r.json"
  rc = cli.main(["--model", SHIPPED, "--format", "tflite", "--int8", "--calibration_size", "50",
                 "--output", str(out), "--report", str(report)])
  text = capsys.readouterr().out
  assert rc == 0, text
  assert "no --calibration: calibrating on 50 synthetic faces" in text and "no --check" in text
  r = json.loads(report.read_text())
  assert r["calibration_source"] == "synthetic" and r["n_calibration_faces"] == 50
  assert r["check_source"] == "synthetic" and r["int8"] and out.exists()


def test_tflite_export_leaves_the_absl_logger_level_alone(tmp_path):
  """TensorFlow's converter sets the 'absl' logger to WARNING; convert() puts it back (the trainer's metric
  lines are absl INFO records)."""
  import logging
  import jax.numpy as jnp
  from fer_jax.export import tflite
  absl_logger = logging.getLogger("absl")
  before = absl_logger.level
  try:
    absl_logger.setLevel(logging.DEBUG)
    model = tflite.convert(lambda x: jnp.tanh(x).sum(axis=(1, 2)), (1, 4, 4, 1))
    assert absl_logger.level == logging.DEBUG
  finally:
    absl_logger.setLevel(before)
  out = tflite.Runner(model)(np.linspace(0, 2, 16, dtype=np.float32).reshape(1, 4, 4, 1))
  np.testing.assert_allclose(out, [[np.tanh(np.linspace(0, 2, 16)).sum()]], rtol=1e-5)
