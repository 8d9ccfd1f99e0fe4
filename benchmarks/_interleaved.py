"""Shared timing for the train-step benchmarks: contenders run interleaved, medians, ratios to torch."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Sequence

import numpy as np


def time_interleaved(contenders: Dict[str, Callable[[], None]], warmup: int, rounds: int,
                     steps: int) -> Dict[str, List[float]]:
  """Warms every contender up, then runs ``rounds`` rounds of ``steps`` timed calls each, contender
  after contender, so load from other processes hits them alike. Returns seconds per call."""
  for step in contenders.values():
    for _ in range(warmup):
      step()
  times: Dict[str, List[float]] = {k: [] for k in contenders}
  for _ in range(rounds):
    for k, step in contenders.items():
      for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times[k].append(time.perf_counter() - t0)
  return times


def summarize(times: Dict[str, List[float]], info: Dict[str, dict], batch: int,
              torch_names: Sequence[str]) -> Dict[str, dict]:
  """Median / min ms, images/s, and the time ratio to the first and to the best torch contender."""
  rows = {}
  for k, ts in times.items():
    t = np.asarray(ts)
    rows[k] = {**info[k], "median_ms": float(np.median(t) * 1e3), "min_ms": float(t.min() * 1e3),
               "n_steps": int(t.size), "images_per_s": float(batch / np.median(t))}
  if torch_names:
    ref = rows[torch_names[0]]["median_ms"]
    best = min(rows[n]["median_ms"] for n in torch_names)
    for k in rows:
      rows[k]["time_vs_torch"] = rows[k]["median_ms"] / ref
      rows[k]["time_vs_best_torch"] = rows[k]["median_ms"] / best
  return rows
