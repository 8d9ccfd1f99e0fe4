"""Evaluation metrics (clu metrics where they accumulate over batches)."""
