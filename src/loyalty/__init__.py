"""Loyalty Engine: an API-first engine for customer loyalty programs."""

__version__ = "0.1.0"
