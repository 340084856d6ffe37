"""The evaluator every purchase and action goes through, and every quote with them: the
program's rules applied to one event, with an explanation of what each rule earned."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from loyalty.application.limits import POINTS_PER_REQUEST_MAX
from loyalty.domain.errors import CurrencyMismatch, LimitExceeded
from loyalty.domain.program import ProgramSettings
from loyalty.domain.purchase import Purchase
from loyalty.domain.rules import (
    OrderFacts,
    RuleEvaluation,
    Trigger,
    evaluate_action,
    evaluate_purchase,
)


@dataclass(frozen=True, slots=True)
class LineResult:
    line_id: str
    base_minor: int
    points: int
    rules: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class PurchaseEarning:
    points: int
    base_minor: int
    lines: list[LineResult]
    rules: list[dict[str, Any]]
    program_version: int
    limited: list[dict[str, Any]]
    """Rules a per-member cap or a budget held back: what they would have paid, and paid."""


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def base_of(purchase: Purchase) -> int:
    """The order's earn base: its lines after discounts, or its total when it has no lines."""
    if purchase.lines:
        return sum(line.base_minor for line in purchase.lines)
    return purchase.total_minor


def uses_member_average(settings: ProgramSettings) -> bool:
    return any(rule.conditions.above_average_percent is not None for rule in settings.rules)


def _rule_totals(evaluation: RuleEvaluation, *, with_lines: bool) -> list[dict[str, Any]]:
    """Each rule's points with its explanation: what the effect computed from, and the lines
    it earned on (purchases only)."""
    return [
        {
            "rule": r.rule_id,
            "points": r.points,
            "inputs": dict(r.inputs),
            **(
                {"lines": [line_id for line_id, pts in r.line_points.items() if pts]}
                if with_lines
                else {}
            ),
        }
        for r in evaluation.results
    ]


Cap = Callable[[RuleEvaluation], RuleEvaluation]
"""Applies per-member caps and budgets (it reads usage from the database)."""


def earn_on_purchase(
    settings: ProgramSettings,
    purchase: Purchase,
    *,
    member_attributes: Mapping[str, Any],
    expression_results: Mapping[str, bool],
    cap: Cap | None = None,
    member_average_minor: int | None = None,
    formula_results: Mapping[str, int] | None = None,
    member_tier: str | None = None,
    member_plans: frozenset[str] = frozenset(),
    member_tiers: frozenset[str] = frozenset(),
) -> tuple[PurchaseEarning, RuleEvaluation]:
    """What a purchase earns, and the (capped) evaluation behind it. Raises
    ``CurrencyMismatch``."""
    if purchase.currency != settings.currency:
        raise CurrencyMismatch(expected=settings.currency, received=purchase.currency)
    evaluation = evaluate_purchase(
        settings.rules,
        order=OrderFacts(
            purchase.occurred_at,
            purchase.total_minor,
            purchase.channel,
            purchase.store,
            base_minor=base_of(purchase),
            member_average_minor=member_average_minor,
            member_tier=member_tier,
            member_tiers=member_tiers,
            member_plans=member_plans,
        ),
        lines=purchase.lines,
        zone=_zone(settings.time_zone),
        member_attributes=member_attributes,
        expression_results=expression_results,
        formula_results=formula_results,
    )
    limited: list[dict[str, Any]] = []
    if cap is not None:
        uncapped = {r.rule_id: r.points for r in evaluation.results}
        evaluation = cap(evaluation)
        paid = {r.rule_id: r.points for r in evaluation.results}
        limited = [
            {"rule": rule_id, "points_before_limits": before, "points": paid.get(rule_id, 0)}
            for rule_id, before in uncapped.items()
            if paid.get(rule_id, 0) < before
        ]
    if evaluation.points > POINTS_PER_REQUEST_MAX:
        raise LimitExceeded(
            f"This purchase would earn {evaluation.points} points, more than the "
            f"{POINTS_PER_REQUEST_MAX} one event may earn; check the program's rates.",
            limit="points_per_event",
            points_max=POINTS_PER_REQUEST_MAX,
        )
    if purchase.lines:
        lines = [
            LineResult(
                line.line_id,
                line.base_minor,
                evaluation.line_points(line.line_id),
                evaluation.line_breakdown(line.line_id),
            )
            for line in purchase.lines
        ]
        base = sum(line.base_minor for line in purchase.lines)
    else:
        lines = []
        base = purchase.total_minor
    earning = PurchaseEarning(
        evaluation.points,
        base,
        lines,
        _rule_totals(evaluation, with_lines=True),
        settings.version,
        limited,
    )
    return earning, evaluation


def earn_on_action(
    settings: ProgramSettings,
    *,
    action: str | None,
    occurred_at: Any,
    member_attributes: Mapping[str, Any],
    expression_results: Mapping[str, bool],
    cap: Cap | None = None,
    trigger: Trigger = Trigger.ACTION,
    formula_results: Mapping[str, int] | None = None,
    member_tier: str | None = None,
    member_plans: frozenset[str] = frozenset(),
    member_tiers: frozenset[str] = frozenset(),
) -> RuleEvaluation:
    evaluation = evaluate_action(
        settings.rules,
        action=action,
        occurred_at=occurred_at,
        zone=_zone(settings.time_zone),
        member_attributes=member_attributes,
        expression_results=expression_results,
        trigger=trigger,
        formula_results=formula_results,
        member_tier=member_tier,
        member_plans=member_plans,
        member_tiers=member_tiers,
    )
    return cap(evaluation) if cap is not None else evaluation


def held_portions(
    settings: ProgramSettings, evaluation: RuleEvaluation, earned_at: datetime
) -> list[tuple[int, datetime | None]]:
    """The evaluation's points grouped by when they become spendable: each rule's own pending
    period, or the program's for purchase rules (``None``: at once)."""
    rules = {rule.rule_id: rule for rule in settings.rules}
    by_days: dict[int, int] = {}
    for result in evaluation.results:
        rule = rules[result.rule_id]
        days = rule.pending_days
        if days is None:
            days = settings.pending_days if rule.trigger is Trigger.PURCHASE else 0
        by_days[days] = by_days.get(days, 0) + result.points
    return [
        (points, earned_at + timedelta(days=days) if days else None)
        for days, points in sorted(by_days.items())
        if points > 0
    ]


def rule_totals(evaluation: RuleEvaluation) -> list[dict[str, Any]]:
    """The rules of an action, enrollment or return, with their explanation."""
    return _rule_totals(evaluation, with_lines=False)


def zone_of(settings: ProgramSettings) -> ZoneInfo:
    return _zone(settings.time_zone)
