"""Synthetic facial-expression TFDS builder; importing registers 'synthetic_expressions'."""

from tfds_builders.synthetic_expressions import synthetic_expressions_dataset_builder
from tfds_builders.synthetic_expressions.synthetic_expressions_dataset_builder import (
    Builder, SyntheticExpressionsConfig)

__all__ = ["Builder", "SyntheticExpressionsConfig", "synthetic_expressions_dataset_builder"]
