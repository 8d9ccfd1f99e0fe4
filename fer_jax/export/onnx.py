"""ONNX export: jax2onnx -> .onnx (opset 23), run with onnxruntime. jax2onnx, onnx and onnxruntime are imported
only inside these functions.

int8: ``onnxruntime.quantization.quantize_static`` after ``quant_pre_process`` (Conv + BatchNorm fusion): QDQ,
per-channel int8 weights, int8 activations with percentile (99.999%) calibration ranges. As for TFLite, the
preprocessing and the first convolution stay float32, as do the crops' mean of the logits, the softmax and the
model's input and output. int8 needs a fixed batch size.

Several inputs (e.g. SeLiNet's body crop and whole image), as in ``fer_jax.export.tflite``: give ``convert`` a
mapping {name: shape} (one fixed batch) and ``fn`` takes them as keyword arguments (jax2onnx traces positional
inputs: they are passed in the mapping's order and named after it); ``fn`` may return a mapping {name: array}
of named outputs. The calibration data is then a mapping {name: (N, ...) array}; int8 keeps float32 every node
on an input's path up to and including its first convolution, and every node between the last convolution /
Gemm / MatMul and an output (not reshapes). :class:`Runner` takes and returns mappings."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

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


InputShape = Union[Sequence[Optional[int]], Mapping[str, Sequence[int]]]
Calibration = Union[np.ndarray, Mapping[str, np.ndarray]]


def named_float_nodes(model) -> List[str]:
  """:func:`float_nodes` of a model with several inputs and outputs: the nodes that read an input through no
  convolution / Gemm / MatMul (each input's path up to and including its first one), the nodes from which an
  output is reached through none (the heads' biases, softmaxes; not reshapes, as above), and dynamic-batch shape
  arithmetic."""
  nodes = list(model.graph.node)
  frontier = {i.name for i in model.graph.input}
  out = []
  for n in nodes:  # graph order is topological
    if frontier & set(n.input):
      out.append(n.name)
      if n.op_type not in _CONV_OPS:
        frontier.update(n.output)
  producer = {o: n for n in nodes for o in n.output}
  stack = [o.name for o in model.graph.output]
  seen = set()
  while stack:
    n = producer.get(stack.pop())
    if n is None or n.name in seen or n.op_type in _CONV_OPS:
      continue
    seen.add(n.name)
    if n.op_type != "Reshape":
      out.append(n.name)
    stack.extend(n.input)
  return list(dict.fromkeys(out + [n.name for n in nodes if n.op_type in _SHAPE_OPS]))


def max_pool_compatible(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with ``flax.linen.max_pool`` taking positional arguments and explicit padding while it is traced:
  jax2onnx 0.17.1 replaces it with a function of keyword arguments and 'VALID' / 'SAME' padding only (and its
  ``lax.reduce_window`` export over NHWC is a MaxPool onnxruntime refuses). Explicit padding becomes edge
  padding, then a 'VALID' max-pool: the same values when each pad is smaller than the window (every window
  that reaches into the padding holds the edge value it copies; e.g. ResNet's 3x3 / 2 stem pool with pad 1),
  and no -inf in the graph for int8 calibration to choke on (-inf padding otherwise)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import flax.linen.pooling as pooling  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def wrapped(*args, **kwargs):
    current = nn.max_pool  # jax2onnx's while it traces

    def max_pool(x, window_shape, strides=None, padding="VALID"):
      if not isinstance(padding, str):
        spatial = tuple((int(lo), int(hi)) for lo, hi in padding)
        pads = ((0, 0),) * (x.ndim - 1 - len(spatial)) + spatial + ((0, 0),)
        edge = all(max(p) < k for p, k in zip(spatial, window_shape))
        if edge:  # slices and concatenations (jax2onnx's jnp.pad(mode='edge') declares wrong shapes)
          for axis, (lo, hi) in enumerate(pads):
            if lo or hi:
              first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
              last = jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
              x = jnp.concatenate([first] * lo + [x] + [last] * hi, axis=axis)
        else:
          x = jnp.pad(x, pads, constant_values=-jnp.inf)
        padding = "VALID"
      return current(x, window_shape=tuple(window_shape), strides=None if strides is None else tuple(strides),
                     padding=padding)
    saved = nn.max_pool, pooling.max_pool
    nn.max_pool = pooling.max_pool = max_pool
    try:
      return fn(*args, **kwargs)
    finally:
      nn.max_pool, pooling.max_pool = saved
  return wrapped


def _positional(fn: Callable[..., Any], names: Sequence[str], shapes: Mapping[str, Sequence[int]]):
  """``fn`` taking keyword inputs ``names`` as a function of positional inputs returning a tuple, and the
  output names (of the mapping ``fn`` returns, in its order; else ['probs'])."""
  import jax  # pylint: disable=import-outside-toplevel
  keys: List[str] = []

  def positional(*args):
    out = fn(**dict(zip(names, args)))
    if isinstance(out, Mapping):
      keys[:] = list(out)
      return tuple(out[k] for k in keys)
    return out
  jax.eval_shape(positional, *(jax.ShapeDtypeStruct(tuple(shapes[n]), np.float32) for n in names))
  return positional, (keys or ["probs"])


def convert(fn: Callable[..., Any], input_shape: InputShape, *, int8: bool = False,
            calibration: Optional[Calibration] = None, metadata: Optional[Mapping[str, Any]] = None,
            doc: str = "") -> bytes:
  """``fn``: float32 ``input_shape`` (batch None = dynamic 'N') -> float32 (batch, classes), as .onnx bytes
  with input 'faces', output 'probs', ``doc`` as the graph's doc string and ``metadata`` as metadata_props
  (string values; others JSON-encoded). A mapping ``input_shape`` {name: shape} (one fixed batch) names the
  inputs, passed to ``fn`` as keyword arguments; a mapping returned by ``fn`` names its outputs (else 'probs');
  ``calibration`` is then a mapping {name: (N, ...) array}."""
  jax2onnx, onnx = _modules()
  names = list(input_shape) if isinstance(input_shape, Mapping) else None
  if names is not None:
    shapes = {n: tuple(input_shape[n]) for n in names}
    fixed = all(d is not None and int(d) >= 1 for s in shapes.values() for d in s)
    if not names or not fixed or len({s[0] for s in shapes.values()}) != 1:
      raise ValueError(f"named inputs need one fixed batch size and fixed shapes; got {shapes}")
    shapes = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
  batches = None
  if int8 and names is None:
    if calibration is None or len(calibration) == 0:
      raise ValueError("int8 export needs calibration faces (a representative dataset); got none")
    batches = calibration_batches(np.asarray(calibration, np.float32), input_shape[0])
  elif int8:
    batches = _named_calibration_batches(calibration, names, shapes[names[0]][0])
  fn = max_pool_compatible(fn)
  if names is None:
    shape = tuple("N" if d is None else int(d) for d in input_shape)
    model = jax2onnx.to_onnx(fn, [shape], model_name="fer_jax", input_names=["faces"], output_names=["probs"])
  else:
    positional, outputs = _positional(fn, names, shapes)
    model = jax2onnx.to_onnx(positional, [shapes[n] for n in names], model_name="fer_jax", input_names=names,
                             output_names=outputs)
  # jax2onnx leaves value_info of its NHWC -> NCHW rewrite that contradicts the graph; onnxruntime warns
  # about each and infers them itself.
  del model.graph.value_info[:]
  if int8:
    model = _quantize(onnx, model, batches)
  import json  # pylint: disable=import-outside-toplevel
  model.doc_string = doc
  del model.metadata_props[:]
  for k, v in (metadata or {}).items():
    model.metadata_props.add(key=str(k), value=v if isinstance(v, str) else json.dumps(v))
  onnx.checker.check_model(model)
  return model.SerializeToString()


def _named_calibration_batches(calibration: Any, names: Sequence[str],
                               batch: int) -> List[Dict[str, np.ndarray]]:
  if not isinstance(calibration, Mapping) or sorted(calibration) != sorted(names):
    raise ValueError(f"int8 export of named inputs {list(names)} needs calibration data as a mapping with "
                     f"those names; got {type(calibration).__name__}"
                     + (f" with {sorted(calibration)}" if isinstance(calibration, Mapping) else ""))
  lengths = {n: len(calibration[n]) for n in names}
  if len(set(lengths.values())) != 1 or not lengths[names[0]]:
    raise ValueError(f"calibration inputs differ in length or are empty: {lengths}")
  cut = {n: calibration_batches(np.asarray(calibration[n], np.float32), batch) for n in names}
  return [{n: cut[n][i] for n in names} for i in range(len(cut[names[0]]))]


def _quantize(onnx, model, batches: Sequence[np.ndarray]):
  import onnxruntime  # pylint: disable=import-outside-toplevel
  from onnxruntime import quantization as q  # pylint: disable=import-outside-toplevel
  onnxruntime.set_default_logger_severity(3)  # its graph optimizer warns of each initializer it folds away
  named = bool(batches) and isinstance(batches[0], Mapping)

  class Reader(q.CalibrationDataReader):
    def __init__(self):
      self._it = iter(batches)

    def get_next(self):
      b = next(self._it, None)
      return None if b is None else (dict(b) if isinstance(b, Mapping) else {"faces": b})

  with tempfile.TemporaryDirectory(prefix="fer_jax_export_") as d:
    raw, pre, out = (os.path.join(d, n) for n in ("raw.onnx", "pre.onnx", "int8.onnx"))
    onnx.save(model, raw)
    # Constant folding and Conv + BatchNormalization fusion (its symbolic shape inference cannot read
    # jax2onnx's reshapes; onnx's shape inference is enough here).
    q.quant_pre_process(raw, pre, skip_symbolic_shape=True)
    fused = onnx.load(pre)
    # Its calibrator prints progress; its quantizer warns (root logger) of each rank-1 weight (a BatchNorm's
    # scale) quantized per tensor instead of per channel.
    quiet = _DropRecords("is out-of-range for weight")
    logging.getLogger().addFilter(quiet)
    try:
      with contextlib.redirect_stdout(io.StringIO()):
        q.quantize_static(pre, out, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.Percentile,
                          extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
                          nodes_to_exclude=named_float_nodes(fused) if named else float_nodes(fused))
    finally:
      logging.getLogger().removeFilter(quiet)
    return onnx.load(out)


class _DropRecords(logging.Filter):
  def __init__(self, text: str):
    super().__init__()
    self.text = text

  def filter(self, record: logging.LogRecord) -> bool:
    return self.text not in record.getMessage()


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
  """An .onnx model on onnxruntime's CPU provider: float32 (N, H, W, C) -> (N, classes); for a model with
  several inputs, {name: (N, ...)} -> {output name: (N, ...)}."""

  def __init__(self, model: bytes, num_threads: Optional[int] = None):
    require("onnx", "onnxruntime")
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if num_threads:
      so.intra_op_num_threads = num_threads
      so.inter_op_num_threads = 1
    self.session = ort.InferenceSession(bytes(model), so, providers=["CPUExecutionProvider"])
    inputs = self.session.get_inputs()
    inp = inputs[0]
    self._name = inp.name
    self.batch_size: Optional[int] = inp.shape[0] if isinstance(inp.shape[0], int) else None
    self.input_names: Optional[List[str]] = sorted(i.name for i in inputs) if len(inputs) > 1 else None
    self.output_names: List[str] = [o.name for o in self.session.get_outputs()]

  def _call_named(self, x: Mapping[str, np.ndarray], max_batch: int) -> Dict[str, np.ndarray]:
    if sorted(x) != self.input_names:
      raise ValueError(f"the model's inputs are {self.input_names}; got {sorted(x)}")
    x = {k: np.ascontiguousarray(v, np.float32) for k, v in x.items()}
    lengths = {k: len(v) for k, v in x.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"inputs differ in length: {lengths}")
    n = lengths[self.input_names[0]]
    bs = self.batch_size or min(max_batch, n)
    outs: Dict[str, List[np.ndarray]] = {k: [] for k in self.output_names}
    for start in range(0, n, bs):
      chunk = {k: v[start:start + bs] for k, v in x.items()}
      m = len(chunk[self.input_names[0]])
      if self.batch_size is not None and m < bs:  # zero-pad to the file's batch, then drop the padding rows
        chunk = {k: np.concatenate([v, np.zeros((bs - m,) + v.shape[1:], np.float32)]) for k, v in chunk.items()}
      for k, v in zip(self.output_names, self.session.run(self.output_names, chunk)):
        outs[k].append(v[:m])
    return {k: np.concatenate(v) for k, v in outs.items()}

  def __call__(self, x: Any, max_batch: int = 256) -> Any:
    if self.input_names is not None or isinstance(x, Mapping):
      if self.input_names is None:
        raise ValueError("this model has one input; pass an array, not a mapping")
      return self._call_named(x, max_batch)
    run = lambda c: self.session.run(None, {self._name: c})[0]  # noqa: E731
    return call_in_batches(run, x, self.batch_size, max_batch)
