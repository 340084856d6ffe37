"""The child side of ``dry_run``: try one expression against sample contexts and say how it went.

Run as ``python -m loyalty.adapters.rules.dry_run`` with ``{"source": ..., "kind": ...}`` on
stdin; prints one JSON line, ``{"ok": true}`` or ``{"ok": false, "message": ..., "position":
..., "suggestion": ...}``. It runs in its own process because the library may crash or hang.

Attribute keys are free-form, so the samples hold every key the expression reads literally.
What such a key holds is unknown too: the expression passes if it evaluates cleanly with the
keys all holding a number, or all a string, a bool, a double, a list or a map. An expression
that computes its keys (``member.attributes[purchase.store]``) fails the dry run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from loyalty.adapters.rules.cel_expressions import (
    BoundContext,
    CompiledExpression,
    bind_context,
    compile_expression,
    evaluate_condition,
    evaluate_formula,
)
from loyalty.adapters.rules.errors import BindingError, ExpressionError
from loyalty.adapters.rules.limits import LIST_LENGTH_MAX

NOW = datetime(2024, 6, 14, 18, 30, tzinfo=UTC)
PLACEHOLDERS: tuple[object, ...] = (1, "sample", True, 1.5, [], {})
"""Tried in this order for every attribute key the expression reads."""

_LINES = (
    ("1", "SKU-WINE-1", "Rioja Reserva", "wine", "Private", 2, 1250, 0),
    ("2", "SKU-CHEESE-7", "Comté 18 months", "cheese", "Fromagerie", 1, 890, 90),
    ("3", "SKU-BREAD-2", "Sourdough", "bakery", "Private", 3, 350, 0),
)


def sample_items(count: int) -> list[dict[str, Any]]:
    items = []
    for n in range(count):
        line_id, sku, name, category, brand, quantity, price, discount = _LINES[n % len(_LINES)]
        items.append(
            {
                "line_id": str(n + 1) if count > len(_LINES) else line_id,
                "sku": sku,
                "name": name,
                "category": category,
                "brand": brand,
                "quantity": quantity,
                "unit_price_minor": price,
                "discount_minor": discount,
                "base_minor": quantity * price - discount,
            }
        )
    return items


def sample_context(
    *, line_count: int, attribute_paths: Iterable[tuple[str, ...]], placeholder: object
) -> BoundContext:
    items = sample_items(line_count)
    attributes = _attribute_samples(attribute_paths, placeholder)
    purchase = {
        "total_minor": sum(item["base_minor"] for item in items),
        "currency": "EUR",
        "channel": "web",
        "store": "store-1",
        "occurred_at": NOW - timedelta(minutes=5),
        "items": items,
    }
    member = {
        "id": "mem_sample",
        "external_id": "customer-42",
        "email": "sample@example.com",
        "locale": "en-GB",
        "gender": "",
        "birth_date": "1990-04-01",
        "marketing_consent": True,
        "enrolled_at": NOW - timedelta(days=400),
        "tier": "gold",
        "tiers": ["gold", "regular"],
        "attributes": attributes.get("member", {}),
    }
    event = {"type": "purchase", "action": "", "attributes": attributes.get("event", {})}
    return bind_context(purchase=purchase, member=member, event=event, now=NOW)


def _attribute_samples(
    paths: Iterable[tuple[str, ...]], placeholder: object
) -> dict[str, dict[str, Any]]:
    """Nested maps holding ``placeholder`` at the end of every path; where one path is a prefix
    of another, the longer wins (the shorter is then a map)."""
    roots: dict[str, dict[str, Any]] = {}
    for root, *keys in sorted(paths, key=len, reverse=True):
        level = roots.setdefault(root, {})
        for key in keys[:-1]:
            child = level.get(key)
            if not isinstance(child, dict):
                child = level[key] = {}
            level = child
        level.setdefault(keys[-1], placeholder)
    return roots


EVALUATION_CPU_BUDGET_MS = 250
"""Most CPU one evaluation may take on the largest basket allowed."""


def try_expression(source: str, kind: str) -> None:
    """Raise ExpressionError unless ``source`` compiles and evaluates cleanly on the samples."""
    if kind not in ("condition", "formula"):
        raise ExpressionError(f"kind must be 'condition' or 'formula', not {kind!r}")
    expr = compile_expression(source, kind="condition" if kind == "condition" else "formula")
    paths = expr.references.attribute_paths
    first_error: ExpressionError | None = None
    for placeholder in PLACEHOLDERS if paths else PLACEHOLDERS[:1]:
        try:
            _evaluate(
                expr, sample_context(line_count=3, attribute_paths=paths, placeholder=placeholder)
            )
        except ExpressionError as error:
            first_error = first_error or error
            continue
        # The full-size basket is mostly for the time limit, but an error there counts too.
        full = sample_context(
            line_count=LIST_LENGTH_MAX, attribute_paths=paths, placeholder=placeholder
        )
        # CPU time of this process only, so a busy machine does not fail a cheap expression
        # (the wall-clock timeout in the parent only guards against hangs).
        started = time.process_time()
        _evaluate(expr, full)
        spent_ms = (time.process_time() - started) * 1000
        if spent_ms > EVALUATION_CPU_BUDGET_MS:
            raise ExpressionError(
                f"the expression takes {spent_ms:.0f} ms of CPU on a purchase of "
                f"{LIST_LENGTH_MAX} lines (at most {EVALUATION_CPU_BUDGET_MS} ms); filter() and "
                "map() over purchase.items cost time in proportion to its length, so use fewer"
            )
        return
    assert first_error is not None
    raise first_error


def _evaluate(expr: CompiledExpression, ctx: BoundContext) -> None:
    if expr.kind == "condition":
        evaluate_condition(expr, ctx)
    else:
        evaluate_formula(expr, ctx)


def main() -> None:
    request: Mapping[str, object] = json.loads(sys.stdin.read())
    try:
        try_expression(str(request["source"]), str(request["kind"]))
    except ExpressionError as error:
        reply: dict[str, object] = {
            "ok": False,
            "message": error.message,
            "position": error.position,
            "suggestion": error.suggestion,
        }
    except BindingError as error:
        # Only reading attributes nested deeper than VALUE_DEPTH_MAX gets here.
        reply = {"ok": False, "message": f"the expression reads {error}"}
    else:
        reply = {"ok": True}
    print(json.dumps(reply))


if __name__ == "__main__":
    main()
