"""Packed XNOR-popcount binary dense / conv vs the float32 layers at equal shapes (XLA:CPU).

Run (about 1 minute on 2 cores; the README table used the defaults):

  .venv/bin/python benchmarks/binary_dense_conv.py --json benchmarks/results/binary_dense_conv.json

Rows, per shape (all jitted; timed interleaved round-robin, ``--rounds`` x ``--inner`` calls each,
median and min in ms):

* ``float32 product``: ``jnp.dot`` / ``lax.conv_general_dilated`` of +-1 float32 operands (the
  integer part of the float simulation; input already signed and padded with +1); for the conv
  also float im2col + ``jnp.dot`` (often faster than ``lax.conv`` on XLA:CPU).
* ``QuantDense/QuantConv``: the whole float-simulation layer (``fer_jax.layers.quant``; quantize
  input and latent kernel, matmul/conv, XNOR-Net ``mean_abs`` scale, bias) on a float input.
* ``packed <method>``: ``binary_dense`` / ``binary_conv2d`` on pre-packed uint32 operands, one row
  per formulation of ``fer_jax.layers.binary_inference.METHODS`` ('tiled' is the default).
* ``BinaryDense/ConvInference``: the frozen packed layer from ``pack_quant_dense`` / ``_conv``
  on the same float input (packs the input every call, then scale and bias).

Before timing, the packed integer products are checked equal (``np.array_equal``) to the float32
products, and the packed layers to the float-simulation layers (max |diff| printed; float rounding
only). Memory: weight bytes (float32 latent kernel vs packed words) and input-activation bytes
(float32 vs packed) per layer, with their ratios. ``--shapes`` picks a subset: 'dense', 'conv'.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from fer_jax.layers import binary_inference as bi  # noqa: E402
from fer_jax.layers.quant import QuantConv, QuantDense  # noqa: E402

import _interleaved  # noqa: E402  (benchmarks/_interleaved.py)


def _nbytes(a) -> int:
  return int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize


def _dense_case(batch, k, n, methods):
  kx, kp = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (batch, k), jnp.float32)
  layer = QuantDense(n, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                     kernel_scaling="mean_abs")
  variables = layer.init(kp, x)
  variables = jax.tree_util.tree_map(lambda a: a + 0.01, variables)  # nonzero bias
  packed_layer, packed_vars = bi.pack_quant_dense(layer, variables)
  w = variables["params"]["latent_kernel"]
  xs, ws = jnp.where(x >= 0, 1.0, -1.0), jnp.where(w >= 0, 1.0, -1.0)
  xp, wp = bi.pack_signs(x), packed_vars["params"]["kernel_packed"]

  f_prod = jax.jit(jnp.dot)
  f_layer = jax.jit(layer.apply)
  f_packed = {m: jax.jit(lambda a, b, m=m: bi.binary_dense(a, b, k, method=m)) for m in methods}
  f_player = jax.jit(packed_layer.apply)
  fns = {"float32 product (jnp.dot)": lambda: f_prod(xs, ws),
         "QuantDense (float simulation)": lambda: f_layer(variables, x)}
  fns.update({f"packed {m}": (lambda m=m: f_packed[m](xp, wp)) for m in methods})
  fns["BinaryDenseInference"] = lambda: f_player(packed_vars, x)
  memory = {"weight_bytes_float32": _nbytes(w), "weight_bytes_packed": _nbytes(wp),
            "input_bytes_float32": _nbytes(x), "input_bytes_packed": _nbytes(xp)}
  return fns, memory


def _conv_case(batch, hw, cin, cout, ksize, methods):
  kx, kp = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (batch, hw, hw, cin), jnp.float32)
  layer = QuantConv(cout, ksize, padding="SAME", pad_values=1.0, input_quantizer="ste_sign",
                    kernel_quantizer="ste_sign", kernel_scaling="mean_abs")
  variables = layer.init(kp, x)
  variables = jax.tree_util.tree_map(lambda a: a + 0.01, variables)
  packed_layer, packed_vars = bi.pack_quant_conv(layer, variables)
  w = variables["params"]["latent_kernel"]
  p = (ksize - 1) // 2, ksize // 2
  xs = jnp.pad(jnp.where(x >= 0, 1.0, -1.0), ((0, 0), p, p, (0, 0)), constant_values=1.0)
  ws = jnp.where(w >= 0, 1.0, -1.0)
  xp, wp = bi.pack_signs(x), packed_vars["params"]["kernel_packed"]

  f_prod = jax.jit(lambda a, b: lax.conv_general_dilated(
      a, b, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))

  def im2col(a, b):  # float im2col + one matmul: the other common way to run the float conv
    ho, wo = a.shape[1] - ksize + 1, a.shape[2] - ksize + 1
    cols = [a[:, i:i + ho, j:j + wo] for i in range(ksize) for j in range(ksize)]
    return jnp.dot(jnp.concatenate(cols, -1), b.reshape(-1, b.shape[-1]))

  f_im2col = jax.jit(im2col)
  f_layer = jax.jit(layer.apply)
  f_packed = {m: jax.jit(lambda a, b, m=m: bi.binary_conv2d(a, b, cin, padding="SAME",
                                                            pad_value=1, method=m))
              for m in methods}
  f_pad0 = jax.jit(lambda a, b: bi.binary_conv2d(a, b, cin, padding="SAME", pad_value=0))
  f_player = jax.jit(packed_layer.apply)
  fns = {"float32 product (lax.conv)": lambda: f_prod(xs, ws),
         "float32 product (im2col + dot)": lambda: f_im2col(xs, ws),
         "QuantConv (float simulation)": lambda: f_layer(variables, x)}
  fns.update({f"packed {m}": (lambda m=m: f_packed[m](xp, wp)) for m in methods})
  fns["packed tiled, pad_value=0"] = lambda: f_pad0(xp, wp)
  fns["BinaryConvInference"] = lambda: f_player(packed_vars, x)
  memory = {"weight_bytes_float32": _nbytes(w), "weight_bytes_packed": _nbytes(wp),
            "input_bytes_float32": _nbytes(x), "input_bytes_packed": _nbytes(xp)}
  # pad_value=0 reference: zero-padded +-1 conv.
  xs0 = jnp.pad(jnp.where(x >= 0, 1.0, -1.0), ((0, 0), p, p, (0, 0)))
  return fns, memory, lambda: f_prod(xs0, ws)


def _check_and_warm(fns, ref_prod, ref_layer, packed_layer_key, ref_pad0=None):
  """Runs every fn once; asserts exact products and near-equal layers. Returns checks dict."""
  t_first = {}
  outs = {}
  for k, f in fns.items():
    t0 = time.perf_counter()
    outs[k] = np.asarray(jax.block_until_ready(f()))
    t_first[k] = time.perf_counter() - t0
  prod = outs[ref_prod]
  for k, v in outs.items():
    if k.startswith("packed") or k.startswith("float32 product"):
      ref = prod if "pad_value=0" not in k else np.asarray(ref_pad0())
      assert (v.dtype == np.int32 or k.startswith("float")) and np.array_equal(
          v.astype(np.float32), ref), k
  lay, play = outs[ref_layer], outs[packed_layer_key]
  diff = float(np.max(np.abs(lay - play)))
  assert diff <= 1e-5 * max(1.0, float(np.max(np.abs(lay)))), diff
  return {"packed_products_equal_float": True, "layer_max_abs_diff": diff,
          "layer_bitwise_equal": bool(np.array_equal(lay, play)),
          "first_call_s": {k: round(v, 3) for k, v in t_first.items()}}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--shapes", default="dense,conv", help="comma-separated subset of dense,conv")
  ap.add_argument("--dense", default="256,4096,4096", help="batch,in,out")
  ap.add_argument("--conv", default="8,32,256,256,3", help="batch,hw,in,out,kernel")
  ap.add_argument("--methods", default=",".join(bi.METHODS))
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--inner", type=int, default=2)
  ap.add_argument("--json", default=None, help="write results here")
  args = ap.parse_args()
  methods = [m for m in args.methods.split(",") if m]
  for m in methods:
    if m not in bi.METHODS:
      raise ValueError(f"unknown method {m!r}; expected some of {bi.METHODS}")

  load_start = os.getloadavg()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cpus, "
        f"load avg {load_start[0]:.2f}; ms median (min) of {args.rounds}x{args.inner} "
        "interleaved calls")
  results = []
  for case in args.shapes.split(","):
    if case == "dense":
      b, k, n = (int(v) for v in args.dense.split(","))
      fns, memory = _dense_case(b, k, n, methods)
      checks = _check_and_warm(fns, "float32 product (jnp.dot)", "QuantDense (float simulation)",
                               "BinaryDenseInference")
      shape = {"kind": "dense", "batch": b, "in": k, "out": n}
      ref = "float32 product (jnp.dot)"
    elif case == "conv":
      b, hw, ci, co, ks = (int(v) for v in args.conv.split(","))
      fns, memory, pad0 = _conv_case(b, hw, ci, co, ks, methods)
      checks = _check_and_warm(fns, "float32 product (lax.conv)", "QuantConv (float simulation)",
                               "BinaryConvInference", pad0)
      shape = {"kind": "conv", "batch": b, "hw": hw, "in": ci, "out": co, "kernel": ks,
               "padding": "SAME", "stride": 1}
      ref = "float32 product (lax.conv)"
    else:
      raise ValueError(f"unknown shape set {case!r}; expected 'dense' or 'conv'")
    # No warm-up: every fn already ran once (compiled and checked).
    times = _interleaved.time_jax_interleaved(fns, 0, args.rounds, args.inner)
    rows = {}
    for name, t in times.items():
      t = np.asarray(t) * 1e3
      rows[name] = {"median_ms": float(np.median(t)), "min_ms": float(t.min()), "n": int(t.size)}
    for name in rows:
      rows[name]["speedup_vs_float_product"] = rows[ref]["median_ms"] / rows[name]["median_ms"]
    memory["weight_ratio"] = memory["weight_bytes_float32"] / memory["weight_bytes_packed"]
    memory["input_ratio"] = memory["input_bytes_float32"] / memory["input_bytes_packed"]
    results.append({"shape": shape, "times": rows, "memory": memory, "checks": checks})
    print(f"\n{shape}")
    print(f"  {'contender':34s} {'median ms':>10s} {'(min)':>9s} {'vs float product':>17s}")
    for name, r in rows.items():
      print(f"  {name:34s} {r['median_ms']:10.2f} ({r['min_ms']:7.2f}) "
            f"{r['speedup_vs_float_product']:16.2f}x")
    print(f"  weights: {memory['weight_bytes_float32']} B float32 -> "
          f"{memory['weight_bytes_packed']} B packed ({memory['weight_ratio']:.1f}x); inputs: "
          f"{memory['input_bytes_float32']} B -> {memory['input_bytes_packed']} B "
          f"({memory['input_ratio']:.1f}x); layer max |diff| {checks['layer_max_abs_diff']:.3g} "
          f"(bitwise equal: {checks['layer_bitwise_equal']})", flush=True)

  if args.json:
    meta = {"jax": jax.__version__, "platform": jax.devices()[0].platform,
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "rounds": args.rounds, "inner": args.inner, "load_avg_start": load_start,
            "load_avg_end": os.getloadavg(),
            "command": "python benchmarks/binary_dense_conv.py " + " ".join(sys.argv[1:])}
    _interleaved.write_json(args.json, meta, results)


if __name__ == "__main__":
  main()
