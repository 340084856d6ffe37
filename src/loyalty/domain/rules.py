"""Earning rules: which events and lines a rule applies to, and what it earns.

Evaluation is a pure function of the event, the member's attributes, the program's rules and
the results of any merchant expressions (evaluated by the caller, bound once per event). The
same function serves the real purchase and the "what will I earn" quote.

Order of evaluation, for one purchase:

1. Every active rule whose conditions hold selects its eligible lines (all lines, narrowed by
   ``include`` and ``exclude`` filters).
2. ``per_spend`` and ``fixed`` rules earn: per_spend converts the eligible lines' base at the
   rule's rate, rounded once by the rule's mode; fixed points are spread over the eligible
   lines by base. Either way, line figures add up exactly to the rule's total.
3. ``multiplier`` rules then add ``(factor_percent - 100)%`` of what ``per_spend`` rules
   earned in step 2 on their eligible lines (200 doubles them), rounded once per rule; fixed
   bonuses are not multiplied.
4. In an ``exclusive_group``, only the rule that earns the most pays (ties: higher priority,
   then rule id); groups are resolved within step 2 and within step 3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from loyalty.domain.points import Rounding, allocate, convert_spend, divide
from loyalty.domain.purchase import PurchaseLine

BASE_RULE_ID = "base"


class Trigger(StrEnum):
    PURCHASE = "purchase"
    ACTION = "action"
    ENROLLMENT = "enrollment"
    RETURN = "return"
    """Fixed or formula points when a member returns goods (on top of the exact reversal of
    what the purchase earned, which needs no rule)."""


class EffectKind(StrEnum):
    PER_SPEND = "per_spend"
    FIXED = "fixed"
    MULTIPLIER = "multiplier"
    FORMULA = "formula"
    """Points computed by a merchant formula (CEL), paid like a fixed bonus."""


FORMULA_POINTS_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class ItemFilter:
    skus: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    brands: frozenset[str] = frozenset()

    def matches(self, line: PurchaseLine) -> bool:
        return (
            (line.sku is not None and line.sku in self.skus)
            or (line.category is not None and line.category in self.categories)
            or (line.brand is not None and line.brand in self.brands)
        )


@dataclass(frozen=True, slots=True)
class Conditions:
    min_total_minor: int | None = None
    channels: frozenset[str] | None = None
    stores: frozenset[str] | None = None
    days_of_week: frozenset[int] | None = None
    """0 = Monday ... 6 = Sunday, in the program's time zone."""
    hours_from: time | None = None
    hours_until: time | None = None
    """Local time window [from, until); a window that wraps midnight is allowed."""
    include: ItemFilter | None = None
    exclude: ItemFilter | None = None
    member_attributes: Mapping[str, Any] = field(default_factory=dict)
    has_expression: bool = False
    above_average_percent: int | None = None
    """The order's base must be at least this many percent above the member's average order
    (spend 10% more than usual: 10). A member without past orders does not qualify."""
    tiers: frozenset[str] | None = None
    """The member's current tier is one of these."""
    plans: frozenset[str] | None = None
    """The member has a membership of one of these plans that grants benefits now."""


@dataclass(frozen=True, slots=True)
class Effect:
    kind: EffectKind
    points: int = 0
    per_spend_minor: int = 100
    rounding: Rounding = Rounding.FLOOR
    factor_percent: int = 100
    earn_on_kinds: frozenset[str] = frozenset({"product"})
    """Line kinds a per_spend rule earns on; gift cards, shipping, tax... only when named."""


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"
    LIFETIME = "lifetime"


@dataclass(frozen=True, slots=True)
class MemberCap:
    """At most ``max_count`` awards, or ``max_points`` points, per member per period."""

    period: Period
    max_count: int | None = None
    max_points: int | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """At most ``points`` points for all members together, per period."""

    points: int
    period: Period = Period.LIFETIME


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    name: str
    trigger: Trigger
    effect: Effect
    conditions: Conditions = field(default_factory=Conditions)
    action: str | None = None
    priority: int = 0
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    exclusive_group: str | None = None
    member_caps: tuple[MemberCap, ...] = ()
    budget: Budget | None = None
    pending_days: int | None = None
    """Days this rule's points are held before they can be spent; ``None``: the program's
    pending period for purchase rules, none for other triggers."""

    @property
    def limited(self) -> bool:
        return bool(self.member_caps) or self.budget is not None

    def active_at(self, moment: datetime) -> bool:
        if self.starts_at is not None and moment < self.starts_at:
            return False
        return not (self.ends_at is not None and moment >= self.ends_at)


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """What order-level conditions look at."""

    occurred_at: datetime
    total_minor: int
    channel: str | None
    store: str | None
    base_minor: int = 0
    """The order's earn base (lines after discounts)."""
    member_average_minor: int | None = None
    """The member's average order base before this one (None: no past orders)."""
    member_tier: str | None = None
    """The member's tier before this event (None: the program has no tiers)."""
    member_tiers: frozenset[str] = frozenset()
    """Every tier the member holds, one per tier set (the main one included); a rule naming
    tiers applies when the member holds any of them."""
    member_plans: frozenset[str] = frozenset()
    """Plans whose membership grants the member benefits now."""


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule_id: str
    points: int
    line_points: dict[str, int]
    """Points per line id; an order without lines books them on the line id ``order``."""
    inputs: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """What the effect computed from: the explanation's figures (a per_spend rule's eligible
    base and rate, a multiplier's factor and the points it multiplied, a formula's result)."""


