"""End-to-end trainer tests in subprocesses: 1 vs 8 devices, bit-identical resume after SIGKILL.

Each run is ``tests/train_driver.py`` on the ``toy_blobs`` dataset (tests/toy_blobs.py).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_driver import check_ok, final_params  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


@pytest.fixture(scope="module")
def toy_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("toy_data"))


def _run(workdir, steps, data_dir, devices=1, kill_after=None, fsdp=1):
  env = dict(os.environ, TOY_DATA_DIR=data_dir, TOY_FSDP=str(fsdp), TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, str(HERE / "train_driver.py"), str(workdir), str(steps)]
  if kill_after is not None:
    cmd.append(str(kill_after))
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  return proc


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toy_data_dir):
  """An uninterrupted 10-step run on 1 device."""
  workdir = tmp_path_factory.mktemp("straight")
  check_ok(_run(workdir, 10, toy_data_dir))
  return workdir


# data2_fsdp4 shards the batch over both mesh axes, so it covers pure data parallelism too; data8 is slow.
@pytest.mark.parametrize("fsdp", [pytest.param(1, marks=pytest.mark.slow), 4], ids=["data8", "data2_fsdp4"])
def test_one_and_eight_devices_give_the_same_losses(tmp_path, toy_data_dir, straight, fsdp):
  """Same global batch on 1 device and on 8 (pure data parallel, or 2-way data x 4-way FSDP)."""
  check_ok(_run(tmp_path / "d8", 10, toy_data_dir, devices=8, fsdp=fsdp))
  r1 = json.loads((straight / "result.json").read_text())
  r8 = json.loads((tmp_path / "d8" / "result.json").read_text())
  assert (r1["devices"], r8["devices"]) == (1, 8)
  l1, l8 = np.array(r1["loss_log"]), np.array(r8["loss_log"])
  assert l1.shape == (10, 2)
  np.testing.assert_allclose(l1, l8, rtol=2e-5)
  p1, p8 = final_params(straight), final_params(tmp_path / "d8")
  assert p1.keys() == p8.keys()
  for k in p1:
    np.testing.assert_allclose(p1[k], p8[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_resume_after_kill_is_bit_identical(tmp_path, toy_data_dir, straight):
  killed = tmp_path / "killed"
  proc = _run(killed, 10, toy_data_dir, kill_after=6)
  assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}: {proc.stderr[-2000:]}"
  assert sorted(os.listdir(killed / "checkpoints"))[-1] == "6"
  assert not (killed / "final_params.npz").exists()
  check_ok(_run(killed, 10, toy_data_dir))  # resumes from step 6 by itself
  a, b = final_params(straight), final_params(killed)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical
  # The losses after the restart are the ones the uninterrupted run saw: same batches, same state.
  la = dict(map(tuple, json.loads((straight / "result.json").read_text())["loss_log"]))
  lb = dict(map(tuple, json.loads((killed / "result.json").read_text())["loss_log"]))
  assert sorted(lb) == [7, 8, 9, 10]
  for s in lb:
    assert la[s] == lb[s], s
