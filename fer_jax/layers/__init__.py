"""Reusable layers and pure functions."""
