"""fer_jax.data.sources: manual-file fingerprints of TFDS builds (stale builds refused or rebuilt).

Builds the real fer2013 builder from tiny generated CSVs (make_dummy_data.fer2013_lines, FAKE pixels).
"""

import hashlib
import json
import os
import pathlib
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fer_jax.data import sources
from tfds_builders.fer2013 import fer2013_dataset_builder as fb
from tfds_builders.fer2013 import make_dummy_data

NAME = "fer2013/fer2013"


def _rows(n_train, n_public=0, label=0):
  return ([("Training", label, "", ())] * n_train + [("PublicTest", label, "", ())] * n_public)


def _write_csv(folder, n_train, n_public=0, seed=0, name="fer2013.csv"):
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / name
  path.write_text("\n".join(make_dummy_data.fer2013_lines(_rows(n_train, n_public), seed=seed)) + "\n")
  return path


def _build_dir(data_dir):
  dirs = list(pathlib.Path(data_dir).glob("fer2013/fer2013/*/dataset_info.json"))
  assert len(dirs) == 1, dirs
  return dirs[0].parent


def _counts(builder):
  return {k: v.num_examples for k, v in builder.info.splits.items()}


@pytest.fixture
def warnings(monkeypatch):
  """Records the messages of sources' logging.warning calls."""
  seen = []
  monkeypatch.setattr(sources.logging, "warning", lambda msg, *args: seen.append(msg % args))
  return seen


@pytest.fixture
def built(tmp_path):
  """(data_dir, manual_dir, build_dir): fer2013 built from 5 Training + 2 PublicTest rows, plus a
  marker file dropped in the build dir to detect a rebuild."""
  manual, data = tmp_path / "manual", tmp_path / "data"
  _write_csv(manual, 5, 2)
  builder = sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
  assert _counts(builder) == {"train": 5, "validation": 2}
  build_dir = _build_dir(data)
  assert pathlib.Path(builder.data_dir) == build_dir
  (build_dir / "marker").write_text("first build")
  return data, manual, build_dir


def _assert_not_rebuilt(build_dir):
  assert (build_dir / "marker").read_text() == "first build"


def test_fingerprint_file_records_the_manual_files(built):
  data, manual, build_dir = built
  csv = manual / "fer2013.csv"
  record = json.loads((build_dir / sources.FINGERPRINT_FILE).read_text())
  st = csv.stat()
  assert record["format"] == 1
  assert record["manual_dir"] == str(manual)
  assert record["dataset"] == "fer2013/fer2013/1.0.0"
  assert record["files"] == {"fer2013.csv": {
      "size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash_kind": "full",
      "sha256": hashlib.sha256(csv.read_bytes()).hexdigest()}}


def test_same_files_reuse_the_build(built, warnings):
  data, manual, build_dir = built
  info_mtime = (build_dir / "dataset_info.json").stat().st_mtime_ns
  record = (build_dir / sources.FINGERPRINT_FILE).read_text()
  for rebuild in (False, True):  # rebuild=True does not rebuild a build whose files match
    builder = sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual), rebuild=rebuild)
    assert _counts(builder) == {"train": 5, "validation": 2}
  _assert_not_rebuilt(build_dir)
  assert (build_dir / "dataset_info.json").stat().st_mtime_ns == info_mtime
  assert (build_dir / sources.FINGERPRINT_FILE).read_text() == record
  # Same content written again (new mtime) is still the same file.
  csv = manual / "fer2013.csv"
  csv.write_bytes(csv.read_bytes())
  os.utime(csv, ns=(1, 1))
  sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
  _assert_not_rebuilt(build_dir)
  assert warnings == []


