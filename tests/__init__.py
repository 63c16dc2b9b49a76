"""Tests: pytest, CPU, offline; builders.py makes the fixtures."""
