"""fer_jax.predict.writers: CSV / JSONL / Parquet read back by pandas equal the rows written (exact floats,
missing values, awkward strings), rows are on disk after each write, and no silent overwrite."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fer_jax.predict import writers

CLASSES = ["angry", "happy"]


def _rows():
  cols = writers.columns(CLASSES, affect=True)
  rng = np.random.default_rng(0)
  rows = []
  for i in range(5):
    row = writers.empty_row(cols)
    p = rng.random(2).astype(np.float32)
    row.update(source=f"dir/a, \"b\" é {i}.png", frame=i if i % 2 else None, time_s=i / 3 if i % 2 else None,
               face=i - 1, track=i - 1, status="ok" if i else "no_face", x0=np.float32(0.1) * i,
               det_score=math.nan if i == 3 else float(rng.random()), le_x=1e-300 * i,
               p_angry=float(p[0]), p_happy=np.float32(p[1]), label="happy" if i else "", valence=-0.5 * i,
               arousal=None)
    rows.append(row)
  return cols, rows


def _normalise(df: pd.DataFrame, cols) -> pd.DataFrame:
  """Every reader's types -> float for numbers (NaN for missing), str for strings ('' for missing)."""
  out = {}
  for c in cols:
    if c in writers.STR_COLUMNS:
      out[c] = df[c].astype(object).where(df[c].notna(), "").astype(str)
    else:
      out[c] = pd.to_numeric(df[c]).astype("float64")
  return pd.DataFrame(out)


def _read(path):
  if path.endswith(".csv"):
    return pd.read_csv(path)
  if path.endswith(".jsonl"):
    return pd.read_json(path, lines=True, dtype=False, precise_float=True)  # exact floats
  return pd.read_parquet(path)


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_formats_read_back_equal(tmp_path, ext):
  cols, rows = _rows()
  path = str(tmp_path / f"t{ext}")
  with writers.open_writer(path, cols) as w:
    w.write(rows[:2])
    w.write(rows[2:])
  got = _normalise(_read(path), cols)
  expected = _normalise(writers.to_dataframe(rows, cols), cols)
  assert list(got.columns) == cols
  pd.testing.assert_frame_equal(got, expected, check_exact=True)
  # Independent spot checks of the reference itself.
  assert expected["p_happy"][1] == float(np.float32(rows[1]["p_happy"]))
  assert math.isnan(expected["frame"][0]) and expected["frame"][1] == 1
  assert expected["source"][2] == 'dir/a, "b" é 2.png' and expected["label"][0] == ""
  if ext == ".parquet":
    import pyarrow.parquet as pq
    assert pq.ParquetFile(path).num_row_groups == 2
    assert pq.read_schema(path).field("frame").type == "int64"


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_rows_on_disk_after_each_write(tmp_path, ext):
  cols, rows = _rows()
  path = str(tmp_path / f"t{ext}")
  w = writers.open_writer(path, cols)
  w.write(rows[:3])
  assert len(_read(path)) == 3  # before close
  w.write(rows[3:])
  assert len(_read(path)) == 5
  w.close()


def test_no_overwrite_and_unknown_extension(tmp_path):
  cols, rows = _rows()
  path = tmp_path / "t.csv"
  path.write_text("precious\n")
  with pytest.raises(FileExistsError, match=r"t\.csv.*--overwrite"):
    writers.open_writer(str(path), cols)
  assert path.read_text() == "precious\n"
  with writers.open_writer(str(path), cols, overwrite=True) as w:
    w.write(rows[:1])
  assert len(pd.read_csv(path)) == 1
  with pytest.raises(ValueError, match=r"\.xlsx.*\.csv"):
    writers.open_writer(str(tmp_path / "t.xlsx"), cols)


def test_columns():
  assert writers.columns(["a", "b"]) == [
      "source", "frame", "time_s", "face", "track", "status", "error", "x0", "y0", "x1", "y1", "det_score",
      "le_x", "le_y", "re_x", "re_y", "nose_x", "nose_y", "lm_x", "lm_y", "rm_x", "rm_y", "p_a", "p_b", "label"]
  assert writers.columns(["a"], affect=True)[-2:] == ["valence", "arousal"]
