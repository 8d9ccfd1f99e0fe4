"""TFDS data sources: build a registered builder as array_record once, then read it by index.

``data_source('fer2013', 'train', data_dir=..., manual_dir=...)`` prepares the dataset if its files are
not there yet (manual-download datasets read ``manual_dir``; nothing is downloaded) and returns the
random-access source that grain reads.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from absl import logging


def _register_builders() -> None:
  import tfds_builders  # noqa: F401  (importing registers every builder of this repo)


def get_builder(name: str, data_dir: Optional[str] = None, prepare: bool = True,
                manual_dir: Optional[str] = None):
  """Returns the TFDS builder ``name`` ('dataset' or 'dataset/config'), prepared as array_record."""
  import tensorflow_datasets as tfds
  _register_builders()
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown dataset {name!r}: {e}") from None
  except ValueError as e:
    raise ValueError(f"Cannot open dataset {name!r}: {e}") from None
  if prepare and not builder.is_prepared():
    if manual_dir is not None and not os.path.isdir(os.path.expanduser(manual_dir)):
      raise FileNotFoundError(
          f"dataset.manual_dir={manual_dir!r} is not a directory; it must hold the manually "
          f"downloaded files of {name!r}:\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS or ''}")
    logging.info("Preparing %s in %s (first use only).", name, builder.data_dir)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.expanduser(manual_dir) if manual_dir else None))
  return builder


def data_source(name: str, split: str, data_dir: Optional[str] = None,
                manual_dir: Optional[str] = None) -> Any:
  """Random-access source of ``split`` of dataset ``name`` (see :func:`get_builder`)."""
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir)
  if split not in builder.info.splits:
    raise ValueError(f"Dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)
