"""Pairwise learning (Waldner & Mitra 2024, ../shared/PAPERS.md section 2): one two-class model per pair of
expressions, one-vs-one voting back to all classes, the 28-pair sweep and its report.

``pairs`` (the pairs and their names), ``voting`` (one-vs-one voting), ``report`` (pair table, heat map,
OvO vs single-model table; ``python -m fer_jax.pairwise.report``), ``sweep`` (``python -m
fer_jax.pairwise.sweep``: every pair through the shared trainer, resumable).
"""
