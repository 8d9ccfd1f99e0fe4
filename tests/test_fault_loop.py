"""Fault loop: one training run interrupted 13 times (10 SIGKILL, 3 SIGTERM) and resumed each time.

Each run is ``tests/multiprocess_driver.py`` (1 process, 1 CPU device, ``toy_blobs``): 60 steps, a
checkpoint every 3 steps (asynchronous), the validation evaluator every 10. The kill points are drawn
with a fixed seed from the progress made so far: inside a step, right after an async save has started
(write in flight), in the middle of a periodic evaluation, or after a random wall-clock delay from the
start of the second step (once the train step is compiled). After the last run the parameters must
equal those of an uninterrupted run bit for bit, every logged loss must equal the uninterrupted run's
loss of that step, and no checkpoint may be left half written.

SIGTERM contract: the run saves at the next step boundary, prints
``Preempted at step N: saved checkpoint <dir>/N; rerun the same command to resume.`` and exits 0.
"""

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DRIVER = HERE / "multiprocess_driver.py"
STEPS, CKPT_EVERY, EVAL_EVERY = 60, 3, 10
SEED = 20260
PREEMPTED = re.compile(
    r"Preempted at step (\d+): saved checkpoint (\S+)/(\d+); rerun the same command to resume\.")


def _env(data_dir):
  return dict(os.environ, TOY_DATA_DIR=str(data_dir), TOY_FSDP="1", TF_CPP_MIN_LOG_LEVEL="2",
              JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _cmd(workdir, hook=None):
  cmd = [sys.executable, str(DRIVER), str(workdir), str(STEPS), "--ckpt-every", str(CKPT_EVERY),
         "--eval-every", str(EVAL_EVERY)]
  return cmd + (["--hook", hook] if hook else [])


def _run(workdir, data_dir, hook=None, signal_after_first_step=None, timeout=240, timing=None):
  """Runs the driver; returns (returncode, output). ``signal_after_first_step=(sig, seconds)`` sends
  ``sig`` that long after the second training step starts (the first one compiles). ``timing`` (a dict)
  receives ``train_seconds``: from there to the end of the process."""
  log_path = pathlib.Path(workdir).parent / f"{pathlib.Path(workdir).name}-{time.monotonic_ns()}.log"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(_cmd(workdir, hook), env=_env(data_dir), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      deadline = time.time() + timeout
      if signal_after_first_step is not None or timing is not None:
        while (proc.poll() is None and log_path.read_text().count("TRAIN STEP ") < 2
               and time.time() < deadline):
          time.sleep(0.02)
        t_first = time.time()
      if signal_after_first_step is not None:
        sig, delay = signal_after_first_step
        time.sleep(delay)
        if proc.poll() is None:
          proc.send_signal(sig)
      proc.wait(timeout=max(deadline - time.time(), 1))
      if timing is not None:
        timing["train_seconds"] = time.time() - t_first
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return proc.returncode, log_path.read_text()


def _latest(workdir):
  d = pathlib.Path(workdir, "checkpoints")
  return max((int(p.name) for p in d.iterdir() if p.name.isdigit()), default=0) if d.is_dir() else 0


def _params(workdir):
  with np.load(os.path.join(workdir, "final_params.npz")) as f:
    return {k: f[k] for k in f.files}


def _plan(rng):
  """13 interruptions in random order: 10 SIGKILL (3 in steps, 3 in async saves, 2 in evaluations,
  2 at random wall-clock delays) and 3 SIGTERM (in a step, in an evaluation, at a random delay)."""
  kinds = ([("step", "KILL")] * 3 + [("async_save", "KILL")] * 3 + [("eval", "KILL")] * 2
           + [("wall", "KILL")] * 2 + [("step", "TERM"), ("eval", "TERM"), ("wall", "TERM")])
  rng.shuffle(kinds)
  # Evaluations happen only at steps 10, 20, 30: do the eval interruptions first, so each finds one.
  # Then the wall-clock ones, while most of the run is still ahead (the delay must not outlast it).
  kinds.sort(key=lambda k: {"eval": 0, "wall": 1}.get(k[0], 2))
  return kinds


@pytest.mark.slow
def test_fault_loop_resumes_bit_identically(tmp_path):
  data_dir = tmp_path / "data"
  t0 = time.time()
  reference = tmp_path / "reference"
  timing = {}
  rc, out = _run(reference, data_dir, timing=timing)
  assert rc == 0, out[-4000:]
  seconds_per_step = timing["train_seconds"] / (STEPS - 1)  # evaluations and saves included
  ref_losses = dict(map(tuple, json.loads((reference / "result-0.json").read_text())["loss_log"]))
  assert sorted(ref_losses) == list(range(1, STEPS + 1))
  t_reference = time.time() - t0

  rng = random.Random(SEED)
  workdir = tmp_path / "faulty"
  events = []
  seen_losses = {}
  for mode, sig in _plan(rng):
    before = _latest(workdir)
    if mode == "eval":
      step = next((s for s in range(EVAL_EVERY, STEPS, EVAL_EVERY) if s > before), None)
      if step is None:
        mode = "async_save"  # no evaluation left ahead of the checkpoint: hit a save instead
    if mode == "step":
      step = rng.randint(before + 1, min(before + 4, STEPS - 1))
    elif mode == "async_save":
      first = (before // CKPT_EVERY + 1) * CKPT_EVERY
      step = rng.choice([s for s in range(first, STEPS, CKPT_EVERY)][:2] or [STEPS])
    if mode == "wall":
      delay = round(rng.uniform(0.0, 0.4 * (STEPS - before) * seconds_per_step), 3)
      rc, out = _run(workdir, data_dir, signal_after_first_step=(getattr(signal, "SIG" + sig), delay))
      point = f"wall +{delay}s"
    else:
      rc, out = _run(workdir, data_dir, hook=f"{mode}:{step}:{sig}")
      point = f"{mode}:{step}"
      assert f"HOOK {mode} step {step}" in out, out[-4000:]
    after = _latest(workdir)
    tmp_left = len([p for p in (workdir / "checkpoints").rglob("*") if "orbax-checkpoint-tmp" in p.name])
    events.append((sig, point, before, after, rc, tmp_left))
    assert not (workdir / "final_params.npz").exists(), f"the run finished before SIG{sig} at {point}"
    if sig == "KILL":
      assert rc == -signal.SIGKILL, (point, rc, out[-4000:])
    else:
      assert rc == 0, (point, rc, out[-4000:])
      m = PREEMPTED.search(out)
      assert m, f"SIGTERM at {point}: no 'Preempted at step N: ...' line:\n{out[-4000:]}"
      n = int(m.group(1))
      assert int(m.group(3)) == n and m.group(2) == str(workdir / "checkpoints"), m.group(0)
      assert n == after, (n, after)
      if mode == "step":
        assert n == step, (n, step)  # saved at the end of the step that was running
      result = json.loads((workdir / "result-0.json").read_text())
      assert result["preempted_at_step"] == n
    assert after >= before
    result_path = workdir / "result-0.json"
    if rc == 0 and result_path.exists():
      for s, loss in json.loads(result_path.read_text())["loss_log"]:
        seen_losses[s] = loss
  rc, out = _run(workdir, data_dir)  # finish
  assert rc == 0, out[-4000:]
  for s, loss in json.loads((workdir / "result-0.json").read_text())["loss_log"]:
    seen_losses[s] = loss
  print(f"\nreference run {t_reference:.1f}s ({seconds_per_step * 1000:.0f} ms/step); fault loop "
        f"{time.time() - t0:.1f}s in all; events:")
  for e in events:
    print("  SIG%s at %-18s checkpoint %2d -> %2d, rc %s, orbax tmp paths left %d" % e)
  assert len(events) == 13 and sum(e[0] == "KILL" for e in events) == 10

  # Bit-identical parameters, and every loss a resumed run logged is the uninterrupted run's.
  a, b = _params(reference), _params(workdir)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  for s, loss in seen_losses.items():
    assert loss == ref_losses[s], (s, loss, ref_losses[s])
  assert STEPS in seen_losses

  # No checkpoint left half written: no orbax tmp dirs, every step dir finalized with both items.
  ckpts = workdir / "checkpoints"
  leftovers = [str(p) for p in ckpts.rglob("*") if "orbax-checkpoint-tmp" in p.name]
  assert not leftovers, leftovers
  steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  assert steps and steps[-1] == STEPS
  assert all(s % CKPT_EVERY == 0 or s == STEPS or s in {e[3] for e in events} for s in steps), steps
  for s in steps:
    d = ckpts / str(s)
    assert (d / "_CHECKPOINT_METADATA").is_file(), d
    for item in ("state", "data"):
      assert (d / item).is_dir(), (d, item)
    assert (d / "state" / "_METADATA").is_file(), d
    meta = json.loads((d / "_CHECKPOINT_METADATA").read_text())
    assert meta.get("commit_timestamp_nsecs"), (d, meta)
  assert [p.name for p in ckpts.iterdir() if not p.name.isdigit()] == []
