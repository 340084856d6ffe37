"""``available`` in a member's balance is what a redemption can actually burn, however many
lots the member holds and however many of them are past their expiry but not yet swept by the
expiry job (as happens after importing history: a late purchase expires from when it
occurred)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.balances import get_balance
from loyalty.application.batch import record_events_batch
from loyalty.application.event_documents import MemberRef, PurchaseEvent
from loyalty.application.members import MemberProfile, enroll_member
from loyalty.application.program_document import (
    ExpiryDocument,
    PointsWalletDocument,
    ProgramDocument,
)
from loyalty.application.programs import create_program
from loyalty.application.redemptions import redeem_points
from loyalty.domain.errors import InsufficientPoints
from loyalty.domain.program import ExpiryPolicy

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(overdue_lots=101, fresh_points=5)
@given(
    overdue_lots=st.integers(min_value=0, max_value=120),
    fresh_points=st.integers(min_value=0, max_value=40),
)
def test_the_available_balance_is_exactly_what_a_redemption_can_burn(
    engine, overdue_lots, fresh_points
):
    n = next(_ids)
    principal = authenticate(
        engine,
        create_api_key(
            engine,
            tenant_name=f"available-{n}",
            name="admin",
            scopes=[Scope.ADMIN],
            program_id=None,
            now=NOW,
        ).token,
    )
    document = ProgramDocument(
        name="thirty days",
        currency="EUR",
        points=PointsWalletDocument(expiry=ExpiryDocument(policy=ExpiryPolicy.AFTER_DAYS, days=30)),
    )
    program_id = create_program(engine, principal, document, now=NOW).body["id"]
    member_id = enroll_member(
        engine, principal, program_id, external_id="C", profile=MemberProfile(), now=NOW
    ).body["id"]

    def purchase(order_id: str, occurred_at: datetime, euros: int) -> PurchaseEvent:
        return PurchaseEvent(
            type="purchase",
            id=order_id,
            member=MemberRef(id=member_id),
            occurred_at=occurred_at,
            currency="EUR",
            total_minor=euros * 100,
        )

    # History imported late: one point per purchase, each 60 days old (so expired 30 days
    # ago) and a minute apart (so every lot has its own expiry); then today's purchase.
    history = [
        purchase(f"old-{i}", NOW - timedelta(days=60, minutes=i), 1) for i in range(overdue_lots)
    ]
    if fresh_points:
        history.append(purchase("today", NOW, fresh_points))
    results = record_events_batch(engine, principal, program_id, history, now=NOW)
    assert all(r.accepted for r in results)

    view = get_balance(engine, principal, program_id, member_id, now=NOW)
    assert view["balance"] == overdue_lots + fresh_points
    assert view["available"] == fresh_points

    def redeem(points: int) -> None:
        redeem_points(
            engine,
            principal,
            program_id,
            member_id,
            points=points,
            reason=None,
            reference=None,
            idempotency_key=f"redeem-{points}",
            now=NOW,
        )

    with pytest.raises(InsufficientPoints) as refused:
        redeem(view["available"] + 1)
    assert refused.value.context["points_available"] == view["available"]
    if view["available"]:
        redeem(view["available"])
        assert get_balance(engine, principal, program_id, member_id, now=NOW)["available"] == 0
