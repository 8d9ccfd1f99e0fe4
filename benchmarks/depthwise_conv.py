"""Micro-benchmark of the depthwise-conv implementations in ``fer_jax.layers.depthwise``.

Times forward and forward+backward (``jax.vjp`` giving both the input and the kernel gradient) of
each implementation at the ConvNeXt stage shapes or at EfficientNet-B0's depthwise layers, all jitted.
The implementations are timed interleaved (round-robin, ``--rounds`` rounds of ``--inner`` calls each)
so that load from other processes hits them alike; the table shows the median (and min) over all
calls, in ms.

Run (about 2 minutes on 2 cores each):

  .venv/bin/python benchmarks/depthwise_conv.py --json /tmp/depthwise_conv.json
  .venv/bin/python benchmarks/depthwise_conv.py --preset efficientnet_b0 --impls xla,shift \
      --json /tmp/depthwise_conv_efficientnet.json

Presets: 'convnext' (default; 7x7, stride 1): ConvNeXt-T at 64 px, batch 32 (stem 4 -> 16, 8, 4, 2 px)
and ConvNeXt-atto at 48 px with stem patch 2, batch 64 (24, 12, 6, 3 px). 'efficientnet_b0': every
distinct depthwise layer of EfficientNet-B0 at 112 px, batch 32 (3x3 / 5x5, stride 1 and 2, timm's
symmetric padding k // 2). ``--shapes 8x56x56x96,32x56x56x96:k3s2,...`` overrides them (``:kKsS``: kernel
K, stride S; default ``--kernel``, stride 1); stride-1 layers use 'SAME' padding, strided ones k // 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fer_jax.layers.depthwise import IMPLEMENTATIONS, resolve_impl  # noqa: E402

import _interleaved  # noqa: E402  (benchmarks/_interleaved.py)

DEFAULT_SHAPES = (
    # ConvNeXt-T, 64 px, batch 32
    (32, 16, 16, 96), (32, 8, 8, 192), (32, 4, 4, 384), (32, 2, 2, 768),
    # ConvNeXt-atto, 48 px, stem patch 2, batch 64
    (64, 24, 24, 40), (64, 12, 12, 80), (64, 6, 6, 160), (64, 3, 3, 320),
)
# EfficientNet-B0, 112 px, batch 32: (input shape, kernel, stride) of its distinct depthwise layers
# (layers repeated in a stage have the same shape; 16 depthwise convs in all).
EFFICIENTNET_B0 = (
    ((32, 56, 56, 32), 3, 1), ((32, 56, 56, 96), 3, 2), ((32, 28, 28, 144), 3, 1),
    ((32, 28, 28, 144), 5, 2), ((32, 14, 14, 240), 5, 1), ((32, 14, 14, 240), 3, 2),
    ((32, 7, 7, 480), 3, 1), ((32, 7, 7, 480), 5, 1), ((32, 7, 7, 672), 5, 1),
    ((32, 7, 7, 672), 5, 2), ((32, 4, 4, 1152), 5, 1), ((32, 4, 4, 1152), 3, 1),
)


def _parse_shapes(text: str, kernel: int):
  """'BxHxWxC[:kKsS],...' -> [((B, H, W, C), k, s)]."""
  shapes = []
  for item in text.split(","):
    dims, _, ks = item.lower().partition(":")
    dims = tuple(int(v) for v in dims.split("x"))
    k, st = kernel, 1
    if ks:
      m = re.fullmatch(r"k(\d+)s(\d+)", ks)
      if not m:
        raise ValueError(f"shape suffix {ks!r} of {item!r} must be kKsS, e.g. k3s2")
      k, st = int(m[1]), int(m[2])
    if len(dims) != 4:
      raise ValueError(f"shape {item!r} must be BxHxWxC[:kKsS]")
    shapes.append((dims, k, st))
  return shapes


def _label(row) -> str:
  return f"{'x'.join(map(str, row['shape']))} k{row['kernel']}s{row['stride']}"


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--impls", default=",".join(IMPLEMENTATIONS), help="comma-separated impl names")
  ap.add_argument("--preset", default="convnext", choices=("convnext", "efficientnet_b0"))
  ap.add_argument("--shapes", default=None, help="comma-separated BxHxWxC[:kKsS] (default: the preset's)")
  ap.add_argument("--kernel", type=int, default=7, help="kernel of the convnext preset and plain --shapes")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--inner", type=int, default=3)
  ap.add_argument("--json", default=None, help="write results here")
  args = ap.parse_args()

  impls = [resolve_impl(name) for name in args.impls.split(",")]  # clear error on a typo
  if args.shapes:
    layers = _parse_shapes(args.shapes, args.kernel)
  elif args.preset == "efficientnet_b0":
    layers = list(EFFICIENTNET_B0)
  else:
    layers = [(shape, args.kernel, 1) for shape in DEFAULT_SHAPES]

  results = []
  header = f"{'shape':>24} | " + " | ".join(f"{n + ' fwd':>15} {n + ' fwd+bwd':>18}" for n in impls)
  print(f"depthwise convs, ms median (min) over {args.rounds}x{args.inner} interleaved calls; "
        f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cpus")
  print(header)
  for shape, k, stride in layers:
    padding = "SAME" if stride == 1 else k // 2
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape, jnp.float32)
    kern = 0.1 * jax.random.normal(kk, (k, k, 1, shape[-1]), jnp.float32)
    out = jax.eval_shape(lambda x, kern: IMPLEMENTATIONS["xla"](x, kern, stride, padding), x, kern)
    g = jax.random.normal(kg, out.shape, jnp.float32)
    fns = {}
    for name in impls:
      f = functools.partial(IMPLEMENTATIONS[name], strides=stride, padding=padding)
      fwd = jax.jit(f)
      fb = jax.jit(lambda x, kern, g, f=f: jax.vjp(f, x, kern)[1](g))
      fns[(name, "fwd")] = lambda fwd=fwd: fwd(x, kern)
      fns[(name, "fwd+bwd")] = lambda fb=fb: fb(x, kern, g)
    # One untimed call each compiles and warms up.
    times = _interleaved.time_jax_interleaved(fns, 1, args.rounds, args.inner)
    row = {"shape": list(shape), "kernel": k, "stride": stride}
    cells = []
    for name in impls:
      for mode in ("fwd", "fwd+bwd"):
        t = np.asarray(times[(name, mode)]) * 1e3
        row[f"{name}/{mode}"] = {"median_ms": float(np.median(t)), "min_ms": float(t.min()),
                                 "n": int(t.size)}
      cells.append(f"{row[f'{name}/fwd']['median_ms']:7.2f} ({row[f'{name}/fwd']['min_ms']:5.2f})"
                   f" {row[f'{name}/fwd+bwd']['median_ms']:9.2f} ({row[f'{name}/fwd+bwd']['min_ms']:6.2f})")
    if "xla" in impls:
      for name in impls:
        row[f"{name}/speedup_fwd+bwd_vs_xla"] = (row["xla/fwd+bwd"]["median_ms"]
                                                 / row[f"{name}/fwd+bwd"]["median_ms"])
    results.append(row)
    print(f"{_label(row):>24} | " + " | ".join(cells), flush=True)

  if "xla" in impls:
    print("\nfwd+bwd speed-up vs xla (median): ")
    for row in results:
      print(f"  {_label(row):>22}: " + ", ".join(
          f"{n} {row[f'{n}/speedup_fwd+bwd_vs_xla']:.1f}x" for n in impls if n != "xla"))
  if args.json:
    meta = {"jax": jax.__version__, "platform": jax.devices()[0].platform, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "preset": args.preset,
            "rounds": args.rounds, "inner": args.inner,
            "load_avg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    _interleaved.write_json(args.json, meta, results)


if __name__ == "__main__":
  main()
