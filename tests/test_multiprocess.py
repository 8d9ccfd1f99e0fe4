"""Two ``jax.distributed`` processes on localhost (CPU, 4 simulated devices each) vs one process with 8.

Every run is ``tests/multiprocess_driver.py`` (``train_driver.toy_config`` on ``toy_blobs``) in its own
subprocess(es); the coordinator listens on 127.0.0.1 only and CPU cross-process collectives use gloo.
The runs keep the toy config's augmentation and drop path: ``pipeline.train_dataset`` draws every
example's order and augmentation from the single-process stream and gives process p block p of each
global batch, so the global batch, and with it the drop-path masks, are those of the 1-process run.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DRIVER = HERE / "multiprocess_driver.py"
STEPS = 10
TIMEOUT = 420


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(data_dir, devices):
  return dict(os.environ, TOY_DATA_DIR=str(data_dir), TOY_FSDP="1", TF_CPP_MIN_LOG_LEVEL="2",
              JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _launch(workdir, data_dir, processes, extra=(), devices_total=8):
  """Runs the driver as ``processes`` processes of one job; kills them all on timeout or failure."""
  os.makedirs(workdir, exist_ok=True)
  port = _free_port()
  procs, logs = [], []
  for i in range(processes):
    cmd = [sys.executable, str(DRIVER), str(workdir), str(STEPS), *map(str, extra)]
    if processes > 1:
      cmd += ["--num-processes", str(processes), "--process-id", str(i), "--port", str(port)]
    log = open(os.path.join(workdir, f"log-{i}.txt"), "w")
    logs.append(log)
    procs.append(subprocess.Popen(cmd, env=_env(data_dir, devices_total // processes), stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True))
  deadline = time.time() + TIMEOUT
  try:
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed or time.time() > deadline:
        break  # one died (the others would wait on it for their collectives) or timed out
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for log in logs:
      log.close()
  codes = [p.returncode for p in procs]
  if codes != [0] * processes:
    tails = "\n".join(f"--- process {i} (rc {c}):\n"
                      + pathlib.Path(workdir, f"log-{i}.txt").read_text()[-3000:]
                      for i, c in enumerate(codes))
    raise AssertionError(f"driver failed (return codes {codes}):\n{tails}")
  return [json.loads(pathlib.Path(workdir, f"result-{i}.json").read_text()) for i in range(processes)]


def _params(workdir):
  with np.load(os.path.join(workdir, "final_params.npz")) as f:
    return {k: f[k] for k in f.files}


def _assert_same_params(a_dir, b_dir):
  a, b = _params(a_dir), _params(b_dir)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)


def _assert_same_losses(log_a, log_b, steps=None):
  la, lb = np.array(log_a), np.array(log_b)
  if steps is not None:
    la = la[np.isin(la[:, 0], steps)]
  assert la.shape == lb.shape, (la, lb)
  np.testing.assert_array_equal(la[:, 0], lb[:, 0])
  np.testing.assert_allclose(la[:, 1], lb[:, 1], rtol=2e-5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("toy_data")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir):
  """Uninterrupted 10 steps, 1 process x 8 devices (also prepares the dataset, before any 2-process run:
  two processes preparing the same TFDS directory at once would race)."""
  workdir = tmp_path_factory.mktemp("one_process")
  (r,) = _launch(workdir, data_dir, 1, [])
  assert (r["process_count"], r["devices"]) == (1, 8)
  return workdir, r


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data_dir, one_process):
  workdir = tmp_path_factory.mktemp("two_processes")
  rs = _launch(workdir, data_dir, 2, [])
  for i, r in enumerate(rs):
    assert (r["process_id"], r["process_count"], r["devices"], r["local_devices"]) == (i, 2, 8, 4)
  return workdir, rs


def test_two_processes_match_one_process(one_process, two_processes):
  (d1, r1), (d2, (r2a, r2b)) = one_process, two_processes
  assert len(r1["loss_log"]) == STEPS
  _assert_same_losses(r1["loss_log"], r2a["loss_log"])
  assert r2a["loss_log"] == r2b["loss_log"]  # every process logs the global loss
  _assert_same_params(d1, d2)


def test_each_process_reads_its_own_shard(one_process, two_processes):
  (_, r1), (_, (r2a, r2b)) = one_process, two_processes
  a, b, g = r2a["first_batch"], r2b["first_batch"], r1["first_batch"]
  assert len(a["image_sha1"]) == len(b["image_sha1"]) == 8 and len(g["image_sha1"]) == 16
  assert len(set(g["image_sha1"])) == 16  # the toy images are all distinct
  assert not set(a["image_sha1"]) & set(b["image_sha1"])
  assert set(a["image_sha1"]) | set(b["image_sha1"]) == set(g["image_sha1"])
  # Process p reads block p of the global batch, augmented exactly as the 1-process run augments it.
  assert a["image_sha1"] == g["image_sha1"][:8] and b["image_sha1"] == g["image_sha1"][8:]
  assert a["labels"] == g["labels"][:8] and b["labels"] == g["labels"][8:]


# Both directions are slow (about a minute each on 2 cores); test_two_processes_match_one_process stays default.
@pytest.mark.parametrize("first,second", [pytest.param(2, 1, marks=pytest.mark.slow),
                                          pytest.param(1, 2, marks=pytest.mark.slow)],
                         ids=["2proc_then_1proc", "1proc_then_2proc"])
def test_checkpoint_moves_between_process_counts(tmp_path, data_dir, one_process, first, second):
  """Steps 1-6 with ``first`` processes, checkpoint, steps 7-10 with ``second`` (8 devices in all): the
  sharded arrays, the schedule and the input position (grain's per-process files of the other process
  count, ``checkpoints._data_state_of_other_process_count``) carry over; the run ends as the uninterrupted one."""
  d1, r1 = one_process
  parts = _launch(tmp_path, data_dir, first, ["--stop-after", 6])
  assert all(r["stopped_at"] == 6 for r in parts)
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))[-1] == 6
  files = sorted(os.listdir(tmp_path / "checkpoints" / "6" / "data"))
  assert f"process_0-of-{first}.json" in files and f"process_0-of-{second}.json" not in files
  rest = _launch(tmp_path, data_dir, second, [])
  assert rest[0]["process_count"] == second
  _assert_same_losses(r1["loss_log"], rest[0]["loss_log"], steps=[7, 8, 9, 10])
  _assert_same_params(d1, tmp_path)
