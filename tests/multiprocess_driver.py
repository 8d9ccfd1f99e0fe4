"""Runs a short ``toy_blobs`` training as one process of an N-process ``jax.distributed`` job (or alone).

    python tests/multiprocess_driver.py WORKDIR STEPS [--num-processes N --process-id I --port P]
        [--stop-after S] [--deterministic] [--eval-every E] [--ckpt-every C] [--log-every L]
        [--hook MODE:STEP:SIGNAL]

Uses the config of ``train_driver.toy_config`` (tests/train_driver.py). With ``--num-processes > 1``
it first calls ``jax.distributed.initialize(coordinator_address='127.0.0.1:P', ...)`` (CPU collectives:
gloo). Writes WORKDIR/result-<process_id>.json with the loss log, the number of processes / devices,
the labels and image hashes of this process's host batch of step 1, and WORKDIR/final_params.npz (from
process 0: the global parameters after the last step, gathered from every process).

``--stop-after S``: end the run cleanly (exit 0, ``"stopped_at": S`` in the result) right after the
checkpoint of step S is on disk, as if the job had been cut there (the run keeps its full schedule).
``--deterministic``: no augmentation and no drop path, so every example's contribution to a step depends
only on the example and the parameters (needed to compare runs whose processes read different shards:
grain seeds each example's augmentation from its index *within this process's shard*).
Prints ``TRAIN STEP n`` when the batch of step n is put on the devices.
``--hook MODE:STEP:SIGNAL`` (SIGNAL KILL or TERM): the process sends itself that signal
``step``: while step STEP runs (its batch is being put on the devices, before its update);
``async_save``: right after the asynchronous save of step STEP has started (the write still in flight);
``eval``: in the middle of the periodic evaluation after step STEP (before its second batch).
"""

import argparse
import hashlib
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class _Stop(Exception):
  pass


def _args():
  p = argparse.ArgumentParser()
  p.add_argument("workdir")
  p.add_argument("steps", type=int)
  p.add_argument("--num-processes", type=int, default=1)
  p.add_argument("--process-id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--stop-after", type=int, default=None)
  p.add_argument("--deterministic", action="store_true")
  p.add_argument("--hook", default=None)
  p.add_argument("--eval-every", type=int, default=0)
  p.add_argument("--ckpt-every", type=int, default=3)
  p.add_argument("--log-every", type=int, default=1)
  return p.parse_args()


def main():
  a = _args()
  import jax
  if a.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{a.port}", num_processes=a.num_processes,
                               process_id=a.process_id, initialization_timeout=120)
  import numpy as np
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils

  import train_driver
  from fer_jax.train import trainer

  config = train_driver.toy_config(a.steps)
  config.checkpoint.update(every_steps=a.ckpt_every, keep=100)
  config.log_every_steps = a.log_every
  if a.deterministic:
    config.input.update(resize=16, crop=16, rotation=0.0, hflip=False)
    config.model.backbone.drop_path_rate = 0.0
  if a.eval_every:
    from fer_jax import config_utils
    config.evals = config_utils.evals("classification", test=None, every_steps=a.eval_every)

  hook_mode = hook_step = hook_sig = None
  if a.hook:
    hook_mode, hook_step, hook_sig = a.hook.split(":")
    hook_step, hook_sig = int(hook_step), getattr(signal, "SIG" + hook_sig)
    assert hook_mode in ("step", "async_save", "eval"), a.hook

  def fire(mode, step):
    if mode == hook_mode and step == hook_step:
      print(f"HOOK {mode} step {step}: sending {signal.Signals(hook_sig).name}", flush=True)
      os.kill(os.getpid(), hook_sig)

  ckpt_dir = os.path.join(a.workdir, "checkpoints")
  done = [int(d) for d in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []) if d.isdigit()]
  record = {"first_batch": None, "last_state": None, "in_eval": False, "train_batches": 0,
            "start_step": max(done, default=0)}
  original_global_batch = trainer._global_batch

  def recording_global_batch(batch, batch_sharding):
    if record["first_batch"] is None:  # the first call is the training batch of the first step run
      record["first_batch"] = {
          "labels": np.asarray(batch["label"]).tolist(),
          "image_sha1": [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()
                         for x in np.asarray(batch["image"])]}
    if not record["in_eval"]:
      record["train_batches"] += 1
      print(f"TRAIN STEP {record['start_step'] + record['train_batches']}", flush=True)
      fire("step", record["start_step"] + record["train_batches"])
    return original_global_batch(batch, batch_sharding)

  trainer._global_batch = recording_global_batch

  original_run_eval = trainer.Experiment.run_eval

  def run_eval(self, spec, evaluator, predict_fn, writer, step, plot, datasets):
    calls = [0]

    def predict(batch):
      calls[0] += 1
      if calls[0] == 2 and not plot:
        fire("eval", step)
      return predict_fn(batch)

    record["in_eval"] = True
    try:
      return original_run_eval(self, spec, evaluator, predict, writer, step, plot, datasets)
    finally:
      record["in_eval"] = False

  trainer.Experiment.run_eval = run_eval

  original_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    saved = original_save(self, step, *args, **kwargs)
    record["last_state"] = kwargs["args"]["state"].item if "args" in kwargs else None
    if saved:
      fire("async_save", step)
    if saved and a.stop_after is not None and step == a.stop_after:
      self.wait_until_finished()
      raise _Stop()
    return saved

  ocp.CheckpointManager.save = save
  t0 = time.time()
  stopped_at, result = None, {}
  try:
    result = trainer.train_and_evaluate(config, a.workdir)
  except _Stop:
    stopped_at = a.stop_after
  out = {"process_id": jax.process_index(), "process_count": jax.process_count(),
         "devices": jax.device_count(), "local_devices": jax.local_device_count(),
         "loss_log": result.get("train_loss_log", []), "stopped_at": stopped_at,
         "preempted_at_step": result.get("preempted_at_step"),
         "first_batch": record["first_batch"], "seconds": time.time() - t0}
  state = record["last_state"]
  if state is not None and stopped_at is None and "preempted_at_step" not in result:
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if jax.process_index() == 0:
      flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
      np.savez(os.path.join(a.workdir, "final_params.npz"), **flat)
  with open(os.path.join(a.workdir, f"result-{jax.process_index()}.json"), "w") as f:
    json.dump(out, f)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("driver_done")
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