def test_changed_csv_is_refused_then_rebuilt_on_request(built):
  data, manual, build_dir = built
  old_size = (manual / "fer2013.csv").stat().st_size
  new_size = _write_csv(manual, 3, 1, seed=1).stat().st_size
  assert old_size != new_size
  with pytest.raises(ValueError) as e:
    sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
  msg = str(e.value)
  assert msg == (
      f"Dataset 'fer2013/fer2013' in {build_dir} was built from different manual files than those "
      f"now in dataset.manual_dir={manual} (the build was made from {manual}, recorded in "
      f"manual_files.json):\n"
      f"  changed: fer2013.csv (size {old_size} -> {new_size} bytes)\n"
      "Set --config.dataset.rebuild=True to delete this build and prepare it again from the new "
      "files, or point --config.dataset.data_dir elsewhere to build them there (keeping this build).")
  _assert_not_rebuilt(build_dir)  # refused: the old build is left alone

  builder = sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual), rebuild=True)
  assert not (build_dir / "marker").exists()
  assert _build_dir(data) == build_dir
  assert _counts(builder) == {"train": 3, "validation": 1}
  assert len(sources.data_source(NAME, "train", data_dir=str(data), manual_dir=str(manual))) == 3
  source = builder.as_data_source(split="validation")
  assert len(source) == 1
  np.testing.assert_array_equal(  # row 3 of the new CSV (seed 1), pixel 0 set to its index
      source[0]["image"], fb.read_fer2013_csv(manual / "fer2013.csv")["PublicTest"].images[0])
  assert (manual / "fer2013.csv").stat().st_size == new_size  # the manual files are untouched
  record = json.loads((build_dir / sources.FINGERPRINT_FILE).read_text())
  assert record["files"]["fer2013.csv"]["size"] == new_size
  # The new build now matches: no error, no rebuild.
  (build_dir / "marker").write_text("first build")
  sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
  _assert_not_rebuilt(build_dir)


def test_same_size_different_content_is_refused(built):
  data, manual, build_dir = built
  csv = manual / "fer2013.csv"
  text = csv.read_text()
  i = text.index(",", len("emotion,pixels,Usage\n")) + 1  # first pixel of row 0 is "0"
  assert text[i:i + 2] == "0 "
  csv.write_text(text[:i] + "9" + text[i + 1:])
  with pytest.raises(ValueError, match=r"\n  changed: fer2013\.csv \(same size \d+ bytes, different "
                     r"content: sha256 [0-9a-f]{12} -> [0-9a-f]{12}\)\nSet --config\.dataset\.rebuild"
                     r"=True"):
    sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
  _assert_not_rebuilt(build_dir)


def test_added_and_removed_files_are_named(tmp_path):
  manual, data = tmp_path / "manual", tmp_path / "data"
  _write_csv(manual, 2)
  (manual / "sub").mkdir()
  (manual / "sub" / "notes.txt").write_text("1234567")
  (manual / ".DS_Store").write_text("hidden files are not recorded")
  sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
  record = json.loads((_build_dir(data) / sources.FINGERPRINT_FILE).read_text())
  assert sorted(record["files"]) == ["fer2013.csv", "sub/notes.txt"]

  (manual / ".hidden").write_text("ignored")  # hidden: not a difference
  sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
  (manual / "sub" / "notes.txt").unlink()
  (manual / "fer2013new.csv").write_text("abc")
  with pytest.raises(ValueError) as e:
    sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
  assert ("):\n  added: fer2013new.csv (3 bytes)\n  removed: sub/notes.txt (was 7 bytes)\nSet "
          "--config.dataset.rebuild=True") in str(e.value)


def test_other_manual_dir_with_other_files_is_refused(built):
  data, manual, build_dir = built
  other = manual.parent / "other"
  _write_csv(other, 2)
  with pytest.raises(ValueError, match=re.escape(
      f"now in dataset.manual_dir={other} (the build was made from {manual}, recorded in "
      "manual_files.json):\n  changed: fer2013.csv (size")):
    sources.get_builder(NAME, data_dir=str(data), manual_dir=str(other))
  # The same files in another folder are the same build.
  same = manual.parent / "same"
  same.mkdir()
  (same / "fer2013.csv").write_bytes((manual / "fer2013.csv").read_bytes())
  sources.get_builder(NAME, data_dir=str(data), manual_dir=str(same))
  _assert_not_rebuilt(build_dir)


def test_build_without_record_warns_once_and_rebuilds_on_request(built, warnings):
  data, manual, build_dir = built
  (build_dir / sources.FINGERPRINT_FILE).unlink()  # as made before fingerprints existed
  _write_csv(manual, 4, seed=2)
  for _ in range(2):
    builder = sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
    assert _counts(builder) == {"train": 5, "validation": 2}  # used as is
  assert warnings == [
      f"Dataset fer2013/fer2013 in {build_dir} was prepared without a record of its manual files "
      f"(manual_files.json), so it cannot be checked against dataset.manual_dir={manual}; it is "
      "used as is. Set --config.dataset.rebuild=True to rebuild it from those files (and record "
      "them)."]
  assert not (build_dir / sources.FINGERPRINT_FILE).exists()  # nothing written
  _assert_not_rebuilt(build_dir)
  builder = sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual), rebuild=True)
  assert _counts(builder) == {"train": 4}
  assert (build_dir / sources.FINGERPRINT_FILE).exists()


