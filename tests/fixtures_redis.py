"""Fixtures: see module docstring once written."""
