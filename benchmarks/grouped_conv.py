"""Micro-benchmark of the convolution impls of ``fer_jax.models.resnext`` at ResNeXt-50 32x4d's grouped
3x3 convolutions (32 groups of 4, 8, 16, 32 channels; the first block of stages 2-4 has stride 2).

Times forward and forward+backward (``jax.vjp`` giving the input and the kernel gradient), jitted, of every
``conv_lib.CONV_IMPLS`` entry: 'xla' (``feature_group_count``, XLA's gradients), 'dense' (one
block-diagonal convolution), 'split' (block-diagonal chunks of >= 16 channels, at most 8 per layer, and
the kernel gradient as per-tap matmuls; the CPU default) and 'split_ad' (the 'split' forward with XLA's
gradients). Contenders are timed interleaved (round-robin, ``--rounds`` rounds of ``--inner`` calls; a
contender whose first call took over a second gets one call per round); the table shows the median (and
min) in ms, then the compile time of each forward+backward. Before timing, each impl's output, input
gradient and kernel gradient are compared with 'xla''s (max abs difference / max abs value).

Run (one run, about 4 minutes on 2 cores, most of it XLA's grouped kernel gradient):

  .venv/bin/python benchmarks/grouped_conv.py --json /tmp/grouped_conv.json

Default shapes: batch 16 at 112 px input (paper 2's recipe: stages at 28, 14, 7, 4 px); ``--size 224``
gives the ImageNet shapes (56, 28, 14, 7 px), ``--batch`` another batch. ``--preset dense`` times the
network's dense convolutions instead (7x7/2 stem, the 1x1 convs of the first block of each stage), where
the impls differ only in the kernel gradient ('split': per-tap matmuls; 'xla', 'split_ad': XLA's):

  .venv/bin/python benchmarks/grouped_conv.py --preset dense --impls xla,split
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

from fer_jax.layers import conv as conv_lib  # noqa: E402

import _interleaved  # noqa: E402  (benchmarks/_interleaved.py)

def layers(batch: int, size: int, preset: str = "grouped"):
  """(B, H, W, C in, C out, kernel, stride, groups) of ResNeXt-50 32x4d's distinct grouped 3x3 convs
  ('grouped'), or of its stem and the 1x1 convs of each stage's first block ('dense')."""
  h0 = (size - 1) // 2 + 1  # stem conv /2
  h = (h0 - 1) // 2 + 1  # max-pool /2
  out, c = [], 128
  if preset == "dense":
    out.append((batch, size, size, 3, 64, 7, 2, 1))
  cin = 64
  for stage in range(4):
    if preset == "dense":
      s = 2 if stage else 1
      out += [(batch, h, h, cin, c, 1, 1, 1), (batch, (h - 1) // s + 1, (h - 1) // s + 1, c, 2 * c, 1, 1, 1),
              (batch, h, h, cin, 2 * c, 1, s, 1)]  # conv1, conv3, downsample
      h, cin = (h - 1) // s + 1, 2 * c
    else:
      if stage:
        out.append((batch, h, h, c, c, 3, 2, 32))  # first block: stride 2 on the 3x3
        h = (h - 1) // 2 + 1
      out.append((batch, h, h, c, c, 3, 1, 32))
    c *= 2
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--impls", default=",".join(conv_lib.CONV_IMPLS), help="comma-separated impl names")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--size", type=int, default=112, help="input image size of the network")
  ap.add_argument("--preset", default="grouped", choices=("grouped", "dense"))
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--inner", type=int, default=3)
  ap.add_argument("--json", default=None, help="write results here")
  args = ap.parse_args()

  impls = [conv_lib.resolve_conv_impl(name) for name in args.impls.split(",")]  # clear error on a typo
  load_start = os.getloadavg()
  print(f"ResNeXt-50 32x4d {args.preset} convs, batch {args.batch}, {args.size} px input; ms median (min) "
        f"over {args.rounds} interleaved rounds; jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} cpus")
  header = f"{'shape':>30} | " + " | ".join(f"{n + ' fwd':>16} {n + ' fwd+bwd':>18}" for n in impls)
  print(header, flush=True)
  results = []
  for b, h, w, c, co, ks, stride, groups in layers(args.batch, args.size, args.preset):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (b, h, w, c), jnp.float32)
    kernel = jax.random.normal(kk, (ks, ks, c // groups, co), jnp.float32) / (ks * (c // groups) ** 0.5)
    pad = (ks - 1) // 2
    out = (h + 2 * pad - ks) // stride + 1
    g = jax.random.normal(kg, (b, out, out, co), jnp.float32)
    fns, compile_s, outs = {}, {}, {}
    for name in impls:
      fn = conv_lib.CONV_IMPLS[name]
      fwd = jax.jit(lambda x, kern, fn=fn: fn(x, kern, stride, pad, groups))

      def fb(x, kern, g, fn=fn):
        y, vjp = jax.vjp(lambda x, kern: fn(x, kern, stride, pad, groups), x, kern)
        return (y, *vjp(g))

      fb = jax.jit(fb)
      t0 = time.perf_counter()
      outs[name] = jax.block_until_ready(fb(x, kernel, g))
      compile_s[name] = time.perf_counter() - t0  # compile + first call
      jax.block_until_ready(fwd(x, kernel))
      fns[(name, "fwd")] = lambda fwd=fwd: fwd(x, kernel)
      fns[(name, "fwd+bwd")] = lambda fb=fb: fb(x, kernel, g)
    ref = outs.get("xla", outs[impls[0]])
    errors = {n: [float(jnp.abs(a - r).max() / jnp.abs(r).max()) for a, r in zip(o, ref)]
              for n, o in outs.items()}
    # Interleaved rounds; contenders slower than a second get one call per round.
    slow = {k for k, f in fns.items() if _time_once(f) > 1.0}
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
      for k, f in fns.items():
        for _ in range(1 if k in slow else args.inner):
          times[k].append(_time_once(f))
    row = {"shape": [b, h, w, c], "out_channels": co, "kernel": ks, "stride": stride, "groups": groups,
           "cin_per_group": c // groups}
    cells = []
    for name in impls:
      for mode in ("fwd", "fwd+bwd"):
        t = np.asarray(times[(name, mode)]) * 1e3
        row[f"{name}/{mode}"] = {"median_ms": float(np.median(t)), "min_ms": float(t.min()), "n": int(t.size)}
      row[f"{name}/compile_s"] = compile_s[name]
      row[f"{name}/rel_err_y_dx_dk_vs_xla"] = errors[name]
      f, fb = row[f"{name}/fwd"], row[f"{name}/fwd+bwd"]
      cells.append(f"{f['median_ms']:8.1f} ({f['min_ms']:5.1f}) {fb['median_ms']:9.1f} ({fb['min_ms']:6.1f})")
    results.append(row)
    print(f"{_label(row):>30} | " + " | ".join(cells), flush=True)
  load_end = os.getloadavg()

  print(f"\ncompile + first call of fwd+bwd (s), and max |impl - xla| / max |xla| of (y, dx, dk); "
        f"load avg {load_start[0]:.1f} -> {load_end[0]:.1f}")
  for row in results:
    print(f"  {_label(row):>28}: " + "; ".join(
        f"{n} {row[f'{n}/compile_s']:.1f}s err "
        + "/".join(f"{e:.0e}" for e in row[f"{n}/rel_err_y_dx_dk_vs_xla"]) for n in impls))
  totals = {n: sum(r[f"{n}/fwd+bwd"]["median_ms"] for r in results) for n in impls}
  print("sum of fwd+bwd medians over the shapes (ms): "
        + ", ".join(f"{n} {t:.0f}" for n, t in totals.items()))

  if args.json:
    meta = {"batch": args.batch, "size": args.size, "preset": args.preset, "rounds": args.rounds,
            "inner": args.inner, "cpus": os.cpu_count(), "jax": jax.__version__,
            "split_min_channels": conv_lib.SPLIT_MIN_CHANNELS, "split_max_chunks": conv_lib.SPLIT_MAX_CHUNKS,
            "machine": platform.processor() or platform.machine(), "load_avg_start": load_start,
            "load_avg_end": load_end, "sum_fwd_bwd_ms": totals}
    _interleaved.write_json(args.json, meta, results)


def _label(row) -> str:
  return f"{'x'.join(map(str, row['shape']))}->{row['out_channels']} k{row['kernel']}s{row['stride']}" + (
      f" g{row['groups']}" if row["groups"] > 1 else "")


def _time_once(f) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(f())
  return time.perf_counter() - t0


if __name__ == "__main__":
  main()