@dataclass(frozen=True, slots=True)
class RuleEvaluation:
    results: list[RuleResult]

    @property
    def points(self) -> int:
        return sum(r.points for r in self.results)

    def line_points(self, line_id: str) -> int:
        return sum(r.line_points.get(line_id, 0) for r in self.results)

    def line_breakdown(self, line_id: str) -> list[dict[str, Any]]:
        return [
            {"rule": r.rule_id, "points": r.line_points[line_id]}
            for r in self.results
            if r.line_points.get(line_id)
        ]


def _in_window(local: time, start: time | None, end: time | None) -> bool:
    if start is None and end is None:
        return True
    start = start or time(0, 0)
    if end is None:
        return local >= start
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def _tiers_held(order: OrderFacts) -> frozenset[str]:
    if order.member_tier is None:
        return order.member_tiers
    return order.member_tiers | {order.member_tier}


def order_conditions_hold(
    conditions: Conditions,
    order: OrderFacts,
    *,
    zone: ZoneInfo,
    member_attributes: Mapping[str, Any],
    expression_result: bool | None,
) -> bool:
    c = conditions
    if c.min_total_minor is not None and order.total_minor < c.min_total_minor:
        return False
    if c.channels is not None and (order.channel or "") not in c.channels:
        return False
    if c.stores is not None and (order.store or "") not in c.stores:
        return False
    if c.days_of_week is not None or c.hours_from is not None or c.hours_until is not None:
        local = order.occurred_at.astimezone(zone)  # only when asked: a conversion per rule
        if c.days_of_week is not None and local.weekday() not in c.days_of_week:
            return False
        if not _in_window(local.time(), c.hours_from, c.hours_until):
            return False
    if c.above_average_percent is not None:
        average = order.member_average_minor
        if average is None or order.base_minor * 100 < average * (100 + c.above_average_percent):
            return False
    if c.tiers is not None and not (c.tiers & _tiers_held(order)):
        return False
    if c.plans is not None and not (c.plans & order.member_plans):
        return False
    for key, wanted in c.member_attributes.items():
        if member_attributes.get(key) != wanted:
            return False
    return not (c.has_expression and expression_result is not True)


def eligible_lines(conditions: Conditions, lines: Sequence[PurchaseLine]) -> list[PurchaseLine]:
    chosen = [
        line for line in lines if conditions.include is None or conditions.include.matches(line)
    ]
    if conditions.exclude is not None:
        chosen = [line for line in chosen if not conditions.exclude.matches(line)]
    return chosen


def _spread(points: int, lines: Sequence[PurchaseLine]) -> dict[str, int]:
    """Fixed points over the eligible lines by base: over the products among them when there
    are any (a returned gift card or shipping line should not take a bonus back)."""
    if not lines:
        return {"order": points}
    products = [line for line in lines if line.kind == "product"]
    lines = products or lines
    bases = [line.base_minor for line in lines]
    if sum(bases) == 0:
        # Free lines share fixed points evenly rather than losing them.
        bases = [1 for _ in lines]
    return dict(zip((line.line_id for line in lines), allocate(points, bases), strict=True))


def _fixed_points(rule: Rule, formula_results: Mapping[str, int] | None) -> int:
    """A fixed effect's points, or a formula's result kept within 0..FORMULA_POINTS_MAX (a
    formula that computes a negative amount pays nothing; it never takes points)."""
    if rule.effect.kind is EffectKind.FIXED:
        return rule.effect.points
    computed = (formula_results or {}).get(rule.rule_id, 0)
    return max(0, min(computed, FORMULA_POINTS_MAX))


