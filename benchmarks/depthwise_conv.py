"""Micro-benchmark of the depthwise-conv implementations in ``fer_jax.layers.depthwise``.

Times forward and forward+backward (``jax.vjp`` giving both the input and the kernel gradient) of
each implementation at the ConvNeXt stage shapes, all jitted. The implementations are timed
interleaved (round-robin, ``--rounds`` rounds of ``--inner`` calls each) so that load from other
processes hits them alike; the table shows the median (and min) over all calls, in ms.

Run (about 2 minutes on 2 cores):

  .venv/bin/python benchmarks/depthwise_conv.py --json /tmp/depthwise_conv.json

Default shapes: ConvNeXt-T at 64 px, batch 32 (stem 4 -> 16, 8, 4, 2 px) and ConvNeXt-atto at
48 px with stem patch 2, batch 64 (24, 12, 6, 3 px). ``--shapes 8x56x56x96,...`` overrides them.
"""

from __future__ import annotations

import argparse
import os
import platform
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


def _parse_shapes(text: str):
  shapes = []
  for item in text.split(","):
    dims = tuple(int(v) for v in item.lower().split("x"))
    if len(dims) != 4:
      raise ValueError(f"shape {item!r} must be BxHxWxC")
    shapes.append(dims)
  return shapes


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--impls", default=",".join(IMPLEMENTATIONS), help="comma-separated impl names")
  ap.add_argument("--shapes", default=None, help="comma-separated BxHxWxC (default: ConvNeXt stages)")
  ap.add_argument("--kernel", type=int, default=7)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--inner", type=int, default=3)
  ap.add_argument("--json", default=None, help="write results here")
  args = ap.parse_args()

  impls = [resolve_impl(name) for name in args.impls.split(",")]  # clear error on a typo
  shapes = _parse_shapes(args.shapes) if args.shapes else list(DEFAULT_SHAPES)
  k = args.kernel

  results = []
  header = f"{'shape':>18} | " + " | ".join(f"{n + ' fwd':>15} {n + ' fwd+bwd':>18}" for n in impls)
  print(f"depthwise {k}x{k}, ms median (min) over {args.rounds}x{args.inner} interleaved calls; "
        f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cpus")
  print(header)
  for shape in shapes:
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape, jnp.float32)
    kern = 0.1 * jax.random.normal(kk, (k, k, 1, shape[-1]), jnp.float32)
    g = jax.random.normal(kg, shape, jnp.float32)
    fns = {}
    for name in impls:
      f = IMPLEMENTATIONS[name]
      fwd = jax.jit(f)
      fb = jax.jit(lambda x, kern, g, f=f: jax.vjp(f, x, kern)[1](g))
      fns[(name, "fwd")] = lambda fwd=fwd: fwd(x, kern)
      fns[(name, "fwd+bwd")] = lambda fb=fb: fb(x, kern, g)
    # One untimed call each compiles and warms up.
    times = _interleaved.time_jax_interleaved(fns, 1, args.rounds, args.inner)
    row = {"shape": list(shape)}
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
    print(f"{'x'.join(map(str, shape)):>18} | " + " | ".join(cells), flush=True)

  if "xla" in impls:
    print("\nfwd+bwd speed-up vs xla (median): ")
    for row in results:
      print(f"  {'x'.join(map(str, row['shape'])):>14}: " + ", ".join(
          f"{n} {row[f'{n}/speedup_fwd+bwd_vs_xla']:.1f}x" for n in impls if n != "xla"))
  if args.json:
    meta = {"jax": jax.__version__, "platform": jax.devices()[0].platform, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "kernel": k,
            "rounds": args.rounds, "inner": args.inner,
            "load_avg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    _interleaved.write_json(args.json, meta, results)


if __name__ == "__main__":
  main()
