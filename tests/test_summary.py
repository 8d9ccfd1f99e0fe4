"""fer_jax.train.summary: TensorBoard events written without TensorFlow, read back by TensorBoard's reader."""

import glob
import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from fer_jax.testing import HIDE_TENSORFLOW
from fer_jax.train import summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prepended to subprocess code: tensorflow is hidden as if it were not installed. sys.path's finder
# does not find tensorflow / tensorflow.*: `import tensorflow` raises ModuleNotFoundError and
# importlib.util.find_spec("tensorflow") is None (a finder that raised ImportError instead would break
# flax.io and etils.epath, which probe for TensorFlow with find_spec).
def run_without_tensorflow(code: str) -> subprocess.CompletedProcess:
  proc = subprocess.run([sys.executable, "-c", HIDE_TENSORFLOW + textwrap.dedent(code)],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
  return proc


def load_events(logdir: str) -> event_accumulator.EventAccumulator:
  files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  assert len(files) == 1, files
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={
      event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def decode_png(image_event) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)))


def hparams_of(acc) -> dict:
  content = acc.PluginTagToContent("hparams")
  assert list(content) == ["_hparams_/session_start_info"]
  data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
  return {k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}


def test_scalars_images_texts_hparams_read_back(tmp_path):
  logdir = str(tmp_path)
  rgb = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
  grey = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(1, 3, 4, 1)
  with summary.create_writer(logdir) as writer:
    writer.write_hparams({"lr": 0.5, "steps": 7, "name": "convnext", "ema": True, "shape": (1, 2)})
    writer.write_scalars(1, {"train/loss": 2.5, "train/acc": np.float32(0.25)})
    writer.write_scalars(3, {"train/loss": np.array(1.25)})
    writer.write_images(3, {"cm": rgb, "grey": grey})
    writer.write_texts(4, {"note": "hello"})
    writer.flush()
  acc = load_events(logdir)

  assert sorted(acc.Tags()["scalars"]) == ["train/acc", "train/loss"]
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5), (3, 1.25)]
  assert [(e.step, e.value) for e in acc.Scalars("train/acc")] == [(1, 0.25)]

  # N > 1: one tag per image; grey is stored as RGB with equal channels; floats scale by 255.
  assert sorted(acc.Tags()["images"]) == ["cm/0", "cm/1", "grey"]
  for i in range(2):
    (event,) = acc.Images(f"cm/{i}")
    assert (event.step, event.width, event.height) == (3, 5, 4)
    np.testing.assert_array_equal(decode_png(event), rgb[i])
  (event,) = acc.Images("grey")
  expected = np.round(grey[0] * 255).astype(np.uint8)
  np.testing.assert_array_equal(decode_png(event), np.repeat(expected, 3, axis=-1))

  (text,) = acc.Tensors("note/text_summary")
  assert text.step == 4 and list(text.tensor_proto.string_val) == [b"hello"]

  assert hparams_of(acc) == {"lr": 0.5, "steps": 7.0, "name": "convnext", "ema": True,
                             "shape": "(1, 2)"}


def test_each_write_is_on_disk_before_flush_or_close(tmp_path):
  writer = summary.create_writer(str(tmp_path))
  writer.write_scalars(1, {"a": 1.0})
  writer.write_images(1, {"img": np.zeros((1, 2, 2, 3), np.uint8)})
  acc = load_events(str(tmp_path))
  assert [(e.step, e.value) for e in acc.Scalars("a")] == [(1, 1.0)]
  assert [e.step for e in acc.Images("img")] == [1]
  writer.close()


def test_two_writers_in_one_second_keep_both_files(tmp_path):
  first, second = summary.create_writer(str(tmp_path)), summary.create_writer(str(tmp_path))
  first.write_scalars(1, {"a": 1.0})
  second.write_scalars(2, {"b": 2.0})
  first.close()
  second.close()
  files = sorted(glob.glob(os.path.join(str(tmp_path), "events.out.tfevents.*")))
  assert len(files) == 2, files
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("a")] == [(1, 1.0)]
  assert [(e.step, e.value) for e in acc.Scalars("b")] == [(2, 2.0)]


def test_float_images_are_clipped_and_bad_images_rejected(tmp_path):
  with summary.create_writer(str(tmp_path)) as writer:
    writer.write_images(0, {"img": np.array([-1.0, 0.5, 2.0], np.float32).reshape(1, 1, 3, 1)})
    with pytest.raises(ValueError, match=r"'hw' must be an \(N, H, W, C\) array.*\(4, 4\)"):
      writer.write_images(0, {"hw": np.zeros((4, 4), np.uint8)})
    with pytest.raises(ValueError, match=r"'c2' must be .* got shape \(1, 4, 4, 2\)"):
      writer.write_images(0, {"c2": np.zeros((1, 4, 4, 2), np.uint8)})
    with pytest.raises(ValueError, match="'i32' must be uint8 or float in \\[0, 1\\]; got dtype int32"):
      writer.write_images(0, {"i32": np.zeros((1, 4, 4, 3), np.int32)})
    with pytest.raises(ValueError, match=r"Expected a scalar, got an array of shape \(2,\)"):
      writer.write_scalars(0, {"v": np.zeros(2)})
  (event,) = load_events(str(tmp_path)).Images("img")
  np.testing.assert_array_equal(decode_png(event)[..., 0], [[0, 128, 255]])


def test_just_logging_writes_no_files_and_logs(tmp_path, caplog):
  logdir = str(tmp_path / "w")
  with caplog.at_level(logging.INFO):
    with summary.create_writer(logdir, just_logging=True) as writer:
      writer.write_scalars(5, {"b": 2.0, "a": 0.125})
      writer.write_images(5, {"img": np.zeros((1, 2, 2, 3), np.uint8)})
      writer.write_hparams({"lr": 0.1})
  assert not os.path.exists(logdir)
  messages = [r.getMessage() for r in caplog.records]
  assert "[5] a=0.125, b=2" in messages
  assert "[5] images: img (1, 2, 2, 3)" in messages
  assert "hparams: lr=0.1" in messages


def test_writes_and_reads_events_where_tensorflow_cannot_be_imported(tmp_path):
  proc = run_without_tensorflow(f"""
      import importlib.util
      import json
      import numpy as np
      assert importlib.util.find_spec("tensorflow") is None
      try:
        import tensorflow  # noqa: F401
      except ModuleNotFoundError:
        pass
      else:
        raise AssertionError("tensorflow imported")
      from fer_jax.train import summary
      with summary.create_writer({str(tmp_path)!r}) as w:
        w.write_scalars(2, {{"loss": 0.5}})
        w.write_images(2, {{"img": np.full((1, 2, 3, 3), 7, np.uint8)}})
        w.write_hparams({{"lr": 0.1}})
      from tensorboard.backend.event_processing import event_accumulator
      acc = event_accumulator.EventAccumulator({str(tmp_path)!r})
      acc.Reload()
      print(json.dumps({{
          "loss": [(e.step, e.value) for e in acc.Scalars("loss")],
          "images": [(e.step, e.width, e.height) for e in acc.Images("img")],
          "tf_modules": sorted(m for m in sys.modules
                               if m == "tensorflow" or m.startswith("tensorflow."))}}))
      """)
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out == {"loss": [[2, 0.5]], "images": [[2, 3, 2]], "tf_modules": []}
