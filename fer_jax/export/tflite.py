"""TFLite export: jax2tf (StableHLO) -> tf.Module SavedModel -> TFLiteConverter, builtin ops only (a graph that
would need select TF ops fails with a clear error); run with ``ai_edge_litert``. TensorFlow is imported only
inside these functions. A dynamic batch is exported as the model vmapped over single faces (jnp slicing
under a symbolic batch lowers to dynamic gathers, which TFLite cannot convert).

int8: post-training full-integer quantization with a representative dataset: every layer after the first
convolution has int8 weights (per output channel) and int8 activations, with activation ranges at the
0.001% / 99.999% percentiles of the calibration activations (min / max ranges lose ~1 point of top-1
agreement). The preprocessing (test crops, per-image standardisation) and the first convolution, which sees
the standardised pixels, stay float32 (quantizing the standardised image to 256 levels alone flips ~2% of
FER2013 predictions), and so do the model's input (pixels 0..255) and output (probabilities): callers feed
and read float32 either way. int8 needs a fixed batch size.

Several inputs (e.g. SeLiNet's body crop and whole image): give ``convert`` a mapping {name: shape} (a fixed
batch) and ``fn`` takes them as keyword arguments; ``fn`` may return a mapping {name: array} of named outputs.
The calibration data is then a mapping {name: (N, ...) array}, int8 keeps every op up to and including the
first convolution on each input's path in float32, and :class:`Runner` takes and returns mappings."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from fer_jax.export.extras import calibration_batches, call_in_batches, require

METADATA_NAME = "fer_jax"
# Activation ranges: the 0.001% .. 99.999% percentiles of each activation on the calibration faces (min / max
# ranges: ~98% top-1 agreement on FER2013 PublicTest; percentiles: see benchmarks/results/export_latency.json).
CALIBRATION_PERCENTILE = 99.999
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def _tf():
  require("tflite", "tensorflow", "ai_edge_litert")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  return tf, jax2tf


def _interpreter(model: bytes, num_threads: Optional[int] = None):
  require("tflite", "ai_edge_litert")
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  return Interpreter(model_content=bytes(model), num_threads=num_threads)


def float_prefix(model: bytes) -> List[str]:
  """Output tensor names of the ops up to and including the first convolution (execution order); with several
  inputs, of the ops that read an input through no convolution (each input's path up to its first one)."""
  it = _interpreter(model)
  names = {d["index"]: d["name"] for d in it.get_tensor_details()}
  inputs = [d["index"] for d in it.get_input_details()]
  ops = it._get_ops_details()  # pylint: disable=protected-access  (the only op-list API of litert)
  out = []
  if len(inputs) == 1:
    for op in ops:
      out += [names[i] for i in op["outputs"] if i >= 0]
      if op["op_name"] in _CONV_OPS:
        return out
    return out
  frontier = set(inputs)  # tensors computed from an input through no convolution
  for op in ops:
    if frontier & set(op["inputs"]):
      outs = [i for i in op["outputs"] if i >= 0]
      out += [names[i] for i in outs]
      if op["op_name"] not in _CONV_OPS:
        frontier.update(outs)
  return out


def _dense_as_conv(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn`` with every Flax ``nn.Dense`` over an NHWC input (1x1 convolutions and squeeze-excite layers
  written as Dense over the channels, as in EfficientNet / MobileNetV3) computed as the 1x1 convolution it
  is: the same arithmetic, exported as CONV_2D, where TFLite's converter fails on the rank-4 batch_matmul a
  Dense over (B, 1, 1, C) becomes."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  def interceptor(next_fun, args, kwargs, context):
    x, module = (args[0] if args else None), context.module
    if (isinstance(module, nn.Dense) and context.method_name == "__call__" and getattr(x, "ndim", 0) == 4
        and module.has_variable("params", "kernel")):
      kernel = module.get_variable("params", "kernel")
      y = jax.lax.conv_general_dilated(x, kernel[None, None].astype(x.dtype), (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      if module.use_bias:
        y = y + module.get_variable("params", "bias").astype(y.dtype)
      return y
    return next_fun(*args, **kwargs)

  def wrapped(*args, **kwargs):
    with nn.intercept_methods(interceptor):
      return fn(*args, **kwargs)
  return wrapped


InputShape = Union[Sequence[Optional[int]], Mapping[str, Sequence[int]]]
Calibration = Union[np.ndarray, Mapping[str, np.ndarray]]


def convert(fn: Callable[..., Any], input_shape: InputShape, *, int8: bool = False,
            calibration: Optional[Calibration] = None, metadata: Optional[Mapping[str, Any]] = None) -> bytes:
  """:func:`_convert`, leaving the absl logger's level as it found it (TensorFlow's converter sets it to
  WARNING, which would silence the caller's absl INFO lines, e.g. the trainer's metrics)."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  try:
    return _convert(fn, input_shape, int8=int8, calibration=calibration, metadata=metadata)
  finally:
    absl_logger.setLevel(level)


def _convert(fn: Callable[..., Any], input_shape: InputShape, *, int8: bool = False,
             calibration: Optional[Calibration] = None,
             metadata: Optional[Mapping[str, Any]] = None) -> bytes:
  """``fn``: float32 ``input_shape`` (batch None = dynamic) -> float32 (batch, classes), as TFLite bytes.

  The signature 'serving_default' takes 'faces' and returns 'probs'; ``metadata`` is stored as JSON in the
  model's metadata entry 'fer_jax' (read it back with :func:`read_metadata`). ``calibration``: float32 model
  inputs for the int8 representative dataset (fed one at a time). A mapping ``input_shape`` {name: shape}
  (one fixed batch) names the signature's inputs, passed to ``fn`` as keyword arguments; a mapping returned by
  ``fn`` names its outputs (else 'probs').
  """
  tf, jax2tf = _tf()
  if isinstance(input_shape, Mapping):
    return _convert_named(tf, jax2tf, fn, input_shape, int8, calibration, metadata)
  if input_shape[0] is None:
    # jnp slicing under a symbolic batch lowers to dynamic gathers, which TFLite cannot convert; vmapped over
    # single faces it stays static slices (the same arithmetic).
    import jax  # pylint: disable=import-outside-toplevel
    one = fn
    fn = jax.vmap(lambda face: one(face[None])[0])
  poly = None if input_shape[0] is not None else ["(b, " + ", ".join(str(d) for d in input_shape[1:]) + ")"]
  converted = jax2tf.convert(_dense_as_conv(fn), polymorphic_shapes=poly, with_gradient=False)
  module = tf.Module()
  module.serve = tf.function(lambda faces: {"probs": converted(faces)}, autograph=False,
                             input_signature=[tf.TensorSpec(tuple(input_shape), tf.float32, name="faces")])
  with tempfile.TemporaryDirectory(prefix="fer_jax_export_") as d:
    tf.saved_model.save(module, d, signatures={"serving_default": module.serve.get_concrete_function()})
    model = _convert_saved_model(tf, d, None)
    if int8:
      if calibration is None or len(calibration) == 0:
        raise ValueError("int8 export needs calibration faces (a representative dataset); got none")
      model = _convert_saved_model(tf, d, np.asarray(calibration, np.float32), input_shape[0], float_prefix(model))
  return add_metadata(model, metadata) if metadata else model


def _convert_named(tf, jax2tf, fn, input_shape: Mapping[str, Sequence[int]], int8: bool,
                   calibration: Optional[Mapping[str, np.ndarray]],
                   metadata: Optional[Mapping[str, Any]]) -> bytes:
  """:func:`_convert` for named inputs (a fixed batch) and named outputs."""
  names = list(input_shape)
  shapes = {n: tuple(input_shape[n]) for n in names}
  fixed = all(d is not None and int(d) >= 1 for s in shapes.values() for d in s)
  if not fixed or len({s[0] for s in shapes.values()}) != 1:
    raise ValueError(f"named inputs need one fixed batch size and fixed shapes; got {shapes}")
  shapes = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
  batches = {s[0] for s in shapes.values()}
  converted = jax2tf.convert(_dense_as_conv(lambda inputs: fn(**inputs)), with_gradient=False)

  def serve(*args):
    out = converted(dict(zip(names, args)))
    return dict(out) if isinstance(out, Mapping) else {"probs": out}

  module = tf.Module()
  module.serve = tf.function(serve, autograph=False,
                             input_signature=[tf.TensorSpec(shapes[n], tf.float32, name=n) for n in names])
  with tempfile.TemporaryDirectory(prefix="fer_jax_export_") as d:
    tf.saved_model.save(module, d, signatures={"serving_default": module.serve.get_concrete_function()})
    model = _convert_saved_model(tf, d, None)
    if int8:
      if not isinstance(calibration, Mapping) or sorted(calibration) != sorted(names):
        raise ValueError(f"int8 export of named inputs {names} needs calibration data as a mapping with "
                         f"those names; got {type(calibration).__name__}"
                         + (f" with {sorted(calibration)}" if isinstance(calibration, Mapping) else ""))
      cal = {n: np.asarray(calibration[n], np.float32) for n in names}
      model = _convert_saved_model(tf, d, cal, batches.pop(), float_prefix(model))
  return add_metadata(model, metadata) if metadata else model


def _named_calibration_batches(calibration: Mapping[str, np.ndarray],
                               batch: Optional[int]) -> List[Dict[str, np.ndarray]]:
  lengths = {len(v) for v in calibration.values()}
  if len(lengths) != 1 or not lengths.pop():
    raise ValueError(f"calibration inputs differ in length or are empty: "
                     f"{ {k: len(v) for k, v in calibration.items()} }")
  cut = {k: calibration_batches(v, batch) for k, v in calibration.items()}
  return [{k: cut[k][i] for k in cut} for i in range(len(next(iter(cut.values()))))]


def _convert_saved_model(tf, saved_model_dir: str, calibration: Optional[Calibration],
                         batch: Optional[int] = None, float_nodes: Sequence[str] = ()) -> bytes:
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  try:
    if calibration is None:
      return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if isinstance(calibration, Mapping):  # named inputs: the representative dataset yields {name: batch}
      batches = _named_calibration_batches(calibration, batch)
      converter.representative_dataset = lambda: iter(batches)
    else:
      batches = calibration_batches(calibration, batch)
      converter.representative_dataset = lambda: ([b] for b in batches)
    # Int8 kernels for every quantized op; float builtins only for the denylisted float prefix.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    # Calibrate (a float model with each activation's min / max), narrow the ranges to percentiles, then
    # quantize with the float prefix denylisted: what tf.lite.experimental.QuantizationDebugger does, plus
    # the percentiles.
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    calibrated = percentile_ranges(converter.convert(), batches, CALIBRATION_PERCENTILE)
    from tensorflow.lite.python import convert as lite_convert  # pylint: disable=import-outside-toplevel
    return lite_convert.mlir_quantize(calibrated, denylisted_nodes=list(float_nodes))
  except Exception as e:  # noqa: BLE001 -- the converter raises ConverterError and others
    text = str(e)
    if "select" in text.lower() or "flex" in text.lower() or "not supported" in text.lower():
      raise RuntimeError("TFLite conversion needs TensorFlow ops outside TFLite's builtin op set (select TF ops "
                         f"/ Flex), which fer_jax does not export:\n{text[-3000:]}") from e
    raise RuntimeError(f"TFLite conversion failed: {type(e).__name__}: {text[-3000:]}") from e


def percentile_ranges(calibrated: bytes, batches: Sequence[Any], percentile: float) -> bytes:
  """A calibrated model (activations with min / max) with each range narrowed to the [100 - p, p] percentiles
  of the activation's values on the calibration ``batches`` (always containing 0); a batch is an array, or a
  mapping {input name: array} for a model with named inputs."""
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=import-outside-toplevel
  obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
  tensors = obj.subgraphs[0].tensors
  ids = [i for i, t in enumerate(tensors) if t.quantization is not None and t.quantization.min is not None
         and len(t.quantization.min) == 1]
  require("tflite", "ai_edge_litert")
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  with warnings.catch_warnings():  # "for debugging purposes only": reading activations is the point here
    warnings.simplefilter("ignore")
    it = Interpreter(model_content=bytes(calibrated), experimental_preserve_all_tensors=True)
  it.allocate_tensors()
  inp = it.get_input_details()[0]["index"]
  named = _signature_indices(it)[0] if batches and isinstance(batches[0], Mapping) else {}
  values = {i: [] for i in ids}
  for batch in batches:
    if isinstance(batch, Mapping):
      for name, value in batch.items():
        it.set_tensor(named[name], value)
    else:
      it.set_tensor(inp, batch)
    it.invoke()
    for i in ids:
      values[i].append(np.array(it.get_tensor(i), np.float32).ravel())
  for i in ids:
    v = np.concatenate(values[i])
    lo, hi = np.percentile(v, [100 - percentile, percentile])
    tensors[i].quantization.min = np.array([min(lo, 0.0)], np.float32)
    tensors[i].quantization.max = np.array([max(hi, 0.0)], np.float32)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def add_metadata(model: bytes, metadata: Mapping[str, Any]) -> bytes:
  """``model`` with ``metadata`` (JSON) as the flatbuffer metadata entry 'fer_jax'."""
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=import-outside-toplevel
  obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
  buf = schema.BufferT()
  buf.data = np.frombuffer(json.dumps(dict(metadata), sort_keys=True).encode(), np.uint8)
  obj.buffers.append(buf)
  entry = schema.MetadataT()
  entry.name = METADATA_NAME
  entry.buffer = len(obj.buffers) - 1
  obj.metadata = [m for m in (obj.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
  obj.metadata.append(entry)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def read_metadata(path: str) -> dict:
  """The 'fer_jax' metadata JSON of a .tflite file written by :func:`convert` ({} when absent)."""
  _tf()
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=import-outside-toplevel
  obj = flatbuffer_utils.read_model(path)
  for m in obj.metadata or []:
    if m.name in (METADATA_NAME, METADATA_NAME.encode()):
      return json.loads(bytes(np.asarray(obj.buffers[m.buffer].data, np.uint8)).decode())
  return {}


def op_names(model: bytes) -> List[str]:
  """The builtin op of each node, in execution order (e.g. 'CONV_2D')."""
  return [op["op_name"] for op in _interpreter(model)._get_ops_details()]  # pylint: disable=protected-access


def _signature_indices(interpreter) -> tuple:
  """({input name: tensor index}, {output name: tensor index}) of the 'serving_default' signature."""
  runner = interpreter.get_signature_runner()
  return ({n: d["index"] for n, d in runner.get_input_details().items()},
          {n: d["index"] for n, d in runner.get_output_details().items()})


class Runner:
  """A .tflite model as a function: float32 (N, H, W, C) -> (N, classes), batched as the model allows; for a
  model with named inputs, {name: (N, ...)} -> {output name: (N, ...)}."""

  def __init__(self, model: bytes, num_threads: Optional[int] = None):
    self.interpreter = _interpreter(model, num_threads)
    self._in = self.interpreter.get_input_details()[0]
    self._out = self.interpreter.get_output_details()[0]
    sig = self._in.get("shape_signature", self._in["shape"])
    self.batch_size: Optional[int] = None if int(sig[0]) < 0 else int(sig[0])
    self._allocated: Optional[int] = None
    self.input_names: Optional[List[str]] = None
    if len(self.interpreter.get_input_details()) > 1:
      self._named_in, self._named_out = _signature_indices(self.interpreter)
      self.input_names = sorted(self._named_in)

  def _run(self, x: np.ndarray) -> np.ndarray:
    it = self.interpreter
    if self._allocated != x.shape[0]:
      if self.batch_size is None:
        it.resize_tensor_input(self._in["index"], list(x.shape))
      it.allocate_tensors()
      self._allocated = x.shape[0]
    it.set_tensor(self._in["index"], x)
    it.invoke()
    return np.array(it.get_tensor(self._out["index"]))

  def _run_named(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    it = self.interpreter
    if self._allocated is None:
      it.allocate_tensors()
      self._allocated = self.batch_size
    for name, value in inputs.items():
      it.set_tensor(self._named_in[name], value)
    it.invoke()
    return {name: np.array(it.get_tensor(i)) for name, i in self._named_out.items()}

  def _call_named(self, x: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    if sorted(x) != self.input_names:
      raise ValueError(f"the model's inputs are {self.input_names}; got {sorted(x)}")
    x = {k: np.ascontiguousarray(v, np.float32) for k, v in x.items()}
    n = {len(v) for v in x.values()}
    if len(n) != 1:
      raise ValueError(f"inputs differ in length: { {k: len(v) for k, v in x.items()} }")
    n, bs = n.pop(), self.batch_size
    outs: Dict[str, List[np.ndarray]] = {}
    for start in range(0, n, bs):
      chunk = {k: v[start:start + bs] for k, v in x.items()}
      m = len(next(iter(chunk.values())))
      if m < bs:  # zero-pad the last chunk to the file's batch, then drop the padding rows
        chunk = {k: np.concatenate([v, np.zeros((bs - m,) + v.shape[1:], np.float32)])
                 for k, v in chunk.items()}
      for k, v in self._run_named(chunk).items():
        outs.setdefault(k, []).append(v[:m])
    return {k: np.concatenate(v) for k, v in outs.items()}

  def __call__(self, x: Any, max_batch: int = 256) -> Any:
    if self.input_names is not None or isinstance(x, Mapping):
      if self.input_names is None:
        raise ValueError("this model has one input; pass an array, not a mapping")
      return self._call_named(x)
    return call_in_batches(self._run, x, self.batch_size, max_batch)
