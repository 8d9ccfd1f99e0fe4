"""Helpers shared by the builder tests (`*/*_dataset_builder_test.py`).

Not a test module itself (pytest collects `*_test.py` / `test_*.py` only).
"""

from __future__ import annotations

import pathlib

import pytest
import tensorflow_datasets as tfds


def build_array_record(builder_cls, data_dir, config, manual_dir):
  """Builds `config` of `builder_cls` from `manual_dir` into array_record files.

  Statistics are not computed (they need TensorFlow's data pipeline and add
  nothing to these tests). Returns the prepared builder.
  """
  builder = builder_cls(config=config, data_dir=data_dir,
                        file_format='array_record')
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(
          manual_dir=str(manual_dir),
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def prepare(builder, manual_dir, **kwargs) -> None:
  """`builder.download_and_prepare(**kwargs)` reading the manual files from `manual_dir`."""
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
      **kwargs)


def dummy_files_written_by(main, out_dir, dummy_dir) -> list[pathlib.Path]:
  """Runs a `make_dummy_data.main(out_dir)`; asserts that it writes the same
  file names as `dummy_dir` holds and returns them (relative, sorted)."""
  main(out_dir)
  want = sorted(p.relative_to(dummy_dir) for p in dummy_dir.rglob('*')
                if p.is_file())
  got = sorted(p.relative_to(out_dir) for p in out_dir.rglob('*')
               if p.is_file())
  assert got == want
  return want


def tfds_harness():
  """(tfds.testing.DatasetBuilderTestCase, '') or (None, why it is missing).

  TFDS's own harness builds the default tfrecord format (its `as_dataset`
  check is not implemented for array_record in tensorflow-datasets 4.9.10;
  each builder test checks its array_record build itself). tfds.testing
  imports `dill`, which is only in tensorflow-datasets' test extras, hence
  the guard. Keep the result in a tuple: a module-level TestCase name would be
  collected as a test itself.
  """
  try:
    return (tfds.testing.DatasetBuilderTestCase, '')
  except ImportError as e:
    return (None, f'{type(e).__name__}: {e}')


def skip_without_harness(harness) -> None:
  """Skips the calling test, saying why, when `harness` (`tfds_harness()`) is missing."""
  if harness[0] is None:
    pytest.skip('tfds.testing.DatasetBuilderTestCase unavailable '
                f'({harness[1]}); install `dill` to run the TFDS harness')
