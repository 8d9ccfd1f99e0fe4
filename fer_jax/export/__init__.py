"""Export a predictor to TFLite or ONNX for mobile / edge inference, checked against JAX.

    >>> from fer_jax import export, pretrained
    >>> report = export.export(pretrained.resolve('fer2013_resnet_s'), format='tflite', output='fer.tflite')
    >>> print(report.summary())

The exported file is ``predictor.forward(variables, x, test_crops)``: it takes float32 (N, image_size,
image_size, channels) pixel values 0..255 (faces already cropped, resized and grey as the model was trained:
``predictor.to_model_input(uint8 faces)``; no scaling, the model standardises each face itself) and returns
float32 (N, classes) probabilities in ``class_names`` order. Input 'faces', output 'probs'; this contract,
the class names and the settings are stored in the file (TFLite metadata 'fer_jax', ONNX metadata_props).

Every export is checked before it is written: the exported model and JAX run on the same faces (given, or
synthetic ones from ``fer_jax.data.synthetic``): float exports must agree to ``FLOAT_TOLERANCE`` in every
probability, int8 ones in the top-1 class of ``INT8_MIN_AGREEMENT`` of the faces (the acceptance criteria,
meant for 1,000 FER2013 PublicTest faces). A failed check raises :class:`ExportCheckError` and writes nothing
(``strict=False`` writes anyway); on synthetic check faces the int8 criterion is reported, not enforced.
The file is written to a temporary name and renamed.

int8 (``fer_jax.export.tflite`` / ``.onnx``): int8 weights and activations from the second convolution on;
the preprocessing and the first convolution stay float32, and so do the file's input and output (feed the
same float32 pixels, read the same probabilities). It needs a fixed ``batch_size``.

TensorFlow, jax2tf, jax2onnx and onnxruntime are imported only when exporting; without them the error names
the extra to install (``pip install 'fer_jax[export]'`` and ``pip install --no-deps jax2onnx==0.17.1``).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any, Optional

import numpy as np

from fer_jax import pretrained
from fer_jax.export.extras import INSTALL, MissingExtraError

FORMATS = {"tflite": ".tflite", "onnx": ".onnx"}
FLOAT_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.98
DEFAULT_CALIBRATION_FACES = 200
DEFAULT_CHECK_FACES = 1000
SYNTHETIC_CHECK_FACES = 200
EXPORT_FORMAT_VERSION = 1


class ExportCheckError(RuntimeError):
  """The exported model disagrees with JAX beyond the acceptance criteria (``.report`` has the numbers)."""

  def __init__(self, message: str, report: "ExportReport"):
    super().__init__(message)
    self.report = report


@dataclasses.dataclass
class ExportReport:
  """What an export wrote and how well it matches JAX."""
  path: str
  format: str
  int8: bool
  test_crops: str
  batch_size: Optional[int]  # None: dynamic batch
  size_bytes: int
  n_check_faces: int
  check_source: str  # 'given' or 'synthetic'
  max_abs_diff: float  # of probabilities, exported vs JAX
  top1_agreement: float  # fraction of check faces with the same argmax
  criterion: str
  passed: bool
  latency_ms_batch1: Optional[float]  # median over repeated single-face calls, this CPU; None if batch > 1
  n_calibration_faces: int  # int8 only
  calibration_source: str  # 'given', 'synthetic' or '' (float)
  convert_seconds: float
  written: bool

  def summary(self) -> str:
    kind = f"{self.format} {'int8' if self.int8 else 'float32'}"
    lat = "n/a" if self.latency_ms_batch1 is None else f"{self.latency_ms_batch1:.3f} ms"
    cal = f"; calibrated on {self.n_calibration_faces} {self.calibration_source} faces" if self.int8 else ""
    return (f"{kind} ({self.test_crops} crops, batch {self.batch_size or 'dynamic'}) -> {self.path}"
            f"{'' if self.written else ' (NOT written)'}: {self.size_bytes / 2**20:.2f} MiB, "
            f"batch-1 CPU latency {lat}{cal}\n"
            f"check vs JAX on {self.n_check_faces} {self.check_source} faces: max |dp| {self.max_abs_diff:.2e}, "
            f"top-1 agreement {100 * self.top1_agreement:.2f}% -> {'PASS' if self.passed else 'FAIL'} "
            f"({self.criterion})")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _model_input(predictor, faces: np.ndarray) -> np.ndarray:
  """uint8 faces -> the exported model's float32 input (``predictor.to_model_input``; a cast when the faces
  already have the model's size and channels)."""
  if faces.shape[1:] == (predictor.image_size, predictor.image_size, predictor.channels):
    return faces.astype(np.float32)
  import jax  # pylint: disable=import-outside-toplevel
  fn = jax.jit(predictor.to_model_input)
  return np.concatenate([np.asarray(fn(faces[i:i + 1])) for i in range(len(faces))])


