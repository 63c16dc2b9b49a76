"""Recipes and studies that use the package (not installed with it)."""
