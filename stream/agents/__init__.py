"""Faust agents of the worker, one per module."""
