"""Runs a short training job on ``toy_blobs`` in its own process (for device-count / kill tests).

    python tests/train_driver.py WORKDIR STEPS [KILL_AFTER_STEP]

Writes WORKDIR/final_params.npz and WORKDIR/result.json. With KILL_AFTER_STEP, the process SIGKILLs
itself right after the checkpoint of that step is on disk (a hard crash: no cleanup runs).

Environment (robustness tests): TOY_SIGNAL_AT_STEP=k sends this process TOY_SIGNAL (TERM or INT,
default TERM) TOY_SIGNAL_COUNT times (default 1) when the loop reaches the save call of step k;
TOY_MODEL_DIMS='8,16,16,16' overrides the backbone dims. A preempted run writes result.json with
``preempted_at_step`` and no final_params.npz.
"""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from fer_jax import config_utils  # noqa: E402
from fer_jax.train import trainer  # noqa: E402


def check_ok(proc):
  """A finished subprocess (``subprocess.run``) that must have exited 0; returns it."""
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def final_params(workdir):
  """The ``final_params.npz`` a driver run wrote: {tree path: array}."""
  with np.load(os.path.join(workdir, "final_params.npz")) as f:
    return {k: f[k] for k in f.files}


def toy_config(steps: int):
  c = config_utils.base_config()
  c.dataset.update(name="toy_blobs", import_module="toy_blobs", data_dir=os.environ["TOY_DATA_DIR"],
                   num_classes=4, image_size=16)
  c.evals = config_utils.evals("classification", test=None)
  c.input.update(batch_size=16, eval_batch_size=32, resize=18, crop=16, rotation=10.0, hflip=True,
                 num_threads=2)
  dims = tuple(int(d) for d in os.environ.get("TOY_MODEL_DIMS", "8,16,16,16").split(","))
  c.model.backbone = dict(name="convnext", stem_patch_size=2, depths=(1, 1, 1, 1), dims=dims,
                          drop_path_rate=0.1)
  c.model.head = dict(name="linear", num_outputs=4)
  c.optimizer.update(lr=3e-3)
  c.schedule.update(name="warmup_cosine", warmup_steps=3)
  c.ema.update(decay=0.9, every=2)
  c.num_train_steps = steps
  c.log_every_steps = 1
  c.checkpoint.update(every_steps=3, keep=10)
  fsdp = int(os.environ.get("TOY_FSDP", "1"))
  if fsdp > 1:  # FSDP: every parameter split along its largest dimension that fsdp divides
    c.mesh = [("data", -1), ("fsdp", fsdp)]
    c.sharding.rules = [(".*", "fsdp")]
  return c


def main():
  workdir, steps = sys.argv[1], int(sys.argv[2])
  kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else None
  if kill_after is not None:
    original_save = ocp.CheckpointManager.save

    def save_then_maybe_die(self, step, *args, **kwargs):
      saved = original_save(self, step, *args, **kwargs)
      if saved and step == kill_after:
        self.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)
      return saved

    ocp.CheckpointManager.save = save_then_maybe_die
  signal_at = os.environ.get("TOY_SIGNAL_AT_STEP")
  if signal_at is not None:
    signum = getattr(signal, "SIG" + os.environ.get("TOY_SIGNAL", "TERM"))
    count = int(os.environ.get("TOY_SIGNAL_COUNT", "1"))
    inner_save = ocp.CheckpointManager.save

    def signal_then_save(self, step, *args, **kwargs):
      if step == int(signal_at):
        for _ in range(count):
          os.kill(os.getpid(), signum)
      return inner_save(self, step, *args, **kwargs)

    ocp.CheckpointManager.save = signal_then_save
  result = trainer.train_and_evaluate(toy_config(steps), workdir)
  if "preempted_at_step" in result:
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump({"preempted_at_step": result["preempted_at_step"], "loss_log": result["train_loss_log"]}, f)
    return
  ckpt = trainer.create_checkpoint_manager(workdir, toy_config(steps))
  params = ckpt.restore(ckpt.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(os.path.join(workdir, "final_params.npz"), **flat)
  with open(os.path.join(workdir, "result.json"), "w") as f:
    json.dump({"devices": jax.device_count(), "loss_log": result["train_loss_log"],
               "accuracy": result["validation"]["accuracy"]}, f)


if __name__ == "__main__":
  main()