def median_latency_ms(fn, x: np.ndarray, runs: int = 50, warmup: int = 5) -> float:
  """Median wall time of ``fn(x)`` in milliseconds over ``runs`` calls after ``warmup`` calls."""
  for _ in range(warmup):
    fn(x)
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn(x)
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def metadata(predictor, fmt: str, int8: bool, test_crops: str, batch_size: Optional[int]) -> dict:
  """The input / output contract and settings stored in the exported file."""
  s, c = predictor.image_size, predictor.channels
  n = "N" if batch_size is None else batch_size
  quant = ("int8 weights (per channel) and activations after the first convolution; preprocessing and the "
           "first convolution float32; float32 input and output") if int8 else "none (float32)"
  return {
      "fer_jax_export": EXPORT_FORMAT_VERSION,
      "model": predictor.name,
      "class_names": list(predictor.class_names),
      "input": f"faces: float32 ({n}, {s}, {s}, {c}) pixel values 0..255 of {'grey' if c == 1 else 'RGB'} face "
               f"crops resized to {s}x{s} (uint8 values as float, not scaled: the model standardises each "
               f"face; fer_jax: predictor.to_model_input(uint8 faces))",
      "output": f"probs: float32 ({n}, {len(predictor.class_names)}) class probabilities (softmax) in "
                "class_names order",
      "input_shape": [batch_size, s, s, c],
      "test_crops": test_crops,
      "crop": predictor.crop,
      "format": fmt,
      "quantization": quant,
      "license": str(predictor.meta.get("license", "")),
  }


