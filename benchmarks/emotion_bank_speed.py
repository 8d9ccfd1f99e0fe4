"""One per-emotion landmark CNN + LSTM at inference on this CPU: the binarized model packed for
XNOR-popcount vs its float simulation vs the float T-EMO model of the same size; and their memory.

Run (a few minutes on 2 loaded cores; the README numbers used the defaults):

  nice -n 5 .venv/bin/python benchmarks/emotion_bank_speed.py --json benchmarks/results/emotion_bank_speed.json

Contenders, per model size (``--sizes``, ``fer_jax.models.landmark_lstm.SIZES``) and batch of clips
(``--batches``; clips of ``--frames`` frames x 68 landmarks x 4 channels: normalised x, y and the
displacement from the first frame), all jitted, ``model.apply(variables, train=False, landmarks=x)``:

* ``float T-EMO``: the float model (``binary=False``; R-EMO has the same inference graph);
* ``binary, float simulation``: the ``binary=True`` model as trained (``QuantConv`` / ``QuantDense``
  on +-1 float32 values);
* ``binary, packed``: ``landmark_lstm.pack_landmark_model`` of it (``BinaryConvInference`` /
  ``BinaryDenseInference``: uint32 bit planes, ``n - 2 popcount(x XOR w)``; conv0 real input x
  unpacked sign kernel);
* ``binary + LSTM``: the ``binary_lstm=True`` model (``fer_jax.layers.binary_lstm``), as trained and
  packed: every product but the head's is an XNOR-popcount;
* ``LSTM + head alone``: the float LSTM over the frame features plus the head, the part binarization
  leaves as it is (a floor for every contender).

With ``--train_batch N`` (default 32; 0 skips it) it also times one training step (the trainer's
``train_step``: forward, backward, AdamW, latent clipping; ``experiments/emotion_bank_synthetic.py``'s
recipe) of T-EMO, R-EMO (conv kernels behind ``stop_gradient`` and frozen) and the binary model, at
the first size, on a fixed batch of N synthetic-shaped clips.

Timed interleaved round-robin (``benchmarks/_interleaved.py``): ``--rounds`` x ``--inner`` calls each,
medians and ratios from one run. Before timing, the packed model's logits are checked against the
float simulation's (max |diff| printed). Memory: bytes of the parameters (float32), of the BatchNorm
statistics, and of the packed model (``binary_inference.packed_bytes``: uint32 words vs the float
leaves left: BN, LSTM, head).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fer_jax.layers import binary_inference as bi  # noqa: E402
from fer_jax.models import composite  # noqa: E402
from fer_jax.models import landmark_lstm as ll  # noqa: E402

import _interleaved  # noqa: E402  (benchmarks/_interleaved.py)


def _nbytes(tree) -> int:
  return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def _model(size: str, binary: bool, binary_lstm: bool = False):
  return composite.build_model(dict(backbone=dict(name="landmark_cnn_lstm", size=size, binary=binary,
                                                  binary_lstm=binary_lstm),
                                    head=dict(name="linear", num_outputs=1)))


def _variables(model, x, seed: int):
  """init, with BatchNorm statistics from one pass in training mode (realistic scales)."""
  v = jax.jit(lambda x: model.init(jax.random.key(seed), train=False, landmarks=x))(x)
  _, upd = jax.jit(lambda v, x: model.apply(v, train=True, landmarks=x, mutable=["batch_stats"]))(v, x)
  return {"params": v["params"], "batch_stats": upd["batch_stats"]}


def _case(size: str, batch: int, frames: int):
  x = jax.random.normal(jax.random.key(0), (batch, frames, 68, 4), jnp.float32)
  float_model, bin_model = _model(size, False), _model(size, True)
  fv, bv = _variables(float_model, x, 1), _variables(bin_model, x, 2)
  packed_model, pv = ll.pack_landmark_model(bin_model, bv)
  all_model = _model(size, True, True)
  av = _variables(all_model, x, 4)
  all_packed_model, apv = ll.pack_landmark_model(all_model, av)
  _, _, _, frame_features, hidden = float_model.backbone.resolved()
  rnn = nn.RNN(nn.OptimizedLSTMCell(hidden))
  rnn_vars = {"params": {"cell": fv["params"]["backbone"]["lstm"]}}
  head = fv["params"]["head"]["dense"]
  h_in = jax.random.normal(jax.random.key(3), (batch, frames, frame_features), jnp.float32)

  apply = {k: jax.jit(lambda v, x, m=m: m.apply(v, train=False, landmarks=x))
           for k, m in (("float", float_model), ("binary", bin_model), ("packed", packed_model),
                        ("all", all_model), ("all packed", all_packed_model))}
  lstm = jax.jit(lambda v, h: rnn.apply(v, h)[:, -1] @ head["kernel"] + head["bias"])
  fns = {"float T-EMO": lambda: apply["float"](fv, x)["logits"],
         "binary, float simulation": lambda: apply["binary"](bv, x)["logits"],
         "binary, packed": lambda: apply["packed"](pv, x)["logits"],
         "binary + LSTM, float simulation": lambda: apply["all"](av, x)["logits"],
         "binary + LSTM, packed": lambda: apply["all packed"](apv, x)["logits"],
         "LSTM + head alone": lambda: lstm(rnn_vars, h_in)}
  outs = {k: np.asarray(jax.block_until_ready(f())) for k, f in fns.items()}  # compiles
  diff = float(np.max(np.abs(outs["binary, packed"] - outs["binary, float simulation"])))
  assert diff <= 1e-5 * max(1.0, float(np.max(np.abs(outs["binary, float simulation"])))), diff
  diff_all = float(np.max(np.abs(outs["binary + LSTM, packed"] - outs["binary + LSTM, float simulation"])))
  assert diff_all <= 1e-5 * max(1.0, float(np.max(np.abs(outs["binary + LSTM, float simulation"])))), diff_all
  binary_layers = [f"conv{i}" for i in range(len(float_model.backbone.resolved()[0]))] + ["frame_dense"]
  latent = {n: bv["params"]["backbone"][n]["latent_kernel"] for n in binary_layers}
  memory = {
      "float T-EMO": {"params": _nbytes(fv["params"]), "batch_stats": _nbytes(fv["batch_stats"])},
      "binary, float simulation": {"params": _nbytes(bv["params"]), "batch_stats": _nbytes(bv["batch_stats"]),
                                   "binary_layers_float32": _nbytes(latent)},
      "binary, packed": {**bi.packed_bytes(pv),
                         "binary_layers_packed": _nbytes({n: pv["params"]["backbone"][n] for n in binary_layers})},
      "binary + LSTM, packed": bi.packed_bytes(apv),
      "lstm_params": _nbytes(fv["params"]["backbone"]["lstm"]),
  }
  n_params = {k: int(sum(np.prod(a.shape) for a in jax.tree.leaves(v["params"]))) for k, v in
              (("float T-EMO", fv), ("binary", bv))}
  return fns, memory, {"packed_vs_simulation_max_abs_diff": diff, "binary_lstm_packed_vs_simulation_max_abs_diff":
                       diff_all, "params": n_params}


def _train_steps(size: str, batch: int, frames: int):
  """{'train T-EMO' / 'train R-EMO' / 'train binary': one jitted trainer step on a fixed batch}."""
  from fer_jax import config_utils  # pylint: disable=import-outside-toplevel
  from fer_jax.train import optim, sharding, trainer  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rng = np.random.default_rng(0)
  batch_data = {"landmarks": jnp.asarray(rng.normal(24, 6, (batch, frames, 68, 2)).astype(np.float32)),
                "label": jnp.asarray(rng.integers(0, 8, batch).astype(np.int32)),
                "jitter": jnp.asarray(np.tile([1.0, 0.0, 0.0, 0.0], (batch, 1)).astype(np.float32))}
  fns, params = {}, {}
  for arch, name in (("temo", "train T-EMO"), ("remo", "train R-EMO"), ("binary", "train binary")):
    c = config_utils.load_config_file(os.path.join(root, "experiments", "emotion_bank_synthetic.py") +
                                      f":arch={arch},size={size},batch={batch}")
    c.task_options.num_frames = frames
    model = trainer.create_model(c)
    task = trainer.get_task(c)
    task.bind_model(model.input_names)
    tx = optim.create_optimizer(c, optim.create_schedule(c, c.num_train_steps))
    state, _ = trainer.create_train_state(c, model, tx, jax.random.key(0), sharding.create_mesh(c.mesh), task)
    step = jax.jit(lambda s, b, model=model, tx=tx, c=c, task=task: trainer.train_step(
        s, b, jax.random.key(1), model=model, tx=tx, config=c, task=task), donate_argnums=(0,))
    box = {"state": state}

    def run(step=step, box=box):
      box["state"], metrics = step(box["state"], batch_data)
      return metrics["loss"]

    jax.block_until_ready(run())  # compile
    fns[name] = run
    params[name] = int(sum(np.prod(a.shape) for a in jax.tree.leaves(box["state"].params)))
  return fns, params


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--sizes", default="small,base")
  ap.add_argument("--batches", default="1,64", help="clips per call")
  ap.add_argument("--frames", type=int, default=16)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--inner", type=int, default=4)
  ap.add_argument("--train_batch", type=int, default=32, help="clips per timed train step (0: skip)")
  ap.add_argument("--json", default=None, help="write results here")
  args = ap.parse_args()
  load_start = os.getloadavg()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cpus, load avg "
        f"{load_start[0]:.2f}; ms median (min) of {args.rounds}x{args.inner} interleaved calls")
  results = []
  for size in args.sizes.split(","):
    for batch in (int(b) for b in args.batches.split(",")):
      fns, memory, checks = _case(size, batch, args.frames)
      times = _interleaved.time_jax_interleaved(fns, 0, args.rounds, args.inner)
      rows = {}
      for name, t in times.items():
        t = np.asarray(t) * 1e3
        rows[name] = {"median_ms": float(np.median(t)), "min_ms": float(t.min()), "n": int(t.size),
                      "clips_per_s": float(batch / np.median(t) * 1e3)}
      ref = rows["float T-EMO"]["median_ms"]
      for r in rows.values():
        r["time_vs_float"] = r["median_ms"] / ref
      results.append({"size": size, "batch": batch, "frames": args.frames, "times": rows, "memory": memory,
                      "checks": checks})
      print(f"\nsize {size}, batch {batch} clips x {args.frames} frames x 68 landmarks "
            f"(params: float {checks['params']['float T-EMO']:,}, binary {checks['params']['binary']:,}; "
            f"packed vs simulation max |diff| {checks['packed_vs_simulation_max_abs_diff']:.2g})")
      print(f"  {'contender':32s} {'median ms':>10s} {'(min)':>9s} {'clips/s':>9s} {'time / float':>13s}")
      for name, r in rows.items():
        print(f"  {name:32s} {r['median_ms']:10.2f} ({r['min_ms']:7.2f}) {r['clips_per_s']:9.0f} "
              f"{r['time_vs_float']:12.2f}x")
      m = memory
      print(f"  memory: float T-EMO params {m['float T-EMO']['params']:,} B (+ BN stats "
            f"{m['float T-EMO']['batch_stats']:,} B); binary params {m['binary, float simulation']['params']:,} B "
            f"of which binary layers {m['binary, float simulation']['binary_layers_float32']:,} B float32 -> "
            f"{m['binary, packed']['binary_layers_packed']:,} B packed; packed model "
            f"{m['binary, packed']['packed']:,} B words + {m['binary, packed']['float']:,} B float (BN, LSTM "
            f"{m['lstm_params']:,} B, head); binary + LSTM packed model {m['binary + LSTM, packed']['packed']:,} B "
            f"words + {m['binary + LSTM, packed']['float']:,} B float", flush=True)
  if args.train_batch:
    size = args.sizes.split(",")[0]
    fns, params = _train_steps(size, args.train_batch, args.frames)
    times = _interleaved.time_jax_interleaved(fns, 0, args.rounds, args.inner)
    rows = {}
    for name, t in times.items():
      t = np.asarray(t) * 1e3
      rows[name] = {"median_ms": float(np.median(t)), "min_ms": float(t.min()), "n": int(t.size),
                    "params": params[name]}
    for r in rows.values():
      r["time_vs_temo"] = r["median_ms"] / rows["train T-EMO"]["median_ms"]
    results.append({"size": size, "train_batch": args.train_batch, "frames": args.frames, "train_steps": rows})
    print(f"\ntrain step, size {size}, batch {args.train_batch} clips x {args.frames} frames")
    print(f"  {'contender':26s} {'median ms':>10s} {'(min)':>9s} {'time / T-EMO':>13s}")
    for name, r in rows.items():
      print(f"  {name:26s} {r['median_ms']:10.2f} ({r['min_ms']:7.2f}) {r['time_vs_temo']:12.2f}x", flush=True)
  if args.json:
    meta = {"jax": jax.__version__, "platform": jax.devices()[0].platform, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "rounds": args.rounds, "inner": args.inner,
            "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
            "command": "python benchmarks/emotion_bank_speed.py " + " ".join(sys.argv[1:])}
    _interleaved.write_json(args.json, meta, results)


if __name__ == "__main__":
  main()
