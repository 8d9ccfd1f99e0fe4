"""Shared pieces of the benchmarks: interleaved timing, medians and ratios to torch, the train-step
contenders (a compiled, donated JAX step; a channels_last PyTorch AdamW setup), the results table
and the JSON file."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

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


def time_jax_interleaved(fns: Dict[Any, Callable[[], Any]], warmup: int, rounds: int,
                         steps: int) -> Dict[Any, List[float]]:
  """``time_interleaved`` of JAX calls, each timed until its result is ready."""
  import jax  # pylint: disable=import-outside-toplevel
  blocking = {k: (lambda f=f: jax.block_until_ready(f())) for k, f in fns.items()}
  return time_interleaved(blocking, warmup, rounds, steps)


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


# ----------------------------------------------------------------------------------------------
# Train-step benchmarks (convnext_train_step.py, emonext_train_step.py).


def random_batch(batch: int, size: int, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
  """The fixed batch: images uniform in [0, 1) (batch, size, size, 3) float32, int32 labels."""
  rng = np.random.default_rng(0)
  images = rng.uniform(0.0, 1.0, (batch, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, num_classes, (batch,)).astype(np.int32)
  return images, labels


def compile_jax_step(train_step, state, images, labels):
  """Compiles ``train_step(state, x, y, rng) -> (state, loss)`` (jitted, state donated).

  Returns (step_fn, first loss, compile s, #params of ``state['params']``); step_fn() runs one
  step on the fixed batch, carrying the state, and returns its loss.
  """
  import jax  # pylint: disable=import-outside-toplevel
  rng = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = train_step.lower(state, images, labels, rng).compile()
  compile_s = time.perf_counter() - t0
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state["params"]))
  box = {"state": state}

  def step():
    box["state"], loss = compiled(box["state"], images, labels, rng)
    return float(jax.block_until_ready(loss))

  return step, step(), compile_s, n_params


def batchnorm_ce_step(model, tx, images, labels):
  """A donated train step of a BatchNorm classifier ``model`` (cross-entropy, optimizer ``tx``, dropout
  rng 'dropout'), compiled: returns :func:`compile_jax_step`'s (step_fn, first loss, compile s, #params)."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), images[:2])
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
           "opt": tx.init(variables["params"])}

  @functools.partial(jax.jit, donate_argnums=(0,))
  def train_step(state, x, y, rng):
    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": state["batch_stats"]}, x, train=True,
                                rngs={"dropout": rng}, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "batch_stats": stats, "opt": opt}, loss

  return compile_jax_step(train_step, state, images, labels)


def torch_train_setup(torch, model, lr: float, weight_decay: float, images_nhwc, labels):
  """channels_last training ``model``, its AdamW, and the batch as torch (NCHW channels_last) x, y."""
  model = model.to(memory_format=torch.channels_last).train()
  opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=weight_decay)
  x = torch.from_numpy(np.asarray(images_nhwc)).permute(0, 3, 1, 2).contiguous(
      memory_format=torch.channels_last)
  y = torch.from_numpy(np.asarray(labels)).long()
  return model, opt, x, y


def train_step_contenders(impls: Iterable[str], make_jax_step: Callable[[str], tuple],
                          jax_source: Callable[[str], str], thread_counts: Iterable[int],
                          make_torch_step: Callable[[int], tuple]):
  """Builds the contenders 'jax/<impl>' (``make_jax_step(impl)`` -> (step, first loss,
  compile s, #params)) and 'torch/<n>thr' (``make_torch_step(n)`` -> (step, first loss,
  description)), printing one line each. Returns (contenders, info, torch contender names)."""
  contenders, info = {}, {}
  for impl in dict.fromkeys(impls):
    step, loss0, compile_s, n_params = make_jax_step(impl)
    name = f"jax/{impl}"
    contenders[name] = step
    info[name] = {"first_loss": loss0, "compile_s": compile_s, "params": n_params,
                  "source": jax_source(impl)}
    print(f"{name}: {n_params / 1e6:.2f}M params, compiled in {compile_s:.1f}s, "
          f"first loss {loss0:.4f}", flush=True)
  torch_names = []
  for threads in dict.fromkeys(thread_counts):
    step, loss0, desc = make_torch_step(threads)
    name = f"torch/{threads}thr"
    torch_names.append(name)
    contenders[name] = step
    info[name] = {"first_loss": loss0, "source": desc, "threads": threads}
    print(f"{name}: {desc}; first loss {loss0:.4f}", flush=True)
  return contenders, info, torch_names


def print_train_step_table(rows: Dict[str, dict], torch_names: Sequence[str]) -> None:
  """One line per contender: median / min ms, images/s, time ratios to torch."""
  ref_name = torch_names[0] if torch_names else "-"
  print(f"{'contender':>16} {'median ms':>10} {'min ms':>8} {'img/s':>8} "
        f"{'time/' + ref_name:>20} {'time/best torch':>16}")
  for k, r in rows.items():
    ratio = f"{r['time_vs_torch']:.2f}x" if "time_vs_torch" in r else "-"
    best = f"{r['time_vs_best_torch']:.2f}x" if "time_vs_best_torch" in r else "-"
    print(f"{k:>16} {r['median_ms']:10.1f} {r['min_ms']:8.1f} {r['images_per_s']:8.2f} "
          f"{ratio:>20} {best:>16}")


def write_json(path: str, meta: Dict[str, Any], results: Any) -> None:
  """Writes ``{'meta': meta, 'results': results}`` to ``path`` (creating its folder)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as fh:
    json.dump({"meta": meta, "results": results}, fh, indent=1)
  print(f"wrote {path}")


def torch_ce_step(torch, model, opt, x, y, threads: int):
  """One timed PyTorch training step (cross-entropy, backward, ``opt.step()``) at ``threads`` threads;
  returns the loss as a float, so that the step has finished when it returns."""
  loss_fn = torch.nn.CrossEntropyLoss()

  def step():
    torch.set_num_threads(threads)
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step
