"""Clip windows, per-frame averaging, Aff-Wild-style scoring and the affect trainer end to end."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_utils
from fer_jax.data import clips
from fer_jax.evaluators import affect as affect_eval
from fer_jax.train.tasks import affect as affect_task

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def test_window_indices_hand_cases():
  np.testing.assert_array_equal(clips.window_indices(6, 3, 1, 2), [[0, 1, 2], [2, 3, 4], [3, 4, 5]])
  np.testing.assert_array_equal(clips.window_indices(5, 2, 2, 1), [[0, 2], [1, 3], [2, 4]])
  np.testing.assert_array_equal(clips.window_indices(4, 1), [[0], [1], [2], [3]])
  with pytest.raises(ValueError, match="miss frames"):
    clips.window_indices(7, 2, 3, 3)
  with pytest.raises(ValueError, match="spans 7 frames"):
    clips.window_indices(6, 4, 2, 1)


def test_average_overlapping_matches_numpy_loop():
  rng = np.random.default_rng(0)
  idx = clips.window_indices(9, 4, 2, 1)
  preds = rng.normal(size=(3,) + idx.shape + (2,)).astype(np.float32)
  got = np.asarray(clips.average_overlapping(jnp.asarray(preds), idx, 9))
  want = np.zeros((3, 9, 2))
  count = np.zeros(9)
  for w, frames in enumerate(idx):
    for t, f in enumerate(frames):
      want[:, f] += preds[:, w, t]
      count[f] += 1
  np.testing.assert_allclose(got, want / count[None, :, None], rtol=1e-6)


def _task(sequence: bool, window=3, stride=1, hop=1):
  c = config_utils.base_config()
  c.task = "affect"
  c.input.update(resize=None, crop=None, channels=1)
  c.affect = config_utils.affect_config(window=window, stride=stride, eval_hop=hop)
  task = affect_task.AffectTask(c)
  task.bind_model(("frames",) if sequence else ("image",))
  return task


def _predict(task, fake_model, batch):
  """The task's predict with ``fake_model`` on the model input (clips or frames)."""
  def apply_fn(b):
    (x,) = task.model_inputs(b, task.input_names).values()
    return {"valence_arousal": fake_model(x)}
  return task.predict(apply_fn, batch)


def test_eval_step_averages_windows_of_a_sequence_model():
  # A fake sequence model whose output for frame t of a window is (frame brightness, t): the
  # per-frame result is then (brightness, mean position of that frame over the windows holding it).
  task = _task(True, window=3, stride=2, hop=1)
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 255, (2, 8, 4, 4, 1)).astype(np.uint8)
  batch = {"frames": jnp.asarray(frames), "targets": jnp.zeros((2, 8, 2)), "mask": jnp.ones((2, 8), bool),
           "video": jnp.arange(2), "frame_index": jnp.tile(jnp.arange(8), (2, 1))}

  def fake_model(x):  # (N, T, h, w, c) -> (N, T, 2)
    n, t = x.shape[:2]
    return jnp.stack([x.mean((2, 3, 4)), jnp.broadcast_to(jnp.arange(t, dtype=jnp.float32), (n, t))], -1)

  out = np.asarray(_predict(task, fake_model, batch)["predictions"])
  np.testing.assert_allclose(out[..., 0], frames.astype(np.float32).mean((2, 3, 4)) / 255.0, rtol=1e-5)
  idx = clips.window_indices(8, 3, 2, 1)  # starts 0..3: [[0,2,4],[1,3,5],[2,4,6],[3,5,7]]
  positions = {f: [t for w in idx for t, g in enumerate(w) if g == f] for f in range(8)}
  want = [np.mean(positions[f]) for f in range(8)]
  np.testing.assert_allclose(out[0, :, 1], want, rtol=1e-6)
  assert want[4] == 1.5 and want[0] == 0.0 and want[7] == 2.0  # frame 4: 3rd of [0,2,4], 2nd of [2,4,6]


def test_frame_model_is_evaluated_once_per_frame():
  task = _task(False, window=4)
  calls = []

  def fake_model(x):  # (N, h, w, c) -> (N, 2)
    calls.append(x.shape)
    return jnp.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], -1)

  frames = np.random.default_rng(2).integers(0, 255, (3, 5, 4, 4, 1)).astype(np.uint8)
  batch = {"frames": jnp.asarray(frames), "targets": jnp.zeros((3, 5, 2)), "mask": jnp.ones((3, 5), bool),
           "video": jnp.arange(3), "frame_index": jnp.tile(jnp.arange(5), (3, 1))}
  out = np.asarray(_predict(task, fake_model, batch)["predictions"])
  assert calls == [(15, 4, 4, 1)]
  np.testing.assert_allclose(out[..., 0], frames.astype(np.float32).mean((2, 3, 4)) / 255.0, rtol=1e-5)


