"""EMOTIC TFDS builder; importing registers the name 'emotic'."""

from tfds_builders.emotic import emotic_dataset_builder
from tfds_builders.emotic.emotic_dataset_builder import Builder
from tfds_builders.emotic.emotic_dataset_builder import EmoticConfig

__all__ = ['Builder', 'EmoticConfig', 'emotic_dataset_builder']
