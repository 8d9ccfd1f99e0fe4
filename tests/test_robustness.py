"""Robustness of training runs: SIGTERM/SIGINT save and exit 0, the work dir lock, resuming after a config
change, and smaller guards (non-finite pretrained weights, integer images, metrics.json across runs).

Fast tests exercise the pieces in-process; the end-to-end ones (@pytest.mark.slow) run
``tests/train_driver.py`` on ``toy_blobs`` in subprocesses, as tests/test_trainer.py does.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fer_jax.train import checkpoints, preemption, trainer
from fer_jax.train import workdir as workdir_lib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_driver import check_ok, final_params  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


# ----------------------------------------------------------------------------------------------------
# The lock.
# ----------------------------------------------------------------------------------------------------

def _write_lock(workdir, **info):
  full = {"host": socket.gethostname(), "pid": 1, "pid_start": None, "start_time": "2026-01-01T00:00:00+00:00",
          "argv": ["fer-jax", "train"]}
  full.update(info)
  path = pathlib.Path(workdir) / workdir_lib.LOCK_NAME
  path.write_text(json.dumps(full))
  return path


@pytest.fixture
def live_process():
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  yield proc
  proc.kill()
  proc.wait()


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_refuses_a_live_run_naming_host_and_pid(tmp_path, live_process):
  path = _write_lock(tmp_path, pid=live_process.pid, pid_start=workdir_lib._proc_start_ticks(live_process.pid))
  before = path.read_text()
  with pytest.raises(workdir_lib.WorkdirLockedError) as e:
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  msg = str(e.value)
  assert f"The work dir {tmp_path} is in use by another run (host {socket.gethostname()}, " \
         f"pid {live_process.pid}, started 2026-01-01T00:00:00+00:00, command: fer-jax train)" in msg
  assert path.read_text() == before  # the other run's lock is untouched


def test_stale_lock_of_a_dead_process_is_replaced_and_released(tmp_path):
  path = _write_lock(tmp_path, pid=_dead_pid())
  lock = workdir_lib.WorkdirLock(str(tmp_path), argv=["me"]).acquire()
  info = json.loads(path.read_text())
  assert (info["host"], info["pid"], info["argv"]) == (socket.gethostname(), os.getpid(), ["me"])
  lock.release()
  assert not path.exists()


def test_lock_of_a_reused_pid_is_stale(tmp_path, live_process):
  ticks = workdir_lib._proc_start_ticks(live_process.pid)
  if ticks is None:
    pytest.skip("no /proc")
  _write_lock(tmp_path, pid=live_process.pid, pid_start=ticks - 1)  # same pid, another process
  with workdir_lib.WorkdirLock(str(tmp_path)):
    assert json.loads((tmp_path / workdir_lib.LOCK_NAME).read_text())["pid"] == os.getpid()
  assert not (tmp_path / workdir_lib.LOCK_NAME).exists()


def test_lock_from_another_host_refuses_and_says_how_to_remove_it(tmp_path):
  path = _write_lock(tmp_path, host="other-host.example", pid=_dead_pid())
  with pytest.raises(workdir_lib.WorkdirLockedError) as e:
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  assert "host other-host.example" in str(e.value)
  assert f"if it is no longer running, delete {path} and rerun" in str(e.value)
  assert path.exists()


def test_lock_is_released_on_exceptions_and_second_holder_refused(tmp_path):
  with pytest.raises(KeyError):
    with workdir_lib.WorkdirLock(str(tmp_path)):
      with pytest.raises(workdir_lib.WorkdirLockedError, match=f"pid {os.getpid()}"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire()  # same process, second start: refused
      raise KeyError("boom")
  assert not (tmp_path / workdir_lib.LOCK_NAME).exists()


# ----------------------------------------------------------------------------------------------------
# Signals.
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signals_only_set_a_flag_and_restore_the_handlers(signum):
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  with preemption.StopSignals() as signals:
    assert not signals.agreed(1, None)
    os.kill(os.getpid(), signum)
    time.sleep(0.01)
    assert signals.received == signum
    assert signals.agreed(2, None)
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


def test_second_signal_ends_the_process_at_once():
  code = ("import os, signal, time\n"
          "from fer_jax.train import preemption\n"
          "with preemption.StopSignals():\n"
          "  os.kill(os.getpid(), signal.SIGTERM)\n"
          "  print('first handled', flush=True)\n"
          "  os.kill(os.getpid(), signal.SIGTERM)\n"
          "  time.sleep(5)\n"
          "  print('still running', flush=True)\n")
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"), cwd=str(ROOT))
  assert p.returncode == -signal.SIGTERM, p.stderr[-2000:]
  assert p.stdout == "first handled\n"


def test_preempted_message_is_exact():
  assert preemption.preempted_message(7, "/w/checkpoints") == (
      "Preempted at step 7: saved checkpoint /w/checkpoints/7; rerun the same command to resume.")


# ----------------------------------------------------------------------------------------------------
# Config changes, metrics merging, shape differences.
# ----------------------------------------------------------------------------------------------------

def test_config_changes_name_dotted_fields():
  old = {"model": {"backbone": {"dims": [8, 16]}}, "log_every_steps": 1, "optimizer": {"lr": 0.1}}
  new = {"model": {"backbone": {"dims": [8, 32]}}, "log_every_steps": 5, "optimizer": {"lr": 0.1, "b": 2}}
  changes = workdir_lib.config_changes(old, new)
  assert changes == [("log_every_steps", 1, 5), ("model.backbone.dims", [8, 16], [8, 32]),
                     ("optimizer.b", "<absent>", 2)]
  assert workdir_lib.format_changes(changes[:2]) == (
      "log_every_steps: 1 -> 5, model.backbone.dims: [8, 16] -> [8, 32]")
  assert workdir_lib.is_layout_safe("log_every_steps") and workdir_lib.is_layout_safe("evals.test.split")
  assert not workdir_lib.is_layout_safe("model.backbone.dims")


def test_saved_config_round_trips(tmp_path):
  c = ml_collections.ConfigDict({"a": {"b": (1, 2)}, "lr": 0.5})
  workdir_lib.write_config(str(tmp_path), c)
  assert workdir_lib.config_changes(workdir_lib.read_saved_config(str(tmp_path)),
                                    workdir_lib.config_to_dict(c)) == []


def test_metrics_merge_keeps_earlier_runs():
  previous = {"train_loss_log": [[1, 1.0], [2, 0.9], [3, 0.8], [4, 0.7]],
              "runs": [{"start_step": 0, "end_step": 4, "train_seconds": 10.0}]}
  log, runs = workdir_lib.merge_previous_metrics(previous, 3, [(4, 0.65), (5, 0.6)],
                                                 {"start_step": 3, "end_step": 5, "train_seconds": 2.0})
  # Step 4 of the earlier run was after its last checkpoint (3): this run's value replaces it.
  assert log == [[1, 1.0], [2, 0.9], [3, 0.8], [4, 0.65], [5, 0.6]]
  assert [r["train_seconds"] for r in runs] == [10.0, 2.0]
  # A fresh start (step 0) forgets the old file.
  assert workdir_lib.merge_previous_metrics(previous, 0, [(1, 2.0)], {"x": 1}) == ([[1, 2.0]], [{"x": 1}])


def test_shape_differences_name_the_parameters():
  abstract = {"params": {"backbone": {"w": jax.ShapeDtypeStruct((3, 16), jnp.float32),
                                      "b": jax.ShapeDtypeStruct((16,), jnp.float32)},
                         "head": {"new": jax.ShapeDtypeStruct((2,), jnp.float32)}}}
  saved = {"['params']['backbone']['w']": (3, 8), "['params']['backbone']['b']": (16,),
           "['params']['head']['old']": (2,)}
  assert checkpoints._shape_differences(saved, abstract) == [
      "params.backbone.w: shape (3, 8) in the checkpoint vs (3, 16) in the config",
      "params.head.new: not in the checkpoint, shape (2,) in the config",
      "params.head.old: shape (2,) in the checkpoint, not in the config"]


# ----------------------------------------------------------------------------------------------------
# Small guards.
# ----------------------------------------------------------------------------------------------------

def test_non_finite_init_weights_are_rejected_naming_file_and_parameter(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  path = str(tmp_path / "w.safetensors")
  bad = np.ones((4, 3), np.float32)
  bad[1, 2] = np.nan
  bad[0, 0] = np.inf
  safetensors_numpy.save_file({"stem.0.weight": np.ones((2,), np.float32), "stages.0.w": bad}, path)
  config = ml_collections.ConfigDict({"init_weights": path, "model": {"backbone": {"name": "convnext"}}})
  with pytest.raises(ValueError) as e:
    trainer.load_init_weights(None, config, None)
  assert str(e.value) == (f"config.init_weights={path!r}: parameter 'stages.0.w' (shape (4, 3)) holds "
                          "non-finite values (1 NaN, 1 Inf); the file is damaged or was saved from a "
                          "diverged model.")


def test_model_rejects_integer_images():
  from fer_jax.models import composite
  model = composite.build_model({"backbone": dict(name="convnext", stem_patch_size=2, depths=(1, 1, 1, 1),
                                                  dims=(8, 8, 8, 8)),
                                 "head": dict(name="linear", num_outputs=3)})
  x = jnp.zeros((1, 16, 16, 3), jnp.float32)
  variables = model.init(jax.random.key(0), train=False, image=x)
  assert model.apply(variables, train=False, image=x)["logits"].shape == (1, 3)
  with pytest.raises(TypeError) as e:
    model.apply(variables, train=False, image=x.astype(jnp.uint8))
  assert "expects float inputs; input 'image' has dtype uint8" in str(e.value)
  assert "fer_jax.train.preprocess.preprocess_images" in str(e.value)


# ----------------------------------------------------------------------------------------------------
# End to end (subprocesses; slow).
# ----------------------------------------------------------------------------------------------------

LINE = "Preempted at step {step}: saved checkpoint {dir}/{step}; rerun the same command to resume."


@pytest.fixture(scope="module")
def toy_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("toy_data"))


def _env(data_dir, **extra):
  return dict(os.environ, TOY_DATA_DIR=data_dir, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
              PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
              XLA_FLAGS="--xla_force_host_platform_device_count=1", **extra)


def _driver(workdir, steps, data_dir, **env):
  cmd = [sys.executable, str(HERE / "train_driver.py"), str(workdir), str(steps)]
  return subprocess.run(cmd, env=_env(data_dir, **env), capture_output=True, text=True, timeout=900)


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(pathlib.Path(workdir) / "checkpoints") if d.isdigit())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toy_data_dir):
  workdir = tmp_path_factory.mktemp("straight")
  check_ok(_driver(workdir, 10, toy_data_dir))
  return workdir


@pytest.mark.slow
def test_sigterm_saves_then_resume_is_bit_identical(tmp_path, toy_data_dir, straight):
  w = tmp_path / "w"
  # 1. SIGTERM during step 4: the run saves at the next step boundary (5) and exits 0.
  p = check_ok(_driver(w, 10, toy_data_dir, TOY_SIGNAL_AT_STEP="4"))
  assert LINE.format(step=5, dir=w / "checkpoints") in p.stdout.splitlines()
  assert _steps(w) == [3, 5]
  assert not (w / "final_params.npz").exists() and not (w / workdir_lib.LOCK_NAME).exists()
  metrics = json.loads((w / "metrics.json").read_text())
  assert metrics["preempted_at_step"] == 5 and [s for s, _ in metrics["train_loss_log"]] == [1, 2, 3, 4, 5]
  # 2. Two SIGTERMs during step 7: the second ends the process at once (no save of 7, and the async save
  # of 6 may be cut short: then the last complete checkpoint is 5); the lock stays behind.
  p = _driver(w, 10, toy_data_dir, TOY_SIGNAL_AT_STEP="7", TOY_SIGNAL_COUNT="2")
  assert p.returncode == -signal.SIGTERM, p.stderr[-3000:]
  assert "Preempted" not in p.stdout
  assert _steps(w) in ([3, 5], [3, 5, 6]) and (w / workdir_lib.LOCK_NAME).exists()
  resumed = _steps(w)[-1]
  # 3. A rerun replaces the stale lock, resumes and ends where an uninterrupted run does.
  p = check_ok(_driver(w, 10, toy_data_dir))
  assert "Replacing the stale work dir lock" in p.stderr and "is no longer running" in p.stderr
  a, b = final_params(straight), final_params(w)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  metrics = json.loads((w / "metrics.json").read_text())
  assert [s for s, _ in metrics["train_loss_log"]] == list(range(1, 11))
  assert [(r["start_step"], r["end_step"], r["preempted"]) for r in metrics["runs"]] == [
      (0, 5, True), (resumed, 10, False)]
  la = dict(map(tuple, json.loads((straight / "result.json").read_text())["loss_log"]))
  for s, v in metrics["train_loss_log"]:
    if s > resumed or s <= 5:
      assert la[s] == v, s  # the same batches and states as the uninterrupted run


@pytest.mark.slow
def test_ctrl_c_during_an_async_save_finishes_it_and_exits_0(tmp_path, toy_data_dir):
  w = tmp_path / "w"
  # SIGINT just before the save of step 3 starts (asynchronously): step 4 waits for it, saves, exits 0.
  p = check_ok(_driver(w, 10, toy_data_dir, TOY_SIGNAL_AT_STEP="3", TOY_SIGNAL="INT"))
  assert LINE.format(step=4, dir=w / "checkpoints") in p.stdout.splitlines()
  assert "Traceback" not in p.stderr and "KeyboardInterrupt" not in p.stderr
  assert _steps(w) == [3, 4]


@pytest.mark.slow
def test_second_start_in_the_same_workdir_is_refused(tmp_path, toy_data_dir):
  w = tmp_path / "w"
  first = subprocess.Popen([sys.executable, str(HERE / "train_driver.py"), str(w), "100000"],
                           env=_env(toy_data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 600
    while not ((w / "checkpoints" / "3").is_dir() and (w / workdir_lib.LOCK_NAME).exists()):
      assert first.poll() is None and time.time() < deadline, "the first run did not start training"
      time.sleep(0.5)
    second = _driver(w, 10, toy_data_dir)
    assert second.returncode != 0
    assert (f"is in use by another run (host {socket.gethostname()}, pid {first.pid}, started "
            in second.stderr), second.stderr[-3000:]
    assert first.poll() is None  # unaffected
    lock = json.loads((w / workdir_lib.LOCK_NAME).read_text())
    assert lock["pid"] == first.pid
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert first.returncode == 0, err[-3000:]
  lines = [line for line in out.splitlines() if line.startswith("Preempted at step ")]
  assert len(lines) == 1
  step = int(lines[0].split()[3].rstrip(":"))
  assert lines[0] == LINE.format(step=step, dir=w / "checkpoints")
  assert _steps(w)[-1] == step and not (w / workdir_lib.LOCK_NAME).exists()


@pytest.mark.slow
def test_resume_with_other_model_dims_names_the_field_and_parameters(tmp_path, toy_data_dir):
  w = tmp_path / "w"
  check_ok(_driver(w, 3, toy_data_dir))
  files = {p: p.stat().st_mtime_ns for p in (w / "checkpoints").rglob("*")}
  p = _driver(w, 6, toy_data_dir, TOY_MODEL_DIMS="8,16,16,32")
  assert p.returncode != 0
  err = p.stderr
  assert "CheckpointMismatchError" in err
  assert f"The checkpoint at {w / 'checkpoints' / '3'} (step 3) does not fit the state this config builds" in err
  assert "model.backbone.dims: [8, 16, 16, 16] -> [8, 16, 16, 32]" in err
  assert "num_train_steps: 3 -> 6" in err
  assert "does not fit the state this config builds: 56 array(s) differ:\n" \
         "  params.backbone.head_norm.bias: shape (16,) in the checkpoint vs (32,) in the config\n" in err
  assert "  params.head.dense.kernel: shape (16, 4) in the checkpoint vs (32, 4) in the config\n" in err
  assert len(err.splitlines()) < 200  # no pages of orbax noise from a half-done restore
  assert ("The checkpoints are valid for the old config; use a new --workdir or restore the old config."
          in err)
  assert "move that directory away" not in err
  assert {p: p.stat().st_mtime_ns for p in (w / "checkpoints").rglob("*")} == files
  assert not (w / workdir_lib.LOCK_NAME).exists()
  assert json.loads((w / "config.json").read_text())["model"]["backbone"]["dims"] == [8, 16, 16, 16]
