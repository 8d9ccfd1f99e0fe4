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
and read float32 either way. int8 needs a fixed batch size."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from typing import Any, Callable, List, Mapping, Optional, Sequence

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
  """Output tensor names of the ops up to and including the first convolution (execution order)."""
  it = _interpreter(model)
  names = {d["index"]: d["name"] for d in it.get_tensor_details()}
  out = []
  for op in it._get_ops_details():  # pylint: disable=protected-access  (the only op-list API of litert)
    out += [names[i] for i in op["outputs"] if i >= 0]
    if op["op_name"] in _CONV_OPS:
      return out
  return out


def convert(fn: Callable[[Any], Any], input_shape: Sequence[Optional[int]], *, int8: bool = False,
            calibration: Optional[np.ndarray] = None, metadata: Optional[Mapping[str, Any]] = None) -> bytes:
  """:func:`_convert`, leaving the absl logger's level as it found it (TensorFlow's converter sets it to
  WARNING, which would silence the caller's absl INFO lines, e.g. the trainer's metrics)."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  try:
    return _convert(fn, input_shape, int8=int8, calibration=calibration, metadata=metadata)
  finally:
    absl_logger.setLevel(level)


def _convert(fn: Callable[[Any], Any], input_shape: Sequence[Optional[int]], *, int8: bool = False,
             calibration: Optional[np.ndarray] = None, metadata: Optional[Mapping[str, Any]] = None) -> bytes:
  """``fn``: float32 ``input_shape`` (batch None = dynamic) -> float32 (batch, classes), as TFLite bytes.

  The signature 'serving_default' takes 'faces' and returns 'probs'; ``metadata`` is stored as JSON in the
  model's metadata entry 'fer_jax' (read it back with :func:`read_metadata`). ``calibration``: float32 model
  inputs for the int8 representative dataset (fed one at a time).
  """
  tf, jax2tf = _tf()
  if input_shape[0] is None:
    # jnp slicing under a symbolic batch lowers to dynamic gathers, which TFLite cannot convert; vmapped over
    # single faces it stays static slices (the same arithmetic).
    import jax  # pylint: disable=import-outside-toplevel
    one = fn
    fn = jax.vmap(lambda face: one(face[None])[0])
  poly = None if input_shape[0] is not None else ["(b, " + ", ".join(str(d) for d in input_shape[1:]) + ")"]
  converted = jax2tf.convert(fn, polymorphic_shapes=poly, with_gradient=False)
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


def _convert_saved_model(tf, saved_model_dir: str, calibration: Optional[np.ndarray], batch: Optional[int] = None,
                         float_nodes: Sequence[str] = ()) -> bytes:
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  try:
    if calibration is None:
      return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
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


def percentile_ranges(calibrated: bytes, batches: Sequence[np.ndarray], percentile: float) -> bytes:
  """A calibrated model (activations with min / max) with each range narrowed to the [100 - p, p] percentiles
  of the activation's values on the calibration ``batches`` (always containing 0)."""
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
  values = {i: [] for i in ids}
  for batch in batches:
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


class Runner:
  """A .tflite model as a function: float32 (N, H, W, C) -> (N, classes), batched as the model allows."""

  def __init__(self, model: bytes, num_threads: Optional[int] = None):
    self.interpreter = _interpreter(model, num_threads)
    self._in = self.interpreter.get_input_details()[0]
    self._out = self.interpreter.get_output_details()[0]
    sig = self._in.get("shape_signature", self._in["shape"])
    self.batch_size: Optional[int] = None if int(sig[0]) < 0 else int(sig[0])
    self._allocated: Optional[int] = None

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

  def __call__(self, x: np.ndarray, max_batch: int = 256) -> np.ndarray:
    return call_in_batches(self._run, x, self.batch_size, max_batch)
