"""Benchmarks. They print figures; nothing here asserts a time."""
