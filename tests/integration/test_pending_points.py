"""Points held in a pending period: visible, not spendable, returned with the purchase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loyalty.application import balances, events, programs, redemptions
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.audit import audit_ledger
from loyalty.application.event_documents import ActionEvent, PurchaseEvent, ReturnEvent
from loyalty.application.program_document import ProgramDocument
from loyalty.domain.errors import InsufficientPoints

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def _setup(engine):
    return _program_with_rules(
        engine, [], points={"pending_days": 14, "expiry": {"policy": "after_days", "days": 365}}
    )


def _buy(engine, principal, program_id, order_id, amount, at):
    event = PurchaseEvent.model_validate(
        {
            "type": "purchase",
            "id": order_id,
            "member": {"external_id": "C1"},
            "occurred_at": at.isoformat(),
            "currency": "EUR",
            "total_minor": amount,
            "lines": [{"line_id": "1", "unit_price_minor": amount}],
        }
    )
    return events.submit_event(engine, principal, program_id, event, now=at).body


def _balance(engine, principal, program_id, at):
    view = balances.get_balance(engine, principal, program_id, "ext:C1", now=at)
    return view["balance"], view["pending"], view["available"]


def test_pending_points_show_but_cannot_be_spent_until_the_period_ends(engine):
    principal, program_id = _setup(engine)
    body = _buy(engine, principal, program_id, "O1", 5000, T0)
    assert body["lot"]["available_at"] == (T0 + timedelta(days=14)).isoformat()
    assert _balance(engine, principal, program_id, T0) == (50, 50, 0)
    with pytest.raises(InsufficientPoints) as refused:
        redemptions.redeem_points(
            engine,
            principal,
            program_id,
            "ext:C1",
            points=10,
            reason=None,
            reference=None,
            idempotency_key="r1",
            now=T0 + timedelta(days=13),
        )
    assert refused.value.context == {"points_required": 10, "points_available": 0}
    later = T0 + timedelta(days=14)
    assert _balance(engine, principal, program_id, later) == (50, 0, 50)
    redemptions.redeem_points(
        engine,
        principal,
        program_id,
        "ext:C1",
        points=10,
        reason=None,
        reference=None,
        idempotency_key="r2",
        now=later,
    )
    assert _balance(engine, principal, program_id, later) == (40, 0, 40)
    assert audit_ledger(engine) == []


def test_a_return_inside_the_pending_period_cancels_the_held_points(engine):
    principal, program_id = _setup(engine)
    _buy(engine, principal, program_id, "OLD", 2000, T0 - timedelta(days=30))
    _buy(engine, principal, program_id, "O1", 5000, T0)
    assert _balance(engine, principal, program_id, T0) == (70, 50, 20)
    returned = events.submit_event(
        engine,
        principal,
        program_id,
        ReturnEvent.model_validate(
            {
                "type": "return",
                "id": "R1",
                "order_id": "O1",
                "occurred_at": (T0 + timedelta(days=3)).isoformat(),
            }
        ),
        now=T0 + timedelta(days=3),
    ).body
    assert (returned["points_taken"], returned["debt_added"]) == (50, 0)
    # The held points went back; the older, spendable points are untouched.
    assert _balance(engine, principal, program_id, T0 + timedelta(days=3)) == (20, 0, 20)
    assert audit_ledger(engine) == []


def _program_with_rules(engine, rules, *, points=None):
    issued = create_api_key(
        engine, tenant_name="t", name="k", scopes=[Scope.ADMIN], program_id=None, now=T0
    )
    principal = authenticate(engine, issued.token)
    doc = ProgramDocument.model_validate(
        {
            "name": "Shop",
            "currency": "EUR",
            "points": points or {},
            "enrollment": {"auto_enroll_on_purchase": True},
            "rules": rules,
        }
    )
    program_id = str(programs.create_program(engine, principal, doc, now=T0).body["id"])
    return principal, program_id


def test_a_rule_holds_its_own_points_for_its_own_pending_period(engine):
    principal, program_id = _program_with_rules(
        engine,
        [
            {
                "id": "big-basket",
                "name": "100 points on baskets over 40 EUR, held 30 days",
                "trigger": "purchase",
                "conditions": {"min_total_minor": 4000},
                "effect": {"type": "fixed", "points": 100},
                "pending_days": 30,
            }
        ],
    )
    body = _buy(engine, principal, program_id, "O1", 5000, T0)
    # The base rate's 50 points are spendable at once; the bonus is its own lot, held.
    assert [(lot["points"], lot["available_at"]) for lot in body["lots"]] == [
        (50, None),
        (100, (T0 + timedelta(days=30)).isoformat()),
    ]
    assert body["lot"] == body["lots"][0]
    assert _balance(engine, principal, program_id, T0) == (150, 100, 50)
    with pytest.raises(InsufficientPoints):
        redemptions.redeem_points(
            engine,
            principal,
            program_id,
            "ext:C1",
            points=51,
            reason=None,
            reference=None,
            idempotency_key="r1",
            now=T0 + timedelta(days=29),
        )
    assert _balance(engine, principal, program_id, T0 + timedelta(days=30)) == (150, 0, 150)
    assert audit_ledger(engine) == []


def test_a_rule_without_its_own_period_follows_the_program_and_zero_releases_at_once(engine):
    principal, program_id = _program_with_rules(
        engine,
        [
            {
                "id": "follows",
                "name": "Fixed bonus under the program's period",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 7},
            },
            {
                "id": "instant",
                "name": "Fixed bonus spendable at once",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 5},
                "pending_days": 0,
            },
        ],
        points={"pending_days": 14},
    )
    body = _buy(engine, principal, program_id, "O1", 1000, T0)
    assert [(lot["points"], lot["available_at"]) for lot in body["lots"]] == [
        (5, None),
        (10 + 7, (T0 + timedelta(days=14)).isoformat()),
    ]
    assert _balance(engine, principal, program_id, T0) == (22, 17, 5)


def test_an_action_rule_can_hold_points_until_moderation_and_a_return_takes_held_first(engine):
    principal, program_id = _program_with_rules(
        engine,
        [
            {
                "id": "review",
                "name": "Review bonus, held a week",
                "trigger": "action",
                "action": "review_posted",
                "effect": {"type": "fixed", "points": 40},
                "pending_days": 7,
            },
            {
                "id": "big-basket",
                "name": "Bonus held for the return window",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 20},
                "pending_days": 14,
            },
        ],
    )
    review = events.submit_event(
        engine,
        principal,
        program_id,
        ActionEvent.model_validate(
            {
                "type": "action",
                "id": "rev-1",
                "action": "review_posted",
                "member": {"external_id": "C1"},
                "occurred_at": T0.isoformat(),
            }
        ),
        now=T0,
    ).body
    assert [(lot["points"], lot["available_at"]) for lot in review["lots"]] == [
        (40, (T0 + timedelta(days=7)).isoformat())
    ]
    _buy(engine, principal, program_id, "O1", 3000, T0)
    assert _balance(engine, principal, program_id, T0) == (90, 60, 30)
    returned = events.submit_event(
        engine,
        principal,
        program_id,
        ReturnEvent.model_validate(
            {"type": "return", "id": "R1", "order_id": "O1", "occurred_at": T0.isoformat()}
        ),
        now=T0 + timedelta(days=1),
    ).body
    assert (returned["points_taken"], returned["debt_added"]) == (50, 0)
    # Both of the purchase's lots went back; the review's held lot is untouched.
    assert _balance(engine, principal, program_id, T0 + timedelta(days=1)) == (40, 40, 0)
    assert audit_ledger(engine) == []