def export(predictor, format: str = "tflite", output: Optional[str] = None, int8: bool = False,  # noqa: A002
           test_crops: str = "center", calibration: Any = None, batch_size: Optional[int] = 1,
           check_faces: Any = None, *, overwrite: bool = False, strict: bool = True,
           n_calibration: int = DEFAULT_CALIBRATION_FACES, latency_runs: int = 50,
           num_threads: Optional[int] = None, verbose: bool = True) -> ExportReport:
  """Converts ``predictor.forward(variables, x, test_crops)`` to ``format``, checks it against JAX, writes it.

  Args:
    predictor: a ``fer_jax.pretrained.Predictor`` (``pretrained.resolve(...)``).
    format: 'tflite' or 'onnx'; ``output`` must end in '.tflite' / '.onnx'.
    int8: full-integer post-training quantization (see ``fer_jax.export.tflite``); needs calibration faces.
    test_crops: 'center' (one crop: for mobile), 'flip', 'ten' or 'none', as ``Predictor.predict_proba``.
    calibration: uint8 faces (N, H, W[, C]) for int8 calibration (the first ``n_calibration`` are used);
      None: ``n_calibration`` synthetic faces.
    batch_size: the file's fixed batch, or None for a dynamic batch.
    check_faces: uint8 faces to compare with JAX (e.g. 1,000 FER2013 PublicTest faces); None:
      ``SYNTHETIC_CHECK_FACES`` synthetic faces.
    overwrite: replace an existing ``output`` (else FileExistsError).
    strict: a failed check raises :class:`ExportCheckError` and writes nothing; False writes anyway.
    latency_runs: single-face calls timed for the median latency (0: not measured).
    num_threads: threads of the exported model's runtime (None: its default).
    verbose: print the summary (file size, latency, check).
  """
  from fer_jax.export import faces as faces_lib  # pylint: disable=import-outside-toplevel
  from fer_jax.pretrained import TEST_CROPS  # pylint: disable=import-outside-toplevel
  if format not in FORMATS:
    raise ValueError(f"format={format!r}; expected one of {sorted(FORMATS)}")
  if not isinstance(output, (str, os.PathLike)) or not str(output):
    raise ValueError(f"output={output!r}; expected the path of the {FORMATS[format]} file to write")
  output = os.fspath(output)
  if not output.endswith(FORMATS[format]):
    raise ValueError(f"output={output!r} does not end in {FORMATS[format]!r}, as format={format!r} files do")
  if os.path.isdir(output):
    raise IsADirectoryError(f"output={output!r} is a directory; expected a {FORMATS[format]} file path")
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"output={output!r} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
  if test_crops not in TEST_CROPS:
    raise ValueError(f"test_crops={test_crops!r}; expected one of {TEST_CROPS}")
  if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                 or batch_size < 1):
    raise ValueError(f"batch_size={batch_size!r}; expected a positive int or None (dynamic batch)")
  if int8 and batch_size is None:
    # ONNX: onnxruntime's calibrator fails on jax2onnx's dynamic-batch graph; TFLite: the vmapped graph of a
    # dynamic batch quantizes badly (~94% top-1 agreement) and runs slowly.
    raise ValueError("int8 export needs a fixed batch_size; got batch_size=None (dynamic): pass batch_size=1 "
                     "(or another int)")
  if not isinstance(n_calibration, int) or n_calibration < 1:
    raise ValueError(f"n_calibration={n_calibration!r}; expected a positive int")
  for attr in ("forward", "to_model_input", "variables", "image_size", "channels", "class_names"):
    if not hasattr(predictor, attr):
      raise TypeError(f"predictor is a {type(predictor).__name__} without .{attr}; expected a "
                      "fer_jax.pretrained.Predictor (pretrained.resolve(...))")
  size, ch = predictor.image_size, predictor.channels
  if check_faces is None:
    check, check_source = faces_lib.synthetic_faces(SYNTHETIC_CHECK_FACES, size, ch), "synthetic"
  else:
    check, check_source = pretrained.check_faces(check_faces, "check_faces"), "given"
  cal, cal_source = None, ""
  if int8:
    if calibration is None:
      cal, cal_source = faces_lib.synthetic_faces(n_calibration, size, ch, seed=1), "synthetic"
    else:
      cal, cal_source = pretrained.check_faces(calibration, "calibration")[:n_calibration], "given"
  elif calibration is not None:
    pretrained.check_faces(calibration, "calibration")
  if format == "tflite":
    from fer_jax.export import tflite as backend  # pylint: disable=import-outside-toplevel
    backend._tf()  # pylint: disable=protected-access  (fail on a missing extra before any work)
  else:
    from fer_jax.export import onnx as backend  # pylint: disable=import-outside-toplevel
    backend._modules()  # pylint: disable=protected-access

  variables = predictor.variables
  fn = lambda x: predictor.forward(variables, x, test_crops)  # noqa: E731
  x_check = _model_input(predictor, check)
  ref = predictor.predict_proba(check, test_crops=test_crops).astype(np.float64)  # JAX, jit-cached
  x_cal = None if cal is None else _model_input(predictor, cal)
  meta = metadata(predictor, format, int8, test_crops, batch_size)
  t0 = time.perf_counter()
  kwargs = dict(doc=meta["input"] + " -> " + meta["output"]) if format == "onnx" else {}
  model = backend.convert(fn, (batch_size, size, size, ch), int8=int8, calibration=x_cal, metadata=meta, **kwargs)
  seconds = time.perf_counter() - t0
  runner = backend.Runner(model, num_threads)
  got = runner(x_check)
  if got.shape != ref.shape:
    raise RuntimeError(f"The exported model returned shape {got.shape} for {x_check.shape}; JAX {ref.shape}")
  max_diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
  agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
  if int8:
    criterion, passed = f"int8: top-1 agreement >= {100 * INT8_MIN_AGREEMENT:g}%", agreement >= INT8_MIN_AGREEMENT
  else:
    criterion, passed = f"float: max |dp| <= {FLOAT_TOLERANCE:g}", max_diff <= FLOAT_TOLERANCE
  # The int8 criterion is defined on real faces: on synthetic check faces it is reported, not enforced.
  enforced = not int8 or check_source == "given"
  if not passed and not enforced:
    criterion += " (not enforced on synthetic check faces)"
  latency = None
  if latency_runs and runner.batch_size in (None, 1):
    latency = median_latency_ms(runner, x_check[:1], latency_runs)
  report = ExportReport(
      path=output, format=format, int8=bool(int8), test_crops=test_crops, batch_size=batch_size,
      size_bytes=len(model), n_check_faces=len(check), check_source=check_source, max_abs_diff=max_diff,
      top1_agreement=agreement, criterion=criterion, passed=bool(passed), latency_ms_batch1=latency,
      n_calibration_faces=0 if cal is None else len(cal), calibration_source=cal_source,
      convert_seconds=seconds, written=False)
  if not passed and strict and enforced:
    raise ExportCheckError(f"The exported model fails its check against JAX, so {output} was not written "
                           f"(pass strict=False / --no_strict to write it anyway):\n{report.summary()}", report)
  return write_checked(model, output, report, overwrite=overwrite, verbose=verbose)


