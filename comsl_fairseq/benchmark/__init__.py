"""Synthetic-batch training benchmark of the composite model."""
