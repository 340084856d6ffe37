"""The ``loyalty`` command line (Typer)."""