def _fixed_inputs(rule: Rule, formula_results: Mapping[str, int] | None) -> dict[str, Any]:
    if rule.effect.kind is EffectKind.FIXED:
        return {"effect": "fixed", "points": rule.effect.points}
    # The formula's own result, before it is kept within 0..FORMULA_POINTS_MAX.
    return {"effect": "formula", "result": (formula_results or {}).get(rule.rule_id, 0)}


def _best_per_group(results: list[tuple[Rule, RuleResult]]) -> list[tuple[Rule, RuleResult]]:
    best: dict[str, tuple[Rule, RuleResult]] = {}
    kept: list[tuple[Rule, RuleResult]] = []
    for rule, result in results:
        if rule.exclusive_group is None:
            kept.append((rule, result))
            continue
        current = best.get(rule.exclusive_group)
        key = (result.points, rule.priority, rule.rule_id)
        if current is None or key > (current[1].points, current[0].priority, current[0].rule_id):
            best[rule.exclusive_group] = (rule, result)
    kept.extend(best.values())
    return kept


def evaluate_purchase(
    rules: Sequence[Rule],
    *,
    order: OrderFacts,
    lines: Sequence[PurchaseLine],
    zone: ZoneInfo,
    member_attributes: Mapping[str, Any],
    expression_results: Mapping[str, bool],
    formula_results: Mapping[str, int] | None = None,
) -> RuleEvaluation:
    """What each rule earns on a purchase. A purchase without lines is one line, ``order``,
    whose base is the order total."""
    if not lines:
        lines = [PurchaseLine("order", None, 1, order.total_minor)]
    applicable: list[tuple[Rule, list[PurchaseLine]]] = []
    for rule in sorted(rules, key=lambda r: -r.priority):
        if rule.trigger is not Trigger.PURCHASE or not rule.active_at(order.occurred_at):
            continue
        if not order_conditions_hold(
            rule.conditions,
            order,
            zone=zone,
            member_attributes=member_attributes,
            expression_result=expression_results.get(rule.rule_id),
        ):
            continue
        chosen = eligible_lines(rule.conditions, lines)
        if chosen:
            applicable.append((rule, chosen))

    first: list[tuple[Rule, RuleResult]] = []
    for rule, chosen in applicable:
        effect = rule.effect
        if effect.kind is EffectKind.PER_SPEND:
            spend_lines = [line for line in chosen if line.kind in effect.earn_on_kinds]
            base = sum(line.base_minor for line in spend_lines)
            pts = convert_spend(
                base,
                points=effect.points,
                per_spend_minor=effect.per_spend_minor,
                rounding=effect.rounding,
            )
            inputs = {
                "effect": effect.kind.value,
                "base_minor": base,
                "points": effect.points,
                "per_spend_minor": effect.per_spend_minor,
                "rounding": effect.rounding.value,
            }
            first.append(
                (rule, RuleResult(rule.rule_id, pts, _spread_by_base(pts, spend_lines), inputs))
            )
        elif effect.kind in (EffectKind.FIXED, EffectKind.FORMULA):
            pts = _fixed_points(rule, formula_results)
            first.append(
                (
                    rule,
                    RuleResult(
                        rule.rule_id,
                        pts,
                        _spread(pts, chosen),
                        _fixed_inputs(rule, formula_results),
                    ),
                )
            )
    first = _best_per_group(first)

    # Multipliers scale what was earned by spending; fixed bonuses spread over lines are not
    # multiplied (a "2x on our brand" doubles points per euro, not a basket bonus).
    earned_by_line: dict[str, int] = {}
    for rule, result in first:
        if rule.effect.kind is not EffectKind.PER_SPEND:
            continue
        for line_id, pts in result.line_points.items():
            earned_by_line[line_id] = earned_by_line.get(line_id, 0) + pts
    second: list[tuple[Rule, RuleResult]] = []
    for rule, chosen in applicable:
        if rule.effect.kind is not EffectKind.MULTIPLIER:
            continue
        weights = [earned_by_line.get(line.line_id, 0) for line in chosen]
        extra = divide(sum(weights) * (rule.effect.factor_percent - 100), 100, rule.effect.rounding)
        if extra <= 0:
            continue
        shares = allocate(extra, weights)
        line_points = dict(zip((line.line_id for line in chosen), shares, strict=True))
        inputs = {
            "effect": rule.effect.kind.value,
            "factor_percent": rule.effect.factor_percent,
            "multiplied_points": sum(weights),
            "rounding": rule.effect.rounding.value,
        }
        second.append((rule, RuleResult(rule.rule_id, extra, line_points, inputs)))
    second = _best_per_group(second)
    ordered = sorted(first + second, key=lambda pair: -pair[0].priority)
    return RuleEvaluation([result for _, result in ordered if result.points > 0])


