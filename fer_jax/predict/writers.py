"""The output table of ``fer-jax predict``: its columns, and CSV / JSON-lines / Parquet writers that append
rows as they come (CSV and JSONL flushed per batch, Parquet one row group per batch), so that a run that
stops part-way keeps every row written before.

One row per face found, per frame without a face, and per input that failed:

================  =========  =====================================================================
column            type       meaning
================  =========  =====================================================================
source            str        the input file, as discovered
frame             int        0-based frame index in a video (decoded-frame count); empty for an image
time_s            float      the frame's presentation time in seconds; empty for an image
face              int        0-based face index in the frame (detector score order); -1: no face
track             int        face id, the same for one face across a video's frames (IoU tracking),
                             unique across the run; -1: no face
status            str        ``ok`` (a face), ``no_face`` (a frame without a face), ``error``
error             str        what went wrong (``status`` error), else empty
x0, y0, x1, y1    float      the face box in frame pixels (the whole frame with ``--no-detect``)
det_score         float      the detector's confidence; empty with ``--no-detect``
le_x, le_y        float      landmark: image-left eye centre, frame pixels
re_x, re_y        float      landmark: image-right eye centre
nose_x, nose_y    float      landmark: nose tip
lm_x, lm_y        float      landmark: image-left mouth corner
rm_x, rm_y        float      landmark: image-right mouth corner
p_<class>         float      the model's probability of each class (rows sum to 1)
label             str        the class of highest probability; empty when no face
valence, arousal  float      only for models that predict them (in [-1, 1])
================  =========  =====================================================================

With ``--no-detect`` the landmarks are the alignment template's points mapped onto the frame.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

LANDMARK_COLUMNS = ("le_x", "le_y", "re_x", "re_y", "nose_x", "nose_y", "lm_x", "lm_y", "rm_x", "rm_y")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
AFFECT_COLUMNS = ("valence", "arousal")
INT_COLUMNS = frozenset({"frame", "face", "track"})
STR_COLUMNS = frozenset({"source", "status", "error", "label"})
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def columns(class_names: Sequence[str], affect: bool = False) -> list[str]:
  """The table's columns for a model with these classes (and valence / arousal outputs)."""
  cols = ["source", "frame", "time_s", "face", "track", "status", "error", *BOX_COLUMNS, "det_score",
          *LANDMARK_COLUMNS, *(f"p_{c}" for c in class_names), "label"]
  return cols + list(AFFECT_COLUMNS) if affect else cols


def empty_row(cols: Sequence[str]) -> dict[str, Any]:
  """A row with every value missing (None), strings empty."""
  return {c: ("" if c in STR_COLUMNS else None) for c in cols}


def _clean(v: Any) -> Any:
  """NaN -> None; NumPy scalars -> Python."""
  if v is None or isinstance(v, str):
    return v
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


def format_of(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise ValueError(f"output {path!r}: unknown extension {ext!r}; expected one of {sorted(FORMATS)}")
  return FORMATS[ext]


class TableWriter:
  """Appends rows (dicts over ``columns``) to a file; ``close`` (or the context manager) finishes it."""

  def __init__(self, path: str, cols: Sequence[str]):
    self.path, self.columns, self.rows_written = path, list(cols), 0

  def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
      self._write([[_clean(r.get(c)) for c in self.columns] for r in rows])
      self.rows_written += len(rows)

  def _write(self, values: list[list[Any]]) -> None:
    raise NotImplementedError

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class CsvWriter(TableWriter):
  """Header, then rows; floats written by ``repr`` (exact round trip), missing values empty."""

  def __init__(self, path: str, cols: Sequence[str]):
    super().__init__(path, cols)
    self._file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 -- closed in close()
    self._csv = csv.writer(self._file)
    self._csv.writerow(self.columns)
    self._file.flush()

  def _write(self, values):
    self._csv.writerows([["" if v is None else v for v in row] for row in values])
    self._file.flush()

  def close(self):
    if not self._file.closed:
      self._file.close()


class JsonlWriter(TableWriter):
  """One JSON object per line; missing values null."""

  def __init__(self, path: str, cols: Sequence[str]):
    super().__init__(path, cols)
    self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 -- closed in close()

  def _write(self, values):
    self._file.write("".join(json.dumps(dict(zip(self.columns, row)), allow_nan=False) + "\n"
                             for row in values))
    self._file.flush()

  def close(self):
    if not self._file.closed:
      self._file.close()


class ParquetWriter(TableWriter):
  """pyarrow ``ParquetWriter``, one row group per ``write``; readable once closed (the footer is written by
  ``close``, which the predict loop calls on errors too)."""

  def __init__(self, path: str, cols: Sequence[str]):
    super().__init__(path, cols)
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    self._pa = pa
    self.schema = pa.schema([(c, pa.string() if c in STR_COLUMNS else pa.int64() if c in INT_COLUMNS
                              else pa.float64()) for c in self.columns])
    self._writer = pq.ParquetWriter(path, self.schema)

  def _write(self, values):
    arrays = [self._pa.array([row[i] for row in values], type=self.schema.field(i).type)
              for i in range(len(self.columns))]
    self._writer.write_table(self._pa.Table.from_arrays(arrays, schema=self.schema))

  def close(self):
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def open_writer(path: str, cols: Sequence[str], *, overwrite: bool = False) -> TableWriter:
  """A writer for ``path`` by its extension (.csv, .jsonl, .parquet); an existing file is an error unless
  ``overwrite``."""
  fmt = format_of(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"output {path!r} exists; pass --overwrite (overwrite=True) to replace it")
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  return {"csv": CsvWriter, "jsonl": JsonlWriter, "parquet": ParquetWriter}[fmt](path, cols)


def to_dataframe(rows: Sequence[Mapping[str, Any]], cols: Sequence[str], index: Optional[Any] = None):
  """Rows -> pandas DataFrame: int columns nullable ``Int64``, floats ``float64`` (NaN when missing),
  strings ``object``."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  data = {}
  for c in cols:
    values = [_clean(r.get(c)) for r in rows]
    if c in STR_COLUMNS:
      data[c] = pd.Series(["" if v is None else v for v in values], dtype=object)
    elif c in INT_COLUMNS:
      data[c] = pd.Series(values, dtype="Int64")
    else:
      data[c] = pd.Series([math.nan if v is None else v for v in values], dtype="float64")
  return pd.DataFrame(data, columns=list(cols), index=index)
