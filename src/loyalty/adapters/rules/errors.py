"""What goes wrong with a merchant expression, in words a merchant can act on."""

from __future__ import annotations


class ExpressionError(Exception):
    """An expression was refused (too big, does not parse, names an unknown field) or failed to
    evaluate. ``message`` never contains file paths or tracebacks: it is shown to merchants.

    ``position`` is a 0-based character offset into the source when the failure has a place;
    ``suggestion`` is the replacement to offer ("purchase.total_minor" for "purchase.totl")."""

    def __init__(
        self, message: str, *, position: int | None = None, suggestion: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.suggestion = suggestion


class BindingError(ValueError):
    """The values to evaluate against break a limit or are not of the schema's types. This is
    the caller's data, not the merchant's expression, hence not an ExpressionError."""
