"""CK+ TFDS builder; importing registers the name 'ckplus'."""

from tfds_builders.ckplus import ckplus_dataset_builder
from tfds_builders.ckplus.ckplus_dataset_builder import Builder
from tfds_builders.ckplus.ckplus_dataset_builder import CkPlusConfig

__all__ = ['Builder', 'CkPlusConfig', 'ckplus_dataset_builder']
