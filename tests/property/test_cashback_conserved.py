"""Cashback is conserved: whatever the order of purchases, partial returns, holds paying for
orders (captured in part, released, left to expire), returns of orders paid that way, and the
expiry job, every minor unit earned is in the member's wallet, held, spent, taken back or
expired, and the ledger audit holds."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loyalty.application import events, holds
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.audit import audit_ledger
from loyalty.application.balances import get_balance, get_statement
from loyalty.application.event_documents import PurchaseEvent, ReturnEvent
from loyalty.application.expiry import expire_due_lots
from loyalty.application.program_document import ProgramDocument
from loyalty.application.programs import create_program
from loyalty.domain.errors import (
    DomainError,
    HoldExpired,
    HoldNotOpen,
    InsufficientCashback,
    PaymentNotAllowed,
)
from loyalty.domain.ledger import CASH

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)

STEP = st.one_of(
    st.tuples(
        st.just("buy"),
        st.tuples(st.lists(st.integers(1, 5_000), min_size=1, max_size=3), st.just(0)),
    ),
    st.tuples(st.just("return"), st.tuples(st.integers(0, 20), st.integers(0, 2))),
    st.tuples(st.just("reserve"), st.tuples(st.integers(1, 400), st.integers(0, 20))),
    st.tuples(st.just("capture"), st.tuples(st.integers(0, 20), st.integers(0, 100))),
    st.tuples(st.just("release"), st.tuples(st.integers(0, 20), st.just(0))),
    st.tuples(st.just("wait"), st.tuples(st.integers(1, 40), st.just(0))),
    st.tuples(st.just("expire"), st.tuples(st.just(0), st.just(0))),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(STEP, min_size=1, max_size=14).map(lambda s: [("buy", ([2_000], 0)), *s]))
def test_cashback_is_conserved_through_purchases_returns_holds_and_expiry(engine, steps):
    n = next(_ids)
    principal = authenticate(
        engine,
        create_api_key(
            engine,
            tenant_name=f"cash-{n}",
            name="a",
            scopes=[Scope.ADMIN],
            program_id=None,
            now=NOW,
        ).token,
    )
    document = ProgramDocument.model_validate(
        {
            "name": "c",
            "currency": "EUR",
            "enrollment": {"auto_enroll_on_purchase": True},
            "cashback": {"rate_bp": 1_000, "expiry": {"policy": "after_days", "days": 60}},
        }
    )
    program = create_program(engine, principal, document, now=NOW).body["id"]
    now = NOW
    earned = charged = captured = restored = 0
    orders: list[str] = []
    open_holds: dict[str, int] = {}
    all_holds: list[str] = []
    for i, (action, (a, b)) in enumerate(steps):
        if action == "buy":
            order = f"O{n}-{i}"
            body = events.submit_event(
                engine,
                principal,
                program,
                PurchaseEvent.model_validate(
                    {
                        "type": "purchase",
                        "id": order,
                        "member": {"external_id": "C"},
                        "occurred_at": now.isoformat(),
                        "currency": "EUR",
                        "total_minor": sum(a),
                        "lines": [
                            {"line_id": str(k), "sku": f"S{k}", "unit_price_minor": price}
                            for k, price in enumerate(a)
                        ],
                    }
                ),
                now=now,
            ).body
            earned += body["cashback"]["earned_minor"]
            orders.append(order)
        elif action == "return" and orders:
            try:
                body = events.submit_event(
                    engine,
                    principal,
                    program,
                    ReturnEvent.model_validate(
                        {
                            "type": "return",
                            "id": f"R{n}-{i}",
                            "order_id": orders[a % len(orders)],
                            "occurred_at": now.isoformat(),
                            "lines": [{"line_id": str(b), "quantity": 1}],
                        }
                    ),
                    now=now,
                ).body
            except DomainError:
                continue
            charged += body["cashback"]["charged_minor"] if body["cashback"] else 0
            restored += sum(p["amount"] for p in body["payments_restored"])
        elif action == "reserve":
            order = orders[b % len(orders)] if orders else None
            try:
                body = holds.reserve(
                    engine,
                    principal,
                    program,
                    "ext:C",
                    points=a,
                    order_reference=order,
                    ttl_seconds=3_600,
                    idempotency_key=f"h{n}-{i}",
                    now=now,
                    asset=CASH,
                ).body
            except (InsufficientCashback, PaymentNotAllowed):
                continue
            open_holds[body["id"]] = a
            all_holds.append(body["id"])
        elif action in ("capture", "release") and all_holds:
            hold_id = all_holds[a % len(all_holds)]
            try:
                if action == "capture":
                    amount = b * open_holds.get(hold_id, 0) // 100
                    holds.capture(
                        engine,
                        principal,
                        program,
                        hold_id,
                        points=amount,
                        idempotency_key=f"c{n}-{i}",
                        now=now,
                    )
                    captured += amount
                else:
                    holds.release(engine, principal, program, hold_id, now=now)
                open_holds.pop(hold_id, None)
            except (HoldNotOpen, HoldExpired):
                pass
        elif action == "wait":
            now += timedelta(days=a)
        elif action == "expire":
            expire_due_lots(engine, now=now)
            holds.release_expired(engine, now=now)
            for hold_id in list(open_holds):
                if holds.get_hold(engine, principal, program, hold_id)["status"] != "held":
                    open_holds.pop(hold_id)
        view = get_balance(engine, principal, program, "ext:C", now=now)
        statement = get_statement(
            engine, principal, program, "ext:C", limit=500, cursor=None, asset=CASH
        )["items"]
        expired = -sum(e["points"] for e in statement if e["kind"] == "expire")
        balance = view["cashback"]["balance_minor"]
        # The wallet is exactly its entries, and every unit earned or given back is in it,
        # held, spent, taken back by a return (the program keeps debts: nothing is written
        # off) or expired.
        assert balance == sum(e["points"] for e in statement)
        assert balance + sum(open_holds.values()) + captured + expired + charged == (
            earned + restored
        )
    assert audit_ledger(engine) == []
