"""AffectNet TFDS builder; importing registers the name 'affectnet'."""

from tfds_builders.affectnet import affectnet_dataset_builder
from tfds_builders.affectnet.affectnet_dataset_builder import AffectNetConfig
from tfds_builders.affectnet.affectnet_dataset_builder import Builder

__all__ = ['AffectNetConfig', 'Builder', 'affectnet_dataset_builder']