def _spread_by_base(points: int, lines: Sequence[PurchaseLine]) -> dict[str, int]:
    bases = [line.base_minor for line in lines]
    if sum(bases) == 0:
        return {line.line_id: 0 for line in lines}
    return dict(zip((line.line_id for line in lines), allocate(points, bases), strict=True))


def evaluate_action(
    rules: Sequence[Rule],
    *,
    action: str | None,
    occurred_at: datetime,
    zone: ZoneInfo,
    member_attributes: Mapping[str, Any],
    expression_results: Mapping[str, bool],
    trigger: Trigger = Trigger.ACTION,
    formula_results: Mapping[str, int] | None = None,
    member_tier: str | None = None,
    member_plans: frozenset[str] = frozenset(),
    member_tiers: frozenset[str] = frozenset(),
) -> RuleEvaluation:
    """Fixed points for a custom action (a review, a referral, a profile completed...) or, with
    ``trigger=Trigger.ENROLLMENT`` or ``Trigger.RETURN``, for joining the program or for a
    return."""
    order = OrderFacts(
        occurred_at,
        0,
        None,
        None,
        member_tier=member_tier,
        member_tiers=member_tiers,
        member_plans=member_plans,
    )
    results: list[tuple[Rule, RuleResult]] = []
    for rule in sorted(rules, key=lambda r: -r.priority):
        if rule.trigger is not trigger or (trigger is Trigger.ACTION and rule.action != action):
            continue
        if not rule.active_at(occurred_at) or rule.effect.kind not in (
            EffectKind.FIXED,
            EffectKind.FORMULA,
        ):
            continue
        if order_conditions_hold(
            rule.conditions,
            order,
            zone=zone,
            member_attributes=member_attributes,
            expression_result=expression_results.get(rule.rule_id),
        ):
            pts = _fixed_points(rule, formula_results)
            results.append(
                (
                    rule,
                    RuleResult(
                        rule.rule_id,
                        pts,
                        {trigger.value: pts},
                        _fixed_inputs(rule, formula_results),
                    ),
                )
            )
    return RuleEvaluation([r for _, r in _best_per_group(results) if r.points > 0])


def period_start(period: Period, moment: datetime, zone: ZoneInfo) -> datetime | None:
    """Start of the period containing ``moment``, in the program's time zone (None for
    lifetime). Weeks start on Monday."""
    if period is Period.LIFETIME:
        return None
    local = moment.astimezone(zone)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        start = day
    elif period is Period.WEEK:
        start = day - timedelta(days=day.weekday())
    elif period is Period.MONTH:
        start = day.replace(day=1)
    else:
        start = day.replace(month=1, day=1)
    # Rebuild in the zone so a DST change between the start and now is honoured.
    return datetime(start.year, start.month, start.day, tzinfo=zone)


def period_end(period: Period, moment: datetime, zone: ZoneInfo) -> datetime | None:
    """Start of the next period (None for lifetime), so a late event counts only against its
    own period, not the ones after it."""
    start = period_start(period, moment, zone)
    if start is None:
        return None
    if period is Period.DAY:
        nxt = start.date() + timedelta(days=1)
    elif period is Period.WEEK:
        nxt = start.date() + timedelta(days=7)
    elif period is Period.MONTH:
        nxt = (start.date().replace(day=28) + timedelta(days=4)).replace(day=1)
    else:
        nxt = start.date().replace(year=start.year + 1)
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone)


def period_key(period: Period, moment: datetime, zone: ZoneInfo) -> str:
    start = period_start(period, moment, zone)
    return "lifetime" if start is None else f"{period.value}:{start.date().isoformat()}"


def cap_results(evaluation: RuleEvaluation, allowed: Mapping[str, int]) -> RuleEvaluation:
    """Pay each rule at most ``allowed[rule_id]`` points (rules not named are unchanged); a
    capped rule's lines keep their proportions and still add up exactly."""
    capped: list[RuleResult] = []
    for result in evaluation.results:
        limit = allowed.get(result.rule_id)
        if limit is None or limit >= result.points:
            capped.append(result)
            continue
        if limit <= 0:
            continue
        ids = list(result.line_points)
        shares = allocate(limit, [result.line_points[i] for i in ids])
        capped.append(
            RuleResult(
                result.rule_id,
                limit,
                dict(zip(ids, shares, strict=True)),
                {**result.inputs, "points_before_limits": result.points},
            )
        )
    return RuleEvaluation(capped)