def test_dedupe_averages_repeated_frames_and_rejects_conflicting_labels():
  video = np.array([7, 7, 7, 3, 7])
  frame = np.array([0, 1, 0, 0, 1])
  pred = np.array([[1.0, 0], [2, 0], [3, 0], [4, 0], [6, 0]])
  lab = np.array([[0.5, 0], [0.1, 0], [0.5, 0], [0.2, 0], [0.1, 0]])
  v, f, p, y = affect_eval.dedupe_frames(video, frame, pred, lab)
  np.testing.assert_array_equal(v, [3, 7, 7])
  np.testing.assert_array_equal(f, [0, 0, 1])
  np.testing.assert_allclose(p[:, 0], [4, 2, 4])
  np.testing.assert_allclose(y[:, 0], [0.2, 0.5, 0.1])
  lab[2, 0] = 0.6
  with pytest.raises(ValueError, match="different labels"):
    affect_eval.dedupe_frames(video, frame, pred, lab)


def _np_scores(p, y):
  mp, my = p.mean(), y.mean()
  vp, vy = ((p - mp) ** 2).mean(), ((y - my) ** 2).mean()
  cov = ((p - mp) * (y - my)).mean()
  return {"rmse": np.sqrt(((p - y) ** 2).mean()), "pcc": cov / np.sqrt(vp * vy),
          "ccc": 2 * cov / (vp + vy + (mp - my) ** 2), "sagr": np.mean(np.sign(p) == np.sign(y))}


def test_affect_scores_pooled_and_per_video_match_numpy():
  rng = np.random.default_rng(3)
  n = 500
  video = rng.integers(0, 4, n)
  y = np.clip(rng.normal(0, 0.5, (n, 2)), -1, 1)
  p = np.clip(0.7 * y + rng.normal(0, 0.3, (n, 2)) + 0.1 * video[:, None], -1, 1)
  s = affect_eval.affect_scores(p, y, video, ("valence", "arousal"))
  # The scores stream through the clu metric AffectMoments in float32 (JAX without x64): centred
  # moments of n <= 500 values in [-1, 1] carry a relative error of order n * 2^-24 = 3e-5 at worst.
  for d, name in enumerate(("valence", "arousal")):
    want = _np_scores(p[:, d], y[:, d])
    for k in affect_eval.METRICS:
      assert s["pooled"][name][k] == pytest.approx(want[k], rel=3e-5, abs=1e-6)
    per = [_np_scores(p[video == v, d], y[video == v, d]) for v in range(4)]
    for k in affect_eval.METRICS:
      assert s["video_mean"][name][k] == pytest.approx(np.mean([q[k] for q in per]), rel=3e-5, abs=1e-6)
      assert s["per_video"][2][name][k] == pytest.approx(per[2][k], rel=3e-5, abs=1e-6)
  assert s["num_frames"] == n and s["num_videos"] == 4


def _cli(*args, timeout=900):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-m", "fer_jax.main", *args], env=env, capture_output=True,
                        text=True, timeout=timeout, cwd=str(ROOT))


@pytest.mark.parametrize("option,steps", [("", 150), ("sequence", 60)])
def test_affect_training_from_the_cli(tmp_path, option, steps):
  import toy_clips
  workdir = tmp_path / "run"
  config = str(ROOT / "tests" / "affect_toy_config.py") + f":steps={steps}" + (f",{option}" if option else "")
  p = _cli("train", f"--config={config}", f"--config.dataset.data_dir={tmp_path}/data",
           f"--workdir={workdir}")
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"step {steps}/{steps}" in p.stderr and "ccc_valence" in p.stderr and "ETA" in p.stderr
  assert "FINAL validation: valence: CCC" in p.stdout
  metrics = json.loads((workdir / "metrics.json").read_text())["validation"]
  pred = np.load(workdir / "predictions_validation.npz", allow_pickle=False)
  # Every labelled validation frame exactly once, with its label from the generator.
  want = {}
  for v in range(3):
    _, val, aro, mask = toy_clips.video_frames(1, v, 23)
    for f in np.flatnonzero(mask):
      want[(f"video_1_{v}", int(f))] = (val[f], aro[f])
  got = list(zip(pred["video"].tolist(), pred["frame_index"].tolist()))
  assert len(got) == len(set(got)) == len(want) == metrics["num_frames"]
  labels = np.array([want[k] for k in got])
  np.testing.assert_allclose(pred["labels"], labels, rtol=1e-6)
  # The reported pooled metrics are those of the saved predictions.
  for d, name in enumerate(("valence", "arousal")):
    ref = _np_scores(pred["predictions"][:, d], labels[:, d])
    for k in affect_eval.METRICS:
      assert metrics["pooled"][name][k] == pytest.approx(ref[k], rel=3e-5, abs=1e-6)
  assert metrics["num_videos"] == 3 and set(metrics["per_video"]) == {f"video_1_{v}" for v in range(3)}
  assert (workdir / "va_scatter_validation.png").stat().st_size > 1000
  assert (workdir / "va_timeseries_validation.png").stat().st_size > 1000
  if not option:  # the frame model learns the rendered function
    assert metrics["pooled"]["valence"]["ccc"] > 0.6, metrics["pooled"]
