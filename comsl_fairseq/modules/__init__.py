"""Unregistered building blocks of the composite model."""
