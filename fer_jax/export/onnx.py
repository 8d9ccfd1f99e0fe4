"""ONNX export: jax2onnx -> .onnx (opset 23), run with onnxruntime. jax2onnx, onnx and onnxruntime are imported
only inside these functions.

int8: ``onnxruntime.quantization.quantize_static`` after ``quant_pre_process`` (Conv + BatchNorm fusion): QDQ,
per-channel int8 weights, int8 activations with percentile (99.999%) calibration ranges. As for TFLite, the
preprocessing and the first convolution stay float32, as do the crops' mean of the logits, the softmax and the
model's input and output. int8 needs a fixed batch size."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np

from fer_jax.export.extras import calibration_batches, call_in_batches, require

_CONV_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Activation ranges: the 0.001% .. 99.999% percentiles of the calibration activations (min / max: ~97.8% top-1
# agreement on FER2013; percentiles: ~98.5%).
CALIBRATION_PERCENTILE = 99.999
# Shape arithmetic of a dynamic batch: int64, never quantized.
_SHAPE_OPS = ("Shape", "Gather", "Concat", "Unsqueeze", "Squeeze", "Expand", "ConstantOfShape", "Range", "Size",
              "Cast")


def _modules():
  require("onnx", "onnx", "onnx_ir", "onnxruntime", "jax2onnx")
  import jax2onnx  # pylint: disable=import-outside-toplevel
  import onnx  # pylint: disable=import-outside-toplevel
  return jax2onnx, onnx


def float_prefix(model) -> List[str]:
  """Names of the graph's nodes up to and including the first convolution (graph order is topological)."""
  out = []
  for node in model.graph.node:
    out.append(node.name)
    if node.op_type in _CONV_OPS:
      return out
  return out


def float_nodes(model) -> List[str]:
  """Nodes kept float32 in int8 exports: the float prefix, the crops' mean of the logits and the softmax after
  the last Gemm / MatMul (not reshapes: onnxruntime's QDQ quantizer then mistypes their zero point), and
  dynamic-batch shape arithmetic."""
  nodes = list(model.graph.node)
  last = max((i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul")), default=len(nodes))
  return (float_prefix(model) + [n.name for n in nodes[last + 1:] if n.op_type != "Reshape"]
          + [n.name for n in nodes if n.op_type in _SHAPE_OPS])


def convert(fn: Callable[[Any], Any], input_shape: Sequence[Optional[int]], *, int8: bool = False,
            calibration: Optional[np.ndarray] = None, metadata: Optional[Mapping[str, Any]] = None,
            doc: str = "") -> bytes:
  """``fn``: float32 ``input_shape`` (batch None = dynamic 'N') -> float32 (batch, classes), as .onnx bytes
  with input 'faces', output 'probs', ``doc`` as the graph's doc string and ``metadata`` as metadata_props
  (string values; others JSON-encoded)."""
  jax2onnx, onnx = _modules()
  shape = tuple("N" if d is None else int(d) for d in input_shape)
  model = jax2onnx.to_onnx(fn, [shape], model_name="fer_jax", input_names=["faces"], output_names=["probs"])
  # jax2onnx leaves value_info of its NHWC -> NCHW rewrite that contradicts the graph; onnxruntime warns
  # about each and infers them itself.
  del model.graph.value_info[:]
  if int8:
    if calibration is None or len(calibration) == 0:
      raise ValueError("int8 export needs calibration faces (a representative dataset); got none")
    model = _quantize(onnx, model, calibration_batches(np.asarray(calibration, np.float32), input_shape[0]))
  import json  # pylint: disable=import-outside-toplevel
  model.doc_string = doc
  del model.metadata_props[:]
  for k, v in (metadata or {}).items():
    model.metadata_props.add(key=str(k), value=v if isinstance(v, str) else json.dumps(v))
  onnx.checker.check_model(model)
  return model.SerializeToString()


def _quantize(onnx, model, batches: Sequence[np.ndarray]):
  import onnxruntime  # pylint: disable=import-outside-toplevel
  from onnxruntime import quantization as q  # pylint: disable=import-outside-toplevel
  onnxruntime.set_default_logger_severity(3)  # its graph optimizer warns of each initializer it folds away

  class Reader(q.CalibrationDataReader):
    def __init__(self):
      self._it = iter(batches)

    def get_next(self):
      b = next(self._it, None)
      return None if b is None else {"faces": b}

  with tempfile.TemporaryDirectory(prefix="fer_jax_export_") as d:
    raw, pre, out = (os.path.join(d, n) for n in ("raw.onnx", "pre.onnx", "int8.onnx"))
    onnx.save(model, raw)
    # Constant folding and Conv + BatchNormalization fusion (its symbolic shape inference cannot read
    # jax2onnx's reshapes; onnx's shape inference is enough here).
    q.quant_pre_process(raw, pre, skip_symbolic_shape=True)
    fused = onnx.load(pre)
    with contextlib.redirect_stdout(io.StringIO()):  # its calibrator prints progress
      q.quantize_static(pre, out, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                        activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                        calibrate_method=q.CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
                        nodes_to_exclude=float_nodes(fused))
    return onnx.load(out)


def read_metadata(path: str) -> dict:
  """metadata_props of an .onnx file, JSON values decoded."""
  import json  # pylint: disable=import-outside-toplevel
  _, onnx = _modules()
  model = onnx.load(path, load_external_data=False)
  out = {}
  for p in model.metadata_props:
    try:
      out[p.key] = json.loads(p.value)
    except ValueError:
      out[p.key] = p.value
  out["doc_string"] = model.doc_string
  return out


class Runner:
  """An .onnx model on onnxruntime's CPU provider: float32 (N, H, W, C) -> (N, classes)."""

  def __init__(self, model: bytes, num_threads: Optional[int] = None):
    require("onnx", "onnxruntime")
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if num_threads:
      so.intra_op_num_threads = num_threads
      so.inter_op_num_threads = 1
    self.session = ort.InferenceSession(bytes(model), so, providers=["CPUExecutionProvider"])
    inp = self.session.get_inputs()[0]
    self._name = inp.name
    self.batch_size: Optional[int] = inp.shape[0] if isinstance(inp.shape[0], int) else None

  def __call__(self, x: np.ndarray, max_batch: int = 256) -> np.ndarray:
    run = lambda c: self.session.run(None, {self._name: c})[0]  # noqa: E731
    return call_in_batches(run, x, self.batch_size, max_batch)
