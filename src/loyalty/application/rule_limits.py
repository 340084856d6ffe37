"""Per-member caps and campaign budgets: how much a limited rule may still pay, and the record
of what it paid. Runs inside the event's transaction, after the member's wallet is locked, so
two events of one member never both see the same usage; a budget row is locked too (only
rules with a budget have one), and its CHECK constraint refuses an overspend outright."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, and_, bindparam, func, select, text, update

from loyalty.adapters.db.tables import rule_awards, rule_budgets
from loyalty.domain.rules import (
    Rule,
    RuleEvaluation,
    cap_results,
    period_end,
    period_key,
    period_start,
)

_INSERT_BUDGET = text(
    "INSERT INTO rule_budgets (program_id, rule_id, period_key, points_budget, points_used) "
    "VALUES (:program_id, :rule_id, :period_key, :points_budget, 0) "
    # A new program version may change the budget: it applies at once, but never below what
    # was already spent in the period.
    "ON CONFLICT (program_id, rule_id, period_key) DO UPDATE SET points_budget = CASE "
    "WHEN excluded.points_budget > rule_budgets.points_used THEN excluded.points_budget "
    "ELSE rule_budgets.points_used END"
)
_LOCK_BUDGET = (
    select(rule_budgets.c.points_budget, rule_budgets.c.points_used)
    .where(
        and_(
            rule_budgets.c.program_id == bindparam("program_id"),
            rule_budgets.c.rule_id == bindparam("rule_id"),
            rule_budgets.c.period_key == bindparam("period_key"),
        )
    )
    .with_for_update()
)


def _member_usage(
    conn: Connection,
    program_id: str,
    member_id: str,
    rule_id: str,
    since: datetime | None,
    until: datetime | None,
) -> tuple[int, int]:
    conditions = [
        rule_awards.c.program_id == program_id,
        rule_awards.c.member_id == member_id,
        rule_awards.c.rule_id == rule_id,
    ]
    if since is not None:
        conditions.append(rule_awards.c.awarded_at >= since)
    if until is not None:
        conditions.append(rule_awards.c.awarded_at < until)
    row = conn.execute(
        select(func.count(), func.coalesce(func.sum(rule_awards.c.points), 0)).where(
            and_(*conditions)
        )
    ).one()
    return int(row[0]), int(row[1])


def allowed_points(
    conn: Connection,
    *,
    program_id: str,
    member_id: str,
    rules: Mapping[str, Rule],
    evaluation: RuleEvaluation,
    at: datetime,
    zone: ZoneInfo,
) -> dict[str, int]:
    """For each limited rule that would pay: the most it may pay now."""
    allowed: dict[str, int] = {}
    for result in sorted(evaluation.results, key=lambda r: r.rule_id):
        rule = rules[result.rule_id]
        if not rule.limited:
            continue
        limit = result.points
        for cap in rule.member_caps:
            count, points = _member_usage(
                conn,
                program_id,
                member_id,
                rule.rule_id,
                period_start(cap.period, at, zone),
                period_end(cap.period, at, zone),
            )
            if cap.max_count is not None and count >= cap.max_count:
                limit = 0
            if cap.max_points is not None:
                limit = min(limit, cap.max_points - points)
        if rule.budget is not None:
            params = {
                "program_id": program_id,
                "rule_id": rule.rule_id,
                "period_key": period_key(rule.budget.period, at, zone),
            }
            conn.execute(_INSERT_BUDGET, {**params, "points_budget": rule.budget.points})
            row = conn.execute(_LOCK_BUDGET, params).one()
            limit = min(limit, int(row.points_budget) - int(row.points_used))
        allowed[rule.rule_id] = max(0, limit)
    return allowed


def capper(
    conn: Connection,
    *,
    program_id: str,
    member_id: str,
    rules: Mapping[str, Rule],
    at: datetime,
    zone: ZoneInfo,
) -> Callable[[RuleEvaluation], RuleEvaluation]:
    """The step that applies caps and budgets to an evaluation, reading usage in the caller's
    transaction (after the member's wallet is locked)."""

    def cap(evaluation: RuleEvaluation) -> RuleEvaluation:
        allowed = allowed_points(
            conn,
            program_id=program_id,
            member_id=member_id,
            rules=rules,
            evaluation=evaluation,
            at=at,
            zone=zone,
        )
        return cap_results(evaluation, allowed)

    return cap


def record_usage(
    conn: Connection,
    *,
    program_id: str,
    member_id: str,
    entry_id: str,
    rules: Mapping[str, Rule],
    evaluation: RuleEvaluation,
    at: datetime,
    zone: ZoneInfo,
) -> None:
    """Count what limited rules paid in this entry against their caps and budgets."""
    for result in evaluation.results:
        rule = rules[result.rule_id]
        if not rule.limited or result.points <= 0:
            continue
        if rule.member_caps:
            conn.execute(
                rule_awards.insert().values(
                    entry_id=entry_id,
                    rule_id=rule.rule_id,
                    program_id=program_id,
                    member_id=member_id,
                    points=result.points,
                    awarded_at=at,
                )
            )
        if rule.budget is not None:
            conn.execute(
                update(rule_budgets)
                .where(
                    and_(
                        rule_budgets.c.program_id == program_id,
                        rule_budgets.c.rule_id == rule.rule_id,
                        rule_budgets.c.period_key == period_key(rule.budget.period, at, zone),
                    )
                )
                .values(points_used=rule_budgets.c.points_used + result.points)
            )
