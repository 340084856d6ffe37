"""Earning rules as pure functions: conditions, effects, stacking and exclusive groups."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from loyalty.domain.points import Rounding
from loyalty.domain.purchase import PurchaseLine
from loyalty.domain.rules import (
    Conditions,
    Effect,
    EffectKind,
    ItemFilter,
    OrderFacts,
    Rule,
    Trigger,
    evaluate_action,
    evaluate_purchase,
)

PARIS = ZoneInfo("Europe/Paris")
SATURDAY_NOON_UTC = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
MONDAY_NOON_UTC = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
BASE = Rule("base", "Base", Trigger.PURCHASE, Effect(EffectKind.PER_SPEND, 1, 100), priority=1001)
LINES = [
    PurchaseLine("1", "MILK", 2, 150, category="dairy", brand="Private"),
    PurchaseLine("2", "WINE", 1, 1200, category="wine", brand="Chateau"),
    PurchaseLine("3", "GIFT", 1, 2500, category="gift_card", brand=None),
]


def _order(at=MONDAY_NOON_UTC, total=4000, channel="store", store="S1"):
    return OrderFacts(at, total, channel, store)


def _evaluate(rules, *, order=None, lines=LINES, attributes=None, expressions=None):
    return evaluate_purchase(
        rules,
        order=order or _order(),
        lines=lines,
        zone=PARIS,
        member_attributes=attributes or {},
        expression_results=expressions or {},
    )


def test_the_base_rate_alone_earns_on_every_line_and_adds_up():
    result = _evaluate([BASE])
    # 300 + 1200 + 2500 = 4000 minor -> 40 points, split 3 / 12 / 25.
    assert result.points == 40
    assert [result.line_points(i) for i in ("1", "2", "3")] == [3, 12, 25]


def test_a_multiplier_doubles_only_the_private_label_lines():
    double = Rule(
        "private-2x",
        "2x private label",
        Trigger.PURCHASE,
        Effect(EffectKind.MULTIPLIER, factor_percent=200),
        conditions=Conditions(include=ItemFilter(brands=frozenset({"Private"}))),
    )
    result = _evaluate([BASE, double])
    assert result.points == 43
    assert result.line_points("1") == 6
    assert result.line_breakdown("1") == [
        {"rule": "base", "points": 3},
        {"rule": "private-2x", "points": 3},
    ]
    assert result.line_points("2") == 12


def test_excluded_categories_earn_nothing_from_a_rule():
    no_gift_cards = Rule(
        "base-no-gift",
        "1 per euro, not on gift cards",
        Trigger.PURCHASE,
        Effect(EffectKind.PER_SPEND, 1, 100),
        conditions=Conditions(exclude=ItemFilter(categories=frozenset({"gift_card"}))),
    )
    result = _evaluate([no_gift_cards])
    assert result.points == 15
    assert result.line_points("3") == 0


def test_weekend_rules_use_the_program_time_zone():
    weekend = Rule(
        "weekend",
        "Weekend bonus",
        Trigger.PURCHASE,
        Effect(EffectKind.FIXED, points=50),
        conditions=Conditions(days_of_week=frozenset({5, 6})),
    )
    assert _evaluate([weekend], order=_order(at=SATURDAY_NOON_UTC)).points == 50
    assert _evaluate([weekend], order=_order(at=MONDAY_NOON_UTC)).points == 0
    # Sunday 23:30 UTC is already Monday 00:30 in Paris.
    late_sunday = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    assert _evaluate([weekend], order=_order(at=late_sunday)).points == 0


def test_an_hours_window_can_wrap_midnight():
    night = Rule(
        "night",
        "Night owl",
        Trigger.PURCHASE,
        Effect(EffectKind.FIXED, points=5),
        conditions=Conditions(hours_from=time(22, 0), hours_until=time(2, 0)),
    )
    at_23_paris = datetime(2026, 11, 23, 22, 0, tzinfo=UTC)
    at_noon_paris = MONDAY_NOON_UTC
    assert _evaluate([night], order=_order(at=at_23_paris)).points == 5
    assert _evaluate([night], order=_order(at=at_noon_paris)).points == 0


def test_only_the_best_rule_of_an_exclusive_group_pays():
    small = Rule(
        "small",
        "Small",
        Trigger.PURCHASE,
        Effect(EffectKind.FIXED, points=10),
        exclusive_group="welcome",
    )
    big = Rule(
        "big",
        "Big",
        Trigger.PURCHASE,
        Effect(EffectKind.FIXED, points=25),
        exclusive_group="welcome",
    )
    result = _evaluate([small, big])
    assert [(r.rule_id, r.points) for r in result.results] == [("big", 25)]


def test_minimum_total_channel_store_window_and_member_attributes_all_must_hold():
    rule = Rule(
        "vip-web",
        "VIP web bonus",
        Trigger.PURCHASE,
        Effect(EffectKind.FIXED, points=100),
        conditions=Conditions(
            min_total_minor=3000,
            channels=frozenset({"web"}),
            member_attributes={"vip": True},
        ),
        starts_at=datetime(2026, 11, 1, tzinfo=UTC),
        ends_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    ok = _order(channel="web")
    assert _evaluate([rule], order=ok, attributes={"vip": True}).points == 100
    assert _evaluate([rule], order=ok, attributes={"vip": False}).points == 0
    assert _evaluate([rule], order=_order(channel="store"), attributes={"vip": True}).points == 0
    assert (
        _evaluate([rule], order=_order(channel="web", total=2999), attributes={"vip": True}).points
        == 0
    )
    december = _order(at=datetime(2026, 12, 1, tzinfo=UTC), channel="web")
    assert _evaluate([rule], order=december, attributes={"vip": True}).points == 0


def test_a_rule_with_an_expression_applies_only_when_the_expression_held():
    rule = Rule(
        "expr",
        "Expr",
        Trigger.PURCHASE,
        Effect(EffectKind.FIXED, points=7),
        conditions=Conditions(has_expression=True),
    )
    assert _evaluate([rule], expressions={"expr": True}).points == 7
    assert _evaluate([rule], expressions={"expr": False}).points == 0
    assert _evaluate([rule]).points == 0


def test_per_spend_rules_round_once_by_their_own_mode():
    ceil = Rule(
        "ceil",
        "Ceil",
        Trigger.PURCHASE,
        Effect(EffectKind.PER_SPEND, 1, 1000, rounding=Rounding.CEIL),
    )
    # 4000 / 1000 = 4 exactly; 4001 -> 5 with ceil.
    assert _evaluate([ceil]).points == 4
    lines = [PurchaseLine("1", "A", 1, 4001)]
    assert _evaluate([ceil], lines=lines).points == 5


def test_an_order_without_lines_earns_on_its_total():
    result = _evaluate([BASE], lines=[], order=_order(total=1999))
    assert result.points == 19
    assert result.line_points("order") == 19


def test_an_action_earns_the_fixed_points_of_its_rules_only():
    review = Rule(
        "review",
        "Review",
        Trigger.ACTION,
        Effect(EffectKind.FIXED, points=50),
        action="review_posted",
    )
    share = Rule(
        "share", "Share", Trigger.ACTION, Effect(EffectKind.FIXED, points=5), action="social_share"
    )
    result = evaluate_action(
        [BASE, review, share],
        action="review_posted",
        occurred_at=MONDAY_NOON_UTC,
        zone=PARIS,
        member_attributes={},
        expression_results={},
    )
    assert [(r.rule_id, r.points) for r in result.results] == [("review", 50)]
