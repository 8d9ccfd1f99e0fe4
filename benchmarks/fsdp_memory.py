"""FSDP at the large end: per-device train-state memory of EmoNeXt-XL and Inception-ResNet (deep)
under pure data parallelism vs the FSDP sharding rules, on 8 simulated CPU devices.

Run from the repository root (the script sets both variables itself when they are unset)::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      .venv/bin/python benchmarks/fsdp_memory.py --json benchmarks/results/fsdp_memory.json

Nothing is executed and no full-size array is allocated: for every (model, mesh) case the train
state is built abstractly (``jax.eval_shape`` of the trainer's own init, as in
``fer_jax.train.trainer.create_train_state``), placed with ``fer_jax.train.sharding.tree_shardings``,
the batch is a tree of ``jax.ShapeDtypeStruct`` with ``sharding.batch_sharding(mesh)``, and the
trainer's ``train_step`` is jitted exactly as ``train_and_evaluate`` does (state donated, explicit
out shardings), lowered and compiled; ``compiled.memory_analysis()`` gives the per-device argument /
output / alias / temp sizes. Each case runs in its own subprocess (``--case``), so its peak RSS is
its own and a case that is too slow is killed at ``--timeout`` without losing the others.

Models (``config.input.batch_size`` set to ``--batch``, default 8, so compiling stays cheap):

* ``emonext_xl``: ``experiments/emonext_fer2013.py:size=xlarge`` (EmoNeXt-XL, 358M params, AdamW
  + EMA), batch of uint8 (B, crop, crop, 3) images + int32 labels (the host pipeline crops; the
  jitted step only normalises). ``--emonext-res`` (default 224) sets the crop; the state sizes do
  not depend on it, only the temp (activation) size does.
* ``irn_deep``: ``experiments/inception_resnet_affwild.py:arch=deep`` (Inception-ResNet-v1 depth,
  299 px, AdamW, no EMA), affect task: {'frames': uint8 (B, T=4, 299, 299, 3), 'targets':
  float32 (B, T, 2), 'mask': bool (B, T)}; the frame model sees B*T frames.

Meshes: ``dp`` = ``[('data', 8), ('fsdp', 1)]`` with rules ``[('.*', 'replicate')]``;
``fsdp`` = ``[('data', 1), ('fsdp', 8)]`` with rules ``[('.*', 'fsdp')]``.

"Per-device state from shardings" is exact: the sum over the state's leaves of the bytes of one
shard (``NamedSharding.shard_shape``); "unsharded" is the sum of the full leaves. It counts params,
the optimizer state (AdamW mu and nu, the clip / schedule counters), the EMA params and the
non-trainable collections (BatchNorm statistics).

What FSDP cannot split: the ``'fsdp'`` tactic splits each leaf along its largest dimension that 8
divides; a leaf with no such dimension stays replicated on all 8 devices. That is every scalar (step,
the optimizer's counters) and the few vectors whose length 8 does not divide -- with their AdamW mu /
nu and EMA copies. EmoNeXt-XL: the 7-way head bias and the STN's 10-channel localisation conv bias /
BatchNorm (scale, bias, running mean / var) and its 6-way affine regressor bias: 25 leaves, 780 bytes
of 5.7 GB; everything else splits, kernels along whichever dimension 8 divides (ConvNeXt widths
256..2048, SE, attention, the STN's 8-channel first conv, its (5, 5, 8, 10) conv along the 8 input
channels, its (32, 6) affine regressor along the 32 rows). Inception-ResNet deep: only the 2-way
valence / arousal head bias and the scalars (6 leaves, 36 bytes). The table's "replicated" column
gives those bytes and their fraction of the unsharded state; the per-device total is
``total / 8 + replicated * 7 / 8``, i.e. 1/8 of the total to 7 significant digits for both models.

The compiled argument size also includes the batch shard and the RNG key, and under XLA:CPU the temp
size is the CPU's buffer assignment (activations, gradients, the all-gathered full weights of FSDP,
fusion scratch), which is indicative but not what a TPU / GPU compile would report.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time

if "--case" in sys.argv or __name__ == "__main__":
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path.insert(0, _ROOT)

GIB = float(1 << 30)
MODELS = {
    "emonext_xl": "experiments/emonext_fer2013.py:size=xlarge",
    "irn_deep": "experiments/inception_resnet_affwild.py:arch=deep",
}
MESHES = {
    "dp": ([("data", 8), ("fsdp", 1)], [(".*", "replicate")]),
    "fsdp": ([("data", 1), ("fsdp", 8)], [(".*", "fsdp")]),
}
MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                 "temp_size_in_bytes", "generated_code_size_in_bytes", "peak_memory_in_bytes")


def _config(model: str, mesh: str, batch: int, emonext_res: int):
  from fer_jax import config_utils
  spec = MODELS[model]
  if model == "emonext_xl" and emonext_res != 224:
    spec += f",res={emonext_res}"
  c = config_utils.load_config_file(os.path.join(_ROOT, spec))
  c.mesh, rules = MESHES[mesh]
  c.sharding.rules = rules
  c.input.batch_size = batch
  return c


def _abstract_batch(config, task, mesh, batch_sharding):
  import jax
  import jax.numpy as jnp
  from fer_jax.train.tasks.base import image_shape
  b = config.input.batch_size
  s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=batch_sharding)
  if task.name == "classification":
    return {"image": s((b,) + image_shape(config), jnp.uint8), "label": s((b,), jnp.int32)}
  if task.name == "affect":
    t = task.frames_per_example
    return {"frames": s((b, t) + image_shape(config), jnp.uint8),
            "targets": s((b, t, len(task.names)), jnp.float32), "mask": s((b, t), jnp.bool_)}
  raise ValueError(f"no abstract batch for task {task.name!r}")


def _leaf_bytes(tree, shardings):
  """(unsharded bytes, per-device bytes, replicated bytes, #leaves, #replicated leaves)."""
  import jax
  import numpy as np
  full = per_dev = repl = 0
  n = n_repl = 0
  for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    item = np.dtype(leaf.dtype).itemsize
    nbytes = int(np.prod(leaf.shape, dtype=np.int64)) * item
    shard = int(np.prod(sh.shard_shape(leaf.shape), dtype=np.int64)) * item
    full += nbytes
    per_dev += shard
    n += 1
    if shard == nbytes:
      repl += nbytes
      n_repl += 1
  return dict(unsharded_bytes=full, per_device_bytes=per_dev, replicated_bytes=repl, leaves=n,
              replicated_leaves=n_repl)


def run_case(model_name: str, mesh_name: str, batch: int, emonext_res: int) -> dict:
  import jax
  import jax.numpy as jnp
  from fer_jax.train import optim, sharding, trainer
  from fer_jax.train.trainer import TrainState

  t0 = time.time()
  c = _config(model_name, mesh_name, batch, emonext_res)
  mesh = sharding.create_mesh(c.mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  task = trainer.get_task(c)
  model = trainer.create_model(c)
  task.bind_model(model.input_names)
  schedule = optim.create_schedule(c, int(c.num_train_steps or 1000))
  tx = optim.create_optimizer(c, schedule)
  dummy = jax.eval_shape(lambda: task.example_batch(model.input_names))

  def init(rng):  # fer_jax.train.trainer.create_train_state's init
    variables = dict(model.init({"params": rng, "dropout": rng}, train=False,
                                **{k: jnp.zeros(v.shape, v.dtype) for k, v in dummy.items()}))
    params = variables.pop("params")
    ema = jax.tree.map(jnp.copy, params) if c.ema.get("decay", 0.0) else {}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=variables, ema_params=ema)

  rng = jax.random.key(0)
  abstract = jax.eval_shape(init, rng)
  shardings = sharding.tree_shardings(abstract, mesh, c.sharding.rules)
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract, shardings)
  abstract_batch = _abstract_batch(c, task, mesh, batch_sharding)
  t_abstract = time.time() - t0

  parts = {k: _leaf_bytes(getattr(abstract, k), getattr(shardings, k))
           for k in ("params", "opt_state", "ema_params", "model_state", "step")}
  total = _leaf_bytes(abstract, shardings)
  n_params = sum(int(x.size) for x in jax.tree.leaves(abstract.params))
  # The largest replicated leaves (what FSDP could not split).
  repl_leaves = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract.params):
    sh = sharding.tree_shardings({"x": leaf}, mesh, c.sharding.rules)["x"]
    if mesh_name == "fsdp" and sh.shard_shape(leaf.shape) == tuple(leaf.shape):
      repl_leaves.append((jax.tree_util.keystr(path), list(leaf.shape), int(leaf.size)))
  repl_leaves.sort(key=lambda r: -r[2])

  step = jax.jit(functools.partial(trainer.train_step, model=model, tx=tx, config=c, task=task),
                 in_shardings=(shardings, batch_sharding, None),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  t1 = time.time()
  lowered = step.lower(abstract_state, abstract_batch, rng)
  t_lower = time.time() - t1
  t1 = time.time()
  compiled = lowered.compile()
  t_compile = time.time() - t1
  ma = compiled.memory_analysis()
  memory = {f: int(getattr(ma, f)) for f in MEMORY_FIELDS if hasattr(ma, f)}
  shapes = {k: [list(v.shape), str(v.dtype)] for k, v in abstract_batch.items()}
  return dict(model=model_name, config=MODELS[model_name], mesh_name=mesh_name,
              mesh=[list(a) for a in c.mesh], rules=[list(r) for r in c.sharding.rules],
              batch=shapes, params=n_params, state=total, parts=parts, memory=memory,
              replicated_param_leaves=len(repl_leaves), largest_replicated_params=repl_leaves[:8],
              seconds=dict(abstract=t_abstract, lower=t_lower, compile=t_compile),
              peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB)


def _row(r: dict) -> str:
  if "error" in r:
    return f"| {r['model']} | {r['mesh_name']} | failed: {r['error'][:80]} | | | | | | |"
  st, m = r["state"], r["memory"]
  ratio = st["per_device_bytes"] / st["unsharded_bytes"]
  return (f"| {r['model']} | {r['mesh_name']} | {r['params'] / 1e6:.1f}M | "
          f"{st['unsharded_bytes'] / GIB:.3f} | {st['per_device_bytes'] / GIB:.3f} | {ratio:.4f} "
          f"(1/{1 / ratio:.3f}) | {_repl(st)} | "
          f"{m['argument_size_in_bytes'] / GIB:.3f} | {m['temp_size_in_bytes'] / GIB:.3f} | "
          f"{r['seconds']['lower'] + r['seconds']['compile']:.0f} s / {r['peak_rss_gib']:.1f} GiB |")


def _repl(st: dict) -> str:
  frac = st["replicated_bytes"] / st["unsharded_bytes"]
  if frac == 1.0:
    return "all"
  return f"{st['replicated_bytes']:,} B ({frac:.1e}), {st['replicated_leaves']} leaves"


HEADER = ("| model | mesh | params | state unsharded (GiB) | per-device state from shardings (GiB) | "
          "ratio | replicated | compiled argument / device (GiB) | temp / device (GiB) | "
          "lower+compile / peak RSS |\n|---|---|---|---|---|---|---|---|---|---|")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--json", help="write every number to this path")
  p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {list(MODELS)}")
  p.add_argument("--meshes", default=",".join(MESHES), help=f"comma-separated subset of {list(MESHES)}")
  p.add_argument("--batch", type=int, default=8, help="global batch (examples; clips for irn_deep)")
  p.add_argument("--emonext-res", type=int, default=224, help="EmoNeXt crop (state size independent)")
  p.add_argument("--timeout", type=float, default=900, help="seconds per case (subprocess)")
  p.add_argument("--table", help="only print the table of a JSON written by --json")
  p.add_argument("--case", help=argparse.SUPPRESS)  # model:mesh, run in this process, JSON on stdout
  args = p.parse_args()

  if args.case:
    model, mesh = args.case.split(":")
    print("RESULT " + json.dumps(run_case(model, mesh, args.batch, args.emonext_res)), flush=True)
    return

  if args.table:
    with open(args.table) as f:
      print(HEADER)
      for r in json.load(f)["results"]:
        print(_row(r))
    return

  import jax
  results = []
  print(HEADER, flush=True)
  for model in args.models.split(","):
    for mesh in args.meshes.split(","):
      cmd = [sys.executable, os.path.abspath(__file__), "--case", f"{model}:{mesh}",
             "--batch", str(args.batch), "--emonext-res", str(args.emonext_res)]
      t0 = time.time()
      try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=_ROOT)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        r = json.loads(lines[-1][7:]) if lines else dict(
            model=model, mesh_name=mesh, error=(out.stderr.strip().splitlines() or ["?"])[-1])
      except subprocess.TimeoutExpired:
        r = dict(model=model, mesh_name=mesh, error=f"timeout after {args.timeout:.0f} s")
      r["wall_seconds"] = time.time() - t0
      if model == "emonext_xl":
        r["emonext_res"] = args.emonext_res
      results.append(r)
      print(_row(r), flush=True)
  for r in results:
    if r.get("largest_replicated_params"):
      print(f"\n{r['model']} fsdp: {r['replicated_param_leaves']} param leaves replicated; largest:")
      for name, shape, size in r["largest_replicated_params"]:
        print(f"  {name} {shape} ({size:,})")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    meta = dict(jax=jax.__version__, devices=8, platform=platform.platform(), batch=args.batch,
                emonext_res=args.emonext_res, argv=sys.argv, load_average=os.getloadavg())
    with open(args.json, "w") as f:
      json.dump(dict(meta=meta, results=results), f, indent=2)


if __name__ == "__main__":
  main()
