"""Backtesting: what a program version would have earned on past events, without touching the
ledger. The rules are evaluated by the same evaluator as live events; per-member caps and
budgets are tracked in memory over the replayed history, in event order."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loyalty.application.earning import zone_of
from loyalty.application.event_documents import ActionEvent, PurchaseEvent, ReturnEvent
from loyalty.application.expressions import evaluate_expressions, purchase_variables
from loyalty.domain.program import PointValue, ProgramSettings
from loyalty.domain.rules import (
    OrderFacts,
    Rule,
    RuleEvaluation,
    Trigger,
    cap_results,
    evaluate_action,
    evaluate_purchase,
    period_end,
    period_key,
    period_start,
)

MemberAttributes = Callable[[str], Mapping[str, Any]]


@dataclass
class SimulationReport:
    """What a program version earned on a history of events."""

    events: int = 0
    purchases: int = 0
    actions: int = 0
    returns: int = 0
    skipped: int = 0
    points: int = 0
    points_by_rule: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    points_by_month: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    members_earning: set[str] = field(default_factory=set)
    members_by_rule: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    caps_hit: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    budgets_exhausted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    point_value: PointValue = field(default_factory=PointValue)
    """What a point is worth to the program: the report's costs use it."""

    def as_dict(self) -> dict[str, Any]:
        value = self.point_value
        return {
            "events": self.events,
            "purchases": self.purchases,
            "actions": self.actions,
            "returns": self.returns,
            "skipped": self.skipped,
            "points": self.points,
            "points_by_rule": dict(sorted(self.points_by_rule.items())),
            "points_by_month": dict(sorted(self.points_by_month.items())),
            "members_earning": len(self.members_earning),
            "members_by_rule": {k: len(v) for k, v in sorted(self.members_by_rule.items())},
            "caps_hit": dict(sorted(self.caps_hit.items())),
            "budgets_exhausted": dict(sorted(self.budgets_exhausted.items())),
            "point_value": {"points": value.points, "money_minor": value.money_minor},
            "cost_minor": value.of(self.points),
            "cost_by_rule_minor": {k: value.of(v) for k, v in sorted(self.points_by_rule.items())},
            "cost_by_month_minor": {
                k: value.of(v) for k, v in sorted(self.points_by_month.items())
            },
        }


