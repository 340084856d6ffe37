"""The guardrails on merchant expressions and on the values bound for them.

Each maximum stops a specific failure of the ``common-expression-language`` library (0.10)
before the library sees the input, because some of those failures take the whole process down
rather than raising."""

from __future__ import annotations

EXPRESSION_LENGTH_MAX = 2048
"""Bytes of UTF-8 source. A ~40 KB chain of field selections crashes the library's parser with
a segmentation fault; nothing a merchant needs comes near 2 KB."""

NESTING_DEPTH_MAX = 32
"""Open parentheses, brackets and braces at once. The parser's own recursion limit (96) turns
into a confusing error, and deep nesting is never needed in a rule."""

MACRO_CALLS_MAX = 8
"""Calls of ``all``, ``exists``, ``exists_one``, ``map`` and ``filter``. Each walks a list of up
to LIST_LENGTH_MAX elements, and ``map``/``filter`` cost time in proportion to the square of
its length (the library copies the partial result on every step)."""

LIST_LENGTH_MAX = 500
"""Elements in any list bound into the context (``purchase.items``, lists inside attributes).
It matches the event API's 500 lines per purchase."""

VALUE_DEPTH_MAX = 32
"""Nesting of lists and maps inside a free-form attributes map. Binding a value nested about
10,000 deep crashes the library (stack overflow while converting it)."""