def test_no_manual_dir_or_missing_manual_dir_skips_the_check(built, warnings):
  data, manual, build_dir = built
  _write_csv(manual, 1)
  builder = sources.get_builder(NAME, data_dir=str(data))  # nothing to compare with
  assert _counts(builder) == {"train": 5, "validation": 2}
  missing = manual.parent / "deleted"
  sources.get_builder(NAME, data_dir=str(data), manual_dir=str(missing))
  assert warnings == [f"dataset.manual_dir={missing} is not a directory; using the existing build "
                      f"of fer2013/fer2013 in {build_dir} unchecked."]
  _assert_not_rebuilt(build_dir)
  with pytest.raises(FileNotFoundError, match="is not a directory"):  # nothing built yet: an error
    sources.get_builder(NAME, data_dir=str(manual.parent / "data2"), manual_dir=str(missing))


class FingerprintToy(tfds.core.GeneratorBasedBuilder):
  """Three examples, no manual download."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"x": np.int64}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      yield i, {"x": i}


def test_dataset_without_manual_files_is_unaffected(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "anything.txt").write_text("x")
  builder = sources.get_builder("fingerprint_toy", data_dir=str(tmp_path / "data"),
                                manual_dir=str(manual))
  assert _counts(builder) == {"train": 3}
  assert not (pathlib.Path(builder.data_dir) / sources.FINGERPRINT_FILE).exists()
  (manual / "anything.txt").write_text("changed")
  sources.get_builder("fingerprint_toy", data_dir=str(tmp_path / "data"), manual_dir=str(manual),
                      rebuild=True)
  assert _counts(builder) == {"train": 3}


def test_large_files_hash_head_and_tail(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "FULL_HASH_BYTES", 10)
  monkeypatch.setattr(sources, "HEAD_TAIL_BYTES", 4)
  small, big = tmp_path / "small", tmp_path / "big"
  small.write_bytes(b"0123456789")
  big.write_bytes(b"abcdefghijk")
  assert sources.file_hash(str(small)) == ("full", hashlib.sha256(b"0123456789").hexdigest())
  assert sources.file_hash(str(big)) == (
      "head_tail_0MiB", hashlib.sha256(b"abcd" + b"hijk" + b"11").hexdigest())


def test_refuses_to_delete_a_build_holding_the_manual_dir(built):
  data, manual, build_dir = built
  builder = tfds.builder(NAME, data_dir=str(data))
  with pytest.raises(ValueError, match=r"Refusing to delete .*: it contains or is inside the "
                     r"manual_dir"):
    sources._delete_build(builder, NAME, str(build_dir / "raw"))
  assert (build_dir / "dataset_info.json").exists()


def test_no_header_error_quotes_a_cut_row(tmp_path):
  row = "3," + " ".join(["255"] * 2304) + ",Training"  # a data row where the header should be
  path = tmp_path / "fer2013.csv"
  path.write_text(row + "\n" + row + "\n")
  with pytest.raises(fb.CsvFormatError) as e:
    fb.read_fer2013_csv(path)
  msg = str(e.value)
  assert msg == (f"{path}, line 1: bad header {row[:200]!r}... ({len(row)} characters), expected "
                 "'emotion,pixels,Usage' (the file seems to have no header row: line 1 looks like "
                 "data)")
  assert len(row) == 9226 and "... (9226 characters), expected" in msg
  assert len(msg) - len(str(path)) < 400
  # A short bad header is quoted whole, without the no-header hint.
  path.write_text("label,pixels,Usage\n" + row + "\n")
  with pytest.raises(fb.CsvFormatError, match=r"line 1: bad header 'label,pixels,Usage', expected "
                     r"'emotion,pixels,Usage'$"):
    fb.read_fer2013_csv(path)


def test_unreadable_record_is_refused_then_rebuilt_on_request(built):
  data, manual, build_dir = built
  (build_dir / sources.FINGERPRINT_FILE).write_text("{not json")
  with pytest.raises(ValueError, match=r"Cannot read the manual-file record .*manual_files\.json "
                     r"\(JSONDecodeError: .*\); set --config\.dataset\.rebuild=True"):
    sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual))
  _assert_not_rebuilt(build_dir)
  sources.get_builder(NAME, data_dir=str(data), manual_dir=str(manual), rebuild=True)
  assert not (build_dir / "marker").exists()
  assert json.loads((build_dir / sources.FINGERPRINT_FILE).read_text())["files"]
