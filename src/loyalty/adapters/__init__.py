"""Adapters: the database, the clock, ids. Everything that touches the world."""
