"""FER2013 / FER+ TFDS builder; importing registers the name 'fer2013'."""

from tfds_builders.fer2013 import fer2013_dataset_builder
from tfds_builders.fer2013.fer2013_dataset_builder import Builder

__all__ = ['Builder', 'fer2013_dataset_builder']