def write_checked(model: bytes, output: str, report, *, overwrite: bool, verbose: bool):
  """Writes a checked export atomically (a temporary file renamed into place: an interrupted write leaves
  any old ``output`` whole); marks ``report.written`` and prints its summary when ``verbose``."""
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  tmp = f"{output}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(model)
    if os.path.exists(output) and not overwrite:  # appeared while converting
      raise FileExistsError(f"output={output!r} appeared while exporting; pass overwrite=True to replace it")
    os.replace(tmp, output)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  report.written = True
  if verbose:
    print(report.summary(), flush=True)
  return report


def read_metadata(path: str) -> dict:
  """The metadata an export stored in a .tflite / .onnx file."""
  if path.endswith(".tflite"):
    from fer_jax.export import tflite  # pylint: disable=import-outside-toplevel
    return tflite.read_metadata(path)
  if path.endswith(".onnx"):
    from fer_jax.export import onnx  # pylint: disable=import-outside-toplevel
    return onnx.read_metadata(path)
  raise ValueError(f"{path!r} is neither a .tflite nor an .onnx file")


def runner(path: str, num_threads: Optional[int] = None):
  """An exported file as a function: float32 (N, H, W, C) pixels 0..255 -> (N, classes) probabilities."""
  with open(path, "rb") as f:
    data = f.read()
  if path.endswith(".tflite"):
    from fer_jax.export import tflite  # pylint: disable=import-outside-toplevel
    return tflite.Runner(data, num_threads)
  if path.endswith(".onnx"):
    from fer_jax.export import onnx  # pylint: disable=import-outside-toplevel
    return onnx.Runner(data, num_threads)
  raise ValueError(f"{path!r} is neither a .tflite nor an .onnx file")


__all__ = ("export", "ExportReport", "ExportCheckError", "MissingExtraError", "read_metadata", "runner",
           "median_latency_ms", "FORMATS", "FLOAT_TOLERANCE", "INT8_MIN_AGREEMENT", "INSTALL")
