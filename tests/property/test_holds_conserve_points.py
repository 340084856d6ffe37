"""Points are conserved across checkout holds: whatever the order of reserves, captures
(for any part of a hold), releases and the expiry job, every point is with the member, held,
or captured, and the ledger audit holds."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loyalty.application import holds
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.audit import audit_ledger
from loyalty.application.balances import get_balance
from loyalty.application.batch import record_events_batch
from loyalty.application.event_documents import MemberRef, PurchaseEvent
from loyalty.application.program_document import ProgramDocument
from loyalty.application.programs import create_program
from loyalty.domain.errors import HoldExpired, HoldNotOpen, InsufficientPoints

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)

STEP = st.one_of(
    st.tuples(st.just("reserve"), st.integers(1, 80), st.integers(1, 600)),
    st.tuples(st.just("capture"), st.integers(0, 10), st.integers(0, 100)),
    st.tuples(st.just("release"), st.integers(0, 10), st.just(0)),
    st.tuples(st.just("wait"), st.integers(1, 900), st.just(0)),
    st.tuples(st.just("job"), st.just(0), st.just(0)),
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(STEP, min_size=1, max_size=14))
def test_reserve_capture_release_and_expiry_conserve_points(engine, steps):
    n = next(_ids)
    principal = authenticate(
        engine,
        create_api_key(
            engine,
            tenant_name=f"holds-{n}",
            name="a",
            scopes=[Scope.ADMIN],
            program_id=None,
            now=NOW,
        ).token,
    )
    document = ProgramDocument.model_validate(
        {"name": "h", "currency": "EUR", "enrollment": {"auto_enroll_on_purchase": True}}
    )
    program = create_program(engine, principal, document, now=NOW).body["id"]
    earned = 150
    purchase = PurchaseEvent(
        type="purchase",
        id=f"O{n}",
        member=MemberRef(external_id="C"),
        occurred_at=NOW,
        currency="EUR",
        total_minor=earned * 100,
    )
    [done] = record_events_batch(engine, principal, program, [purchase], now=NOW)
    assert done.accepted
    now = NOW
    open_holds: dict[str, int] = {}
    all_holds: list[str] = []
    captured = 0
    for i, (action, a, b) in enumerate(steps):
        if action == "reserve":
            try:
                body = holds.reserve(
                    engine,
                    principal,
                    program,
                    "ext:C",
                    points=a,
                    order_reference=None,
                    ttl_seconds=b,
                    idempotency_key=f"r{n}-{i}",
                    now=now,
                ).body
            except InsufficientPoints:
                continue
            open_holds[body["id"]] = a
            all_holds.append(body["id"])
        elif action in ("capture", "release") and all_holds:
            hold_id = all_holds[a % len(all_holds)]
            try:
                if action == "capture":
                    points = b * open_holds.get(hold_id, 0) // 100
                    holds.capture(
                        engine,
                        principal,
                        program,
                        hold_id,
                        points=points,
                        idempotency_key=f"c{n}-{i}",
                        now=now,
                    )
                    captured += points
                else:
                    holds.release(engine, principal, program, hold_id, now=now)
                open_holds.pop(hold_id, None)
            except (HoldNotOpen, HoldExpired):
                pass
        elif action == "wait":
            now += timedelta(seconds=a)
        elif action == "job":
            holds.release_expired(engine, now=now)
            for hold_id in list(open_holds):
                view = holds.get_hold(engine, principal, program, hold_id)
                if view["status"] != "held":
                    open_holds.pop(hold_id)
        balance = get_balance(engine, principal, program, "ext:C", now=now)["balance"]
        assert balance + sum(open_holds.values()) + captured == earned
    assert audit_ledger(engine) == []
