"""AFEW-VA TFDS builder; importing registers the name 'afew_va'."""

from tfds_builders.afew_va import afew_va_dataset_builder
from tfds_builders.afew_va.afew_va_dataset_builder import AfewVaConfig
from tfds_builders.afew_va.afew_va_dataset_builder import Builder

__all__ = ['AfewVaConfig', 'Builder', 'afew_va_dataset_builder']
