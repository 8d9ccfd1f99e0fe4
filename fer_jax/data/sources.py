"""TFDS data sources: build a registered builder as array_record once, then read it by index.

``data_source('fer2013', 'train', data_dir=..., manual_dir=...)`` prepares the dataset if its files are
not there yet (manual-download datasets read ``manual_dir``; nothing is downloaded) and returns the
random-access source that grain reads.

Manual-file fingerprints: a build prepared from a ``manual_dir`` records what it was made from in
``<build dir>/manual_files.json`` (:data:`FINGERPRINT_FILE`): every regular, non-hidden file under
``manual_dir`` (recursive) with its size, mtime and sha256. Later calls with a ``manual_dir`` compare
the files there against that record and raise a ``ValueError`` naming the differing files, unless
``rebuild=True`` (``--config.dataset.rebuild=True``), which deletes that build (the dataset version
directory only) and prepares it again from the new files. Rules:

* Checking: sizes and mtimes are always compared. Content hashes are compared for every file when the
  manual files total at most :data:`ALWAYS_HASH_BYTES` (64 MiB; the dummy / toy data), else only for
  files whose size is unchanged but whose mtime changed (a copied-over file with the same content
  passes). A file whose size and mtime are both unchanged is taken as unchanged above 64 MiB.
* Hashes: sha256 of the whole file up to :data:`FULL_HASH_BYTES` (64 MiB); above that, sha256 of
  the first and last 8 MiB plus the size (``"hash_kind": "head_tail_8MiB"``). Hashing is streaming.
* A build made before fingerprints existed (no ``manual_files.json``) cannot be verified: a warning is
  logged once per build directory and nothing is written (writing the current files would certify
  files that may not be what the build was made from). ``rebuild=True`` rebuilds it, which writes
  the fingerprint.
* ``rebuild=True`` only rebuilds when the files differ or cannot be verified; a build whose record
  matches is reused (so a config left at ``rebuild=True`` does not rebuild on every run).
* Without ``manual_dir`` (or for datasets with no manual download, e.g. synthetic_expressions)
  nothing is checked or recorded.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from typing import Any, Optional

from absl import logging

FINGERPRINT_FILE = "manual_files.json"
FINGERPRINT_FORMAT = 1
FULL_HASH_BYTES = 64 << 20  # files up to this size are hashed whole
HEAD_TAIL_BYTES = 8 << 20  # larger files: first and last 8 MiB, plus the size
ALWAYS_HASH_BYTES = 64 << 20  # manual files totalling up to this: always compare hashes
_MAX_LISTED = 20  # differing files listed in an error, then "... and N more"
_CHUNK = 1 << 20

_warned_unverified: set = set()


def _register_builders() -> None:
  import tfds_builders  # noqa: F401  (importing registers every builder of this repo)


# ------------------------------------------------------------------------------------ fingerprints ----


def _is_hidden(name: str) -> bool:
  return name.startswith(".")


def _scan(manual_dir: str) -> dict:
  """{relative posix path: {'size', 'mtime_ns'}} of every regular, non-hidden file under manual_dir."""
  out = {}
  for root, dirs, files in os.walk(manual_dir, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
    for name in sorted(files):
      if _is_hidden(name):
        continue
      path = os.path.join(root, name)
      if not os.path.isfile(path):  # broken link, socket, ...
        continue
      st = os.stat(path)
      rel = os.path.relpath(path, manual_dir).replace(os.sep, "/")
      out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
  return out


def file_hash(path: str, size: Optional[int] = None) -> tuple:
  """(hash_kind, hex sha256): of the whole file up to FULL_HASH_BYTES, else of its head + tail + size."""
  size = os.path.getsize(path) if size is None else size
  h = hashlib.sha256()

  def feed(f, n):
    while n > 0:
      chunk = f.read(min(_CHUNK, n))
      if not chunk:
        break
      h.update(chunk)
      n -= len(chunk)

  with open(path, "rb") as f:
    if size <= FULL_HASH_BYTES:
      feed(f, size)
      return "full", h.hexdigest()
    feed(f, HEAD_TAIL_BYTES)
    f.seek(size - HEAD_TAIL_BYTES)
    feed(f, HEAD_TAIL_BYTES)
    h.update(str(size).encode())
    return f"head_tail_{HEAD_TAIL_BYTES >> 20}MiB", h.hexdigest()


def manual_files_fingerprint(manual_dir: str) -> dict:
  """The record written to ``<build dir>/manual_files.json`` (see the module docstring)."""
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  files = _scan(manual_dir)
  for rel, entry in files.items():
    entry["hash_kind"], entry["sha256"] = file_hash(os.path.join(manual_dir, rel), entry["size"])
  return {"format": FINGERPRINT_FORMAT, "manual_dir": manual_dir,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "files": files}


def _write_fingerprint(build_dir: str, record: dict) -> None:
  path = os.path.join(build_dir, FINGERPRINT_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _read_fingerprint(build_dir: str) -> Optional[dict]:
  path = os.path.join(build_dir, FINGERPRINT_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
    if not isinstance(record.get("files"), dict):
      raise ValueError("no 'files' mapping")
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read the manual-file record {path} ({type(e).__name__}: {e}); set "
                     "--config.dataset.rebuild=True to rebuild the dataset, or delete that file to "
                     "skip the check.") from None
  return record


def _size(n: int) -> str:
  return f"{n} bytes"


def compare_manual_files(record: dict, manual_dir: str) -> list:
  """Lines describing how the files under ``manual_dir`` differ from ``record`` (empty: same)."""
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  old, new = record["files"], _scan(manual_dir)
  always_hash = sum(e["size"] for e in new.values()) <= ALWAYS_HASH_BYTES
  lines = []
  for rel in sorted(set(old) | set(new)):
    o, n = old.get(rel), new.get(rel)
    if n is None:
      lines.append(f"removed: {rel} (was {_size(o['size'])})")
    elif o is None:
      lines.append(f"added: {rel} ({_size(n['size'])})")
    elif o["size"] != n["size"]:
      lines.append(f"changed: {rel} (size {o['size']} -> {n['size']} bytes)")
    elif always_hash or o.get("mtime_ns") != n["mtime_ns"]:
      kind, digest = file_hash(os.path.join(manual_dir, rel), n["size"])
      if kind == o.get("hash_kind") and digest != o.get("sha256"):
        lines.append(f"changed: {rel} (same size {o['size']} bytes, different content: sha256 "
                     f"{o.get('sha256', '?')[:12]} -> {digest[:12]})")
  return lines


# ---------------------------------------------------------------------------------------- builds ----


def _delete_build(builder, name: str, manual_dir: str) -> None:
  """Deletes the prepared version directory of ``builder`` (and nothing else), after sanity checks."""
  build_dir = os.path.realpath(str(builder.data_dir))
  root = os.path.realpath(str(builder.data_dir_root))
  manual = os.path.realpath(os.path.expanduser(manual_dir))
  problems = []
  if os.path.basename(build_dir) != str(builder.version):
    problems.append(f"its name is not the version {builder.version}")
  if os.path.commonpath([build_dir, root]) != root or build_dir == root:
    problems.append(f"it is not inside the data_dir {root}")
  if os.path.commonpath([build_dir, manual]) in (build_dir, manual):
    problems.append(f"it contains or is inside the manual_dir {manual}")
  if not os.path.isfile(os.path.join(build_dir, "dataset_info.json")):
    problems.append("it has no dataset_info.json")
  if problems:
    raise ValueError(f"Refusing to delete {build_dir} to rebuild {name!r}: " + "; ".join(problems)
                     + ". Delete it by hand or point --config.dataset.data_dir elsewhere.")
  logging.warning("Deleting the build of %s in %s to rebuild it from %s (dataset.rebuild=True).",
                  name, build_dir, manual)
  shutil.rmtree(build_dir)


def _stale_build_problem(builder, name: str, manual_dir: str) -> Optional[str]:
  """None if the build matches the files in manual_dir (or cannot be verified); else an error text."""
  build_dir = str(builder.data_dir)
  record = _read_fingerprint(build_dir)
  if record is None:
    return None
  diffs = compare_manual_files(record, manual_dir)
  if not diffs:
    return None
  shown = diffs[:_MAX_LISTED]
  if len(diffs) > _MAX_LISTED:
    shown.append(f"... and {len(diffs) - _MAX_LISTED} more")
  manual_abs = os.path.abspath(os.path.expanduser(manual_dir))
  return (f"Dataset {name!r} in {build_dir} was built from different manual files than those now in "
          f"dataset.manual_dir={manual_abs} (the build was made from {record.get('manual_dir')}, "
          f"recorded in {FINGERPRINT_FILE}):\n"
          + "".join(f"  {line}\n" for line in shown)
          + "Set --config.dataset.rebuild=True to delete this build and prepare it again from the new "
            "files, or point --config.dataset.data_dir elsewhere to build them there (keeping this build).")


def get_builder(name: str, data_dir: Optional[str] = None, prepare: bool = True,
                manual_dir: Optional[str] = None, rebuild: bool = False):
  """Returns the TFDS builder ``name`` ('dataset' or 'dataset/config'), prepared as array_record.

  With ``manual_dir``, a build of a manual-download dataset is checked against the files there (see
  the module docstring): a ``ValueError`` if they differ from what the build was made from, or with
  ``rebuild=True`` the build is deleted and prepared again.
  """
  import tensorflow_datasets as tfds
  _register_builders()

  def open_builder():
    try:
      return tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(f"Unknown dataset {name!r}: {e}") from None
    except ValueError as e:
      raise ValueError(f"Cannot open dataset {name!r}: {e}") from None

  builder = open_builder()
  tracked = bool(manual_dir) and bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
  if tracked and builder.is_prepared() and not os.path.isdir(os.path.expanduser(manual_dir)):
    # The raw files may have been deleted after the build: nothing to compare with or rebuild from.
    logging.warning("dataset.manual_dir=%s is not a directory; using the existing build of %s in %s "
                    "unchecked.", manual_dir, name, builder.data_dir)
  elif tracked and builder.is_prepared():
    build_dir = str(builder.data_dir)
    try:
      unverified = _read_fingerprint(build_dir) is None
      problem = None if unverified else _stale_build_problem(builder, name, manual_dir)
    except ValueError as e:  # an unreadable record: rebuild on request, else say so
      unverified, problem = False, str(e)
    if problem and not rebuild:
      raise ValueError(problem)
    if problem or (unverified and rebuild):
      _delete_build(builder, name, manual_dir)
      builder = open_builder()
    elif unverified and build_dir not in _warned_unverified:
      _warned_unverified.add(build_dir)
      logging.warning(
          "Dataset %s in %s was prepared without a record of its manual files (%s), so it cannot "
          "be checked against dataset.manual_dir=%s; it is used as is. Set "
          "--config.dataset.rebuild=True to rebuild it from those files (and record them).",
          name, build_dir, FINGERPRINT_FILE, manual_dir)
  if prepare and not builder.is_prepared():
    if manual_dir is not None and not os.path.isdir(os.path.expanduser(manual_dir)):
      raise FileNotFoundError(
          f"dataset.manual_dir={manual_dir!r} is not a directory; it must hold the manually "
          f"downloaded files of {name!r}:\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS or ''}")
    # Fingerprint before preparing: a file changed during the build then shows up as a difference.
    record = manual_files_fingerprint(manual_dir) if tracked else None
    logging.info("Preparing %s in %s (first use only).", name, builder.data_dir)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.expanduser(manual_dir) if manual_dir else None))
    if record is not None:
      record["dataset"] = f"{builder.info.full_name}"
      _write_fingerprint(str(builder.data_dir), record)
  return builder


def data_source(name: str, split: str, data_dir: Optional[str] = None,
                manual_dir: Optional[str] = None, rebuild: bool = False) -> Any:
  """Random-access source of ``split`` of dataset ``name`` (see :func:`get_builder`)."""
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir, rebuild=rebuild)
  if split not in builder.info.splits:
    raise ValueError(f"Dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)
