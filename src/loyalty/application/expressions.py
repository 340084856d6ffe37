"""Merchant expressions in rules: checked when a document is saved, evaluated once per event.

Saving: each expression is compiled (sizes, nesting, macros and every field checked against
the context schema) and then dry-run in a child process with a timeout, so an expression that
would crash or stall the engine is refused with a clear error instead. Evaluating: the event,
the member and the time are bound once, and every rule's expression runs against that."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from loyalty.adapters.rules import (
    BindingError,
    CompiledExpression,
    ExpressionError,
    bind_context,
    compile_expression,
    dry_run,
    evaluate_condition,
)
from loyalty.application.program_document import ProgramDocument
from loyalty.domain.errors import InvalidProgramDocument
from loyalty.domain.program import ProgramSettings
from loyalty.domain.purchase import Purchase

DRY_RUN_TIMEOUT_S = 2.0


def check_document_expressions(
    document: ProgramDocument, *, dry_run_timeout_s: float | None = None
) -> None:
    """Raises ``InvalidProgramDocument`` listing every expression that cannot be accepted."""
    errors: list[dict[str, Any]] = []
    for index, rule in enumerate(document.rules):
        source = rule.conditions.expression
        if source is None:
            continue
        field = f"rules[{index}].conditions.expression"
        try:
            compile_expression(source, kind="condition")
            dry_run(source, kind="condition", timeout_s=dry_run_timeout_s or DRY_RUN_TIMEOUT_S)
        except ExpressionError as exc:
            error: dict[str, Any] = {"field": field, "message": exc.message}
            if exc.position is not None:
                error["position"] = exc.position
            if exc.suggestion is not None:
                error["suggestion"] = exc.suggestion
            errors.append(error)
    if errors:
        raise InvalidProgramDocument(
            f"{len(errors)} expression(s) cannot be accepted.", errors=errors
        )


@lru_cache(maxsize=1024)
def _compiled(source: str) -> CompiledExpression:
    return compile_expression(source, kind="condition")


def purchase_variables(purchase: Purchase) -> dict[str, Any]:
    return {
        "total_minor": purchase.total_minor,
        "currency": purchase.currency,
        "channel": purchase.channel,
        "store": purchase.store,
        "occurred_at": purchase.occurred_at,
        "items": [
            {
                "line_id": line.line_id,
                "sku": line.sku,
                "name": line.name,
                "category": line.category,
                "brand": line.brand,
                "quantity": line.quantity,
                "unit_price_minor": line.unit_price_minor,
                "discount_minor": line.discount_minor,
                "base_minor": line.base_minor,
            }
            for line in purchase.lines
        ],
    }


def member_variables(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "external_id": row.external_id,
        "email": row.email,
        "locale": row.locale,
        "gender": row.gender,
        "birth_date": row.birth_date.isoformat() if row.birth_date else None,
        "marketing_consent": bool(row.marketing_consent),
        "enrolled_at": row.enrolled_at,
        "attributes": dict(row.attributes),
    }


def expression_results(
    settings: ProgramSettings,
    *,
    purchase: dict[str, Any] | None,
    member: dict[str, Any] | None,
    event: dict[str, Any] | None,
    now: datetime,
) -> dict[str, bool]:
    """Each rule's expression, evaluated against the event bound once. An expression that
    fails at run time (a missing attribute key, a type the data did not have) does not apply."""
    if not settings.expressions:
        return {}
    try:
        context = bind_context(
            purchase=purchase, member=member, event=event, now=now.astimezone(UTC)
        )
    except BindingError:
        return {rule_id: False for rule_id in settings.expressions}
    results: dict[str, bool] = {}
    for rule_id, source in settings.expressions.items():
        try:
            results[rule_id] = evaluate_condition(_compiled(source), context)
        except ExpressionError:
            results[rule_id] = False
    return results
