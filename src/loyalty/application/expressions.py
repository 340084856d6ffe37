"""Merchant expressions in rules: checked when a document is saved, evaluated once per event.

Saving: each expression is compiled (sizes, nesting, macros and every field checked against
the context schema) and then dry-run in a child process with a timeout, so an expression that
would crash or stall the engine is refused with a clear error instead. Evaluating: the event,
the member and the time are bound once, and every rule's expression runs against that."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from loyalty.adapters.rules import (
    BindingError,
    CompiledExpression,
    ExpressionError,
    Kind,
    bind_context,
    compile_expression,
    dry_run,
    evaluate_condition,
    evaluate_formula,
)
from loyalty.application.program_document import ProgramDocument
from loyalty.domain.errors import InvalidProgramDocument
from loyalty.domain.program import ProgramSettings
from loyalty.domain.purchase import Purchase

DRY_RUN_TIMEOUT_S = 10.0
"""Wall-clock guard against a hang, start-up included; cost is judged by CPU time in the
child (see ``adapters.rules.dry_run``), so a busy machine does not refuse cheap expressions."""


def check_document_expressions(
    document: ProgramDocument, *, dry_run_timeout_s: float | None = None
) -> None:
    """Raises ``InvalidProgramDocument`` listing every expression that cannot be accepted."""
    errors: list[dict[str, Any]] = []
    checks: list[tuple[str, str, Kind]] = []
    for index, rule in enumerate(document.rules):
        if rule.conditions.expression is not None:
            checks.append(
                (f"rules[{index}].conditions.expression", rule.conditions.expression, "condition")
            )
        if rule.effect.formula is not None:
            checks.append((f"rules[{index}].effect.formula", rule.effect.formula, "formula"))
    member_only = {f"segments[{i}].condition" for i in range(len(document.segments))}
    checks.extend(
        (f"segments[{i}].condition", segment.condition, "condition")
        for i, segment in enumerate(document.segments)
    )
    for index, reward in enumerate(document.rewards):
        if reward.condition is not None:
            member_only.add(f"rewards[{index}].condition")
            checks.append((f"rewards[{index}].condition", reward.condition, "condition"))
    for field, source, kind in checks:
        try:
            compiled = compile_expression(source, kind=kind)
            if field in member_only:
                _reads_only_the_member(compiled)
            dry_run(source, kind=kind, timeout_s=dry_run_timeout_s or DRY_RUN_TIMEOUT_S)
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


MEMBER_ROOTS = frozenset({"member", "now"})
"""What a segment's or a reward's condition may read: it is about the member, not an event."""


def _reads_only_the_member(compiled: CompiledExpression) -> None:
    others = sorted(compiled.references.roots - MEMBER_ROOTS)
    if others:
        raise ExpressionError(
            f"this condition is about the member and may read only 'member' and 'now', not "
            f"{' or '.join(repr(name) for name in others)}"
        )


@lru_cache(maxsize=1024)
def _compiled(source: str, kind: Kind = "condition") -> CompiledExpression:
    return compile_expression(source, kind=kind)


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


def member_variables(
    row: Any,
    *,
    tier: str | None = None,
    plans: Iterable[str] = (),
    tiers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The member as expressions see it: ``tier`` is the main tier set's tier, ``tiers`` the
    tiers held in every set (``tiers`` maps set ids to them; tier ids are unique across
    sets, so ``'regular' in member.tiers`` needs no set name), ``plans`` the paid plans in
    force."""
    return {
        "tier": tier,
        "tiers": sorted((tiers or {}).values()),
        "plans": sorted(plans),
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


@dataclass(frozen=True, slots=True)
class ExpressionOutcomes:
    conditions: dict[str, bool]
    formulas: dict[str, int]


NO_OUTCOMES = ExpressionOutcomes({}, {})


def evaluate_expressions(
    settings: ProgramSettings,
    *,
    purchase: dict[str, Any] | None,
    member: dict[str, Any] | None,
    event: dict[str, Any] | None,
    now: datetime,
) -> ExpressionOutcomes:
    """Every rule's condition and formula, evaluated against the event bound once. A
    condition that fails at run time (a missing attribute key, a type the data did not have)
    does not hold; a formula that fails pays nothing."""
    if not settings.expressions and not settings.formulas:
        return NO_OUTCOMES
    try:
        context = bind_context(
            purchase=purchase, member=member, event=event, now=now.astimezone(UTC)
        )
    except BindingError:
        return ExpressionOutcomes({rule_id: False for rule_id in settings.expressions}, {})
    conditions: dict[str, bool] = {}
    for rule_id, source in settings.expressions.items():
        try:
            conditions[rule_id] = evaluate_condition(_compiled(source), context)
        except ExpressionError:
            conditions[rule_id] = False
    formulas: dict[str, int] = {}
    for rule_id, source in settings.formulas.items():
        try:
            formulas[rule_id] = evaluate_formula(_compiled(source, "formula"), context)
        except ExpressionError:
            formulas[rule_id] = 0
    return ExpressionOutcomes(conditions, formulas)


def expression_results(
    settings: ProgramSettings,
    *,
    purchase: dict[str, Any] | None,
    member: dict[str, Any] | None,
    event: dict[str, Any] | None,
    now: datetime,
) -> dict[str, bool]:
    """Only the conditions (see ``evaluate_expressions``)."""
    return evaluate_expressions(
        settings, purchase=purchase, member=member, event=event, now=now
    ).conditions


@dataclass(frozen=True, slots=True)
class MemberConditions:
    """What the program's member conditions say of one member now."""

    segments: frozenset[str]
    """The segments the member is in."""
    rewards: dict[str, bool]
    """Each conditioned reward's condition, by reward id."""


def member_conditions(
    settings: ProgramSettings, *, member: dict[str, Any], now: datetime
) -> MemberConditions:
    """Every segment's and every reward's condition for ``member``, bound once. A condition
    that fails at run time (an attribute the member lacks) does not hold, as in rules."""
    conditioned = [(r.reward_id, r.condition) for r in settings.rewards if r.condition]
    if not settings.segments and not conditioned:
        return MemberConditions(frozenset(), {})
    try:
        context = bind_context(purchase=None, member=member, event=None, now=now.astimezone(UTC))
    except BindingError:
        return MemberConditions(frozenset(), {reward_id: False for reward_id, _ in conditioned})

    def holds(source: str) -> bool:
        try:
            return evaluate_condition(_compiled(source), context)
        except ExpressionError:
            return False

    return MemberConditions(
        frozenset(s.segment_id for s in settings.segments if holds(s.condition)),
        {reward_id: holds(source) for reward_id, source in conditioned},
    )