@dataclass
class _Usage:
    """Per-member awards and budget use, replayed in memory."""

    awards: dict[tuple[str, str], list[tuple[datetime, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    budgets: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))


def _cap(
    rules: Mapping[str, Rule],
    evaluation: RuleEvaluation,
    usage: _Usage,
    report: SimulationReport,
    *,
    member: str,
    at: datetime,
    settings: ProgramSettings,
) -> RuleEvaluation:
    zone = zone_of(settings)
    allowed: dict[str, int] = {}
    for result in evaluation.results:
        rule = rules[result.rule_id]
        if not rule.limited:
            continue
        limit = result.points
        for cap in rule.member_caps:
            since = period_start(cap.period, at, zone)
            until = period_end(cap.period, at, zone)
            past = [
                p
                for when, p in usage.awards[(member, rule.rule_id)]
                if (since is None or when >= since) and (until is None or when < until)
            ]
            if cap.max_count is not None and len(past) >= cap.max_count:
                limit = 0
            if cap.max_points is not None:
                limit = min(limit, cap.max_points - sum(past))
        if rule.budget is not None:
            key = (rule.rule_id, period_key(rule.budget.period, at, zone))
            limit = min(limit, rule.budget.points - usage.budgets[key])
            if limit < result.points:
                report.budgets_exhausted[rule.rule_id] += 1
        if limit < result.points and rule.member_caps:
            report.caps_hit[rule.rule_id] += 1
        allowed[rule.rule_id] = max(0, limit)
    capped = cap_results(evaluation, allowed)
    for result in capped.results:
        rule = rules[result.rule_id]
        if rule.member_caps:
            usage.awards[(member, rule.rule_id)].append((at, result.points))
        if rule.budget is not None:
            usage.budgets[(rule.rule_id, period_key(rule.budget.period, at, zone))] += result.points
    return capped


def _member(ref: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """What expressions see of a member in a backtest: their id and attributes (the history
    does not carry the rest of the profile)."""
    external = ref[len("ext:") :] if ref.startswith("ext:") else None
    return {
        "id": ref,
        "external_id": external,
        "enrolled_at": datetime(1970, 1, 1, tzinfo=UTC),
        "attributes": dict(attributes),
    }


def simulate(
    settings: ProgramSettings,
    history: Iterable[PurchaseEvent | ReturnEvent | ActionEvent],
    *,
    member_attributes: MemberAttributes = lambda _member: {},
) -> SimulationReport:
    """Replay ``history`` (in the order given) against ``settings``. Returns count only for
    what ``return`` rules pay (their reversal takes back what a purchase earned, which is not
    re-counted); they are skipped when the program has no such rule or the history lacks
    their order. Events in another currency are skipped."""
    rules = {rule.rule_id: rule for rule in settings.rules}
    zone = zone_of(settings)
    usage = _Usage()
    report = SimulationReport(point_value=settings.point_value)
    orders: dict[str, tuple[int, int]] = {}
    buyers: dict[str, str] = {}
    pays_returns = any(rule.trigger is Trigger.RETURN for rule in settings.rules)
    for event in history:
        report.events += 1
        if isinstance(event, ReturnEvent):
            buyer = buyers.get(event.order_id)
            if not pays_returns or buyer is None:
                report.skipped += 1
                continue
            member = buyer
        else:
            member = event.member.as_ref()
        attributes = member_attributes(member)
        if isinstance(event, ReturnEvent):
            # Only the return rules' own points: the reversal takes back what the purchase
            # earned, which the purchase's figures already count.
            report.returns += 1
            outcomes = evaluate_expressions(
                settings,
                purchase=None,
                member=_member(member, attributes),
                event={"type": "return", "action": None, "attributes": {}},
                now=event.occurred_at,
            )
            evaluation = evaluate_action(
                settings.rules,
                action=None,
                occurred_at=event.occurred_at,
                zone=zone,
                member_attributes=attributes,
                expression_results=outcomes.conditions,
                formula_results=outcomes.formulas,
                trigger=Trigger.RETURN,
            )
        elif isinstance(event, PurchaseEvent):
            if event.currency != settings.currency:
                report.skipped += 1
                continue
            report.purchases += 1
            buyers[event.id] = member
            bought = event.to_purchase()
            lines = list(bought.lines)
            outcomes = evaluate_expressions(
                settings,
                purchase=purchase_variables(bought),
                member=_member(member, attributes),
                event={"type": "purchase", "action": None, "attributes": {}},
                now=event.occurred_at,
            )
            base = sum(line.base_minor for line in lines) if lines else event.total_minor
            count, total = orders.get(member, (0, 0))
            evaluation = evaluate_purchase(
                settings.rules,
                order=OrderFacts(
                    event.occurred_at,
                    event.total_minor,
                    event.channel,
                    event.store,
                    base_minor=base,
                    member_average_minor=total // count if count else None,
                ),
                lines=lines,
                zone=zone,
                member_attributes=attributes,
                expression_results=outcomes.conditions,
                formula_results=outcomes.formulas,
            )
            if lines:  # the live average counts orders sent with lines
                orders[member] = (count + 1, total + base)
        else:
            report.actions += 1
            outcomes = evaluate_expressions(
                settings,
                purchase=None,
                member=_member(member, attributes),
                event={"type": "action", "action": event.action, "attributes": event.attributes},
                now=event.occurred_at,
            )
            evaluation = evaluate_action(
                settings.rules,
                action=event.action,
                occurred_at=event.occurred_at,
                zone=zone,
                member_attributes=attributes,
                expression_results=outcomes.conditions,
                formula_results=outcomes.formulas,
            )
        evaluation = _cap(
            rules,
            evaluation,
            usage,
            report,
            member=member,
            at=event.occurred_at,
            settings=settings,
        )
        if evaluation.points <= 0:
            continue
        report.points += evaluation.points
        report.members_earning.add(member)
        month = event.occurred_at.astimezone(zone).strftime("%Y-%m")
        report.points_by_month[month] += evaluation.points
        for result in evaluation.results:
            report.points_by_rule[result.rule_id] += result.points
            report.members_by_rule[result.rule_id].add(member)
    return report


def compare(candidate: SimulationReport, baseline: SimulationReport) -> dict[str, Any]:
    """Points per rule and per month, candidate minus baseline."""
    rules = sorted(set(candidate.points_by_rule) | set(baseline.points_by_rule))
    months = sorted(set(candidate.points_by_month) | set(baseline.points_by_month))
    return {
        "points": candidate.points - baseline.points,
        # Each version's points at its own value: a change of value is a change of cost.
        "cost_minor": candidate.point_value.of(candidate.points)
        - baseline.point_value.of(baseline.points),
        "points_by_rule": {
            r: candidate.points_by_rule.get(r, 0) - baseline.points_by_rule.get(r, 0) for r in rules
        },
        "points_by_month": {
            m: candidate.points_by_month.get(m, 0) - baseline.points_by_month.get(m, 0)
            for m in months
        },
    }
