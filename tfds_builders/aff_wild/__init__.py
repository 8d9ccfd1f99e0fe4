"""Aff-Wild (2017) TFDS builder; importing registers the name 'aff_wild'."""

from tfds_builders.aff_wild import aff_wild_dataset_builder
from tfds_builders.aff_wild.aff_wild_dataset_builder import AffWildConfig
from tfds_builders.aff_wild.aff_wild_dataset_builder import Builder

__all__ = ['AffWildConfig', 'Builder', 'aff_wild_dataset_builder']
