"""The bulk path of a batch (a run of purchases written with one statement per table) records
and answers every purchase exactly as recording it alone does: same responses, same rows, same
refusals, same replays, on a member's debt, pending, expiring and overdue points."""

from __future__ import annotations

import itertools
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy import event as sqlalchemy_event

from loyalty.adapters.db.tables import (
    events,
    idempotency_keys,
    lot_movements,
    lots,
    member_activity,
    member_tiers,
    members,
    purchase_lines,
    tier_changes,
    wallets,
)
from loyalty.application import purchase_batches
from loyalty.application.access import Principal, Scope, authenticate, create_api_key
from loyalty.application.audit import audit_ledger
from loyalty.application.balances import EXPIRY_BUCKETS_ANSWERED, get_balance
from loyalty.application.batch import record_events_batch
from loyalty.application.event_documents import PurchaseEvent, ReturnEvent
from loyalty.application.events import AnyEvent, submit_event
from loyalty.application.program_document import ProgramDocument
from loyalty.application.programs import create_program, load_program
from loyalty.application.redemptions import redeem_points
from loyalty.domain.errors import DomainError

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
_tenants = itertools.count(1)

DOCUMENT: dict[str, Any] = {
    "name": "Bulk",
    "currency": "EUR",
    "enrollment": {"auto_enroll_on_purchase": True},
    "points": {
        "earn": {"points": 1, "per_spend_minor": 100},
        "expiry": {"policy": "after_days", "days": 30},
        "negative_balance": "allow_debt",
    },
    "rules": [
        {
            "id": "shoes-later",
            "name": "Shoes earn extra, after the return window",
            "trigger": "purchase",
            "conditions": {"include": {"categories": ["shoes"]}},
            "effect": {"type": "per_spend", "points": 1, "per_spend_minor": 100},
            "pending_days": 14,
        }
    ],
}

TIERED: dict[str, Any] = {
    **DOCUMENT,
    "name": "Bulk with tiers",
    "tiers": {
        "metric": "spend",
        "window": {"type": "rolling_months", "months": 12},
        "levels": [
            {"id": "regular", "name": "Regular", "threshold": 0},
            {
                "id": "silver",
                "name": "Silver",
                "threshold": 1500,
                "benefits": {"earn_multiplier_percent": 150},
            },
            {
                "id": "gold",
                "name": "Gold",
                "threshold": 8000,
                "benefits": {"earn_multiplier_percent": 200},
            },
        ],
    },
    "tier_sets": [
        {
            "id": "visits",
            "metric": "visits",
            "window": {"type": "calendar_year"},
            "levels": [
                {"id": "v0", "name": "New", "threshold": 0},
                {"id": "v1", "name": "Returning", "threshold": 2},
                {"id": "v2", "name": "Regular", "threshold": 3},
            ],
        }
    ],
}
"""Members cross thresholds in the middle of the batch (D from silver, E and the new member
from regular, E in the visits set too) and earn their next purchases at the new tier."""


def _principal(engine: Engine) -> Principal:
    issued = create_api_key(
        engine,
        tenant_name=f"bulk-{next(_tenants)}",
        name="admin",
        scopes=[Scope.ADMIN],
        program_id=None,
        now=NOW,
    )
    return authenticate(engine, issued.token)


def _purchase(order_id: str, member: dict[str, str], euros: int, **extra: Any) -> dict[str, Any]:
    lines = [
        {"sku": "A", "quantity": 2, "unit_price_minor": euros * 30},
        {"sku": "B", "unit_price_minor": euros * 40, "category": "shoes"},
        {"sku": "C", "quantity": 3, "unit_price_minor": euros * 10, "discount_minor": euros},
    ]
    document = {
        "type": "purchase",
        "id": order_id,
        "member": member,
        "occurred_at": (NOW - timedelta(hours=1)).isoformat(),
        "currency": "EUR",
        "total_minor": sum(li["unit_price_minor"] * li.get("quantity", 1) for li in lines),
        "lines": lines,
    }
    return {**document, **extra}


def _seed(engine: Engine, principal: Principal, program_id: str) -> dict[str, str]:
    """Members with history: D owes 50 points (spent, then returned), E holds points past
    their expiry that the job has not swept, F holds points still pending."""
    history = [
        _purchase("d-1", {"external_id": "D"}, 1, total_minor=5000, lines=[]),
        _purchase(
            "e-1", {"external_id": "E"}, 1, occurred_at=(NOW - timedelta(days=45)).isoformat()
        ),
        _purchase(
            "e-2", {"external_id": "E"}, 1, occurred_at=(NOW - timedelta(days=3)).isoformat()
        ),
        _purchase("f-1", {"external_id": "F"}, 2),
    ]
    for raw in history:
        submit_event(engine, principal, program_id, PurchaseEvent.model_validate(raw), now=NOW)
    redeem_points(
        engine,
        principal,
        program_id,
        "ext:D",
        points=50,
        reason=None,
        reference=None,
        idempotency_key="spend-d",
        now=NOW,
    )
    back = ReturnEvent.model_validate(
        {"type": "return", "id": "r-d-1", "order_id": "d-1", "occurred_at": NOW.isoformat()}
    )
    submit_event(engine, principal, program_id, back, now=NOW)
    with engine.connect() as conn:
        rows = conn.execute(
            select(members.c.external_id, members.c.id).where(members.c.program_id == program_id)
        ).all()
    return {str(r.external_id): str(r.id) for r in rows}


def _batch(ids: dict[str, str]) -> list[dict[str, Any]]:
    return [
        _purchase("d-2", {"external_id": "D"}, 15),  # repays part of the debt
        _purchase("d-3", {"id": ids["D"]}, 30),  # repays the rest, by member id
        _purchase("e-3", {"external_id": "E"}, 10),
        _purchase("f-2", {"id": ids["F"]}, 1),
        _purchase("n-1", {"external_id": "NEW"}, 1),  # enrolled
        _purchase("n-2", {"external_id": "NEW"}, 30),  # the member just enrolled
        _purchase("n-1", {"external_id": "NEW"}, 1),  # twice in the batch: replayed
        _purchase("n-1", {"external_id": "NEW"}, 9),  # same id, another body: a conflict
        _purchase(
            "e-1", {"external_id": "E"}, 1, occurred_at=(NOW - timedelta(days=45)).isoformat()
        ),  # recorded before: replayed
        _purchase("x-1", {"external_id": "D"}, 1, currency="USD"),  # refused
        _purchase("x-2", {"id": "mbr_00000000000000000000000000"}, 1),  # no such member
        _purchase("g-1", {"external_id": "G"}, 0, lines=[], total_minor=0),  # earns nothing
        _purchase("x-2", {"external_id": "H"}, 1),  # the id refused above, now accepted
        _purchase(
            "e-4", {"external_id": "E"}, 1, occurred_at=(NOW - timedelta(days=40)).isoformat()
        ),
    ]


def _normalised(value: Any, names: dict[str, str]) -> Any:
    """``value`` with every generated id replaced by its order of first appearance."""
    if isinstance(value, dict):
        return {k: _normalised(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalised(v, names) for v in value]
    if isinstance(value, str) and re.fullmatch(r"(evt|ent|lot|mbr|act)_[0-9A-Za-z]+", value):
        return names.setdefault(value, f"{value[:3]}#{len(names)}")
    return value


def _answer(outcome: Any) -> tuple[Any, ...]:
    if isinstance(outcome, DomainError):
        return ("refused", outcome.code, outcome.context)
    return ("recorded", outcome.replayed, outcome.body)


def _state(engine: Engine, program_id: str) -> dict[str, Any]:
    """What the program's tables hold, member by member (external id), ids left out."""
    ext = select(members.c.id, members.c.external_id).where(members.c.program_id == program_id)
    with engine.connect() as conn:
        by_id = {r.id: r.external_id for r in conn.execute(ext)}
        state: dict[str, Any] = {}
        for table, columns in (
            (wallets, ("asset", "balance", "debt")),
            (lots, ("amount", "remaining", "earned_at", "expires_at", "available_at")),
            (lot_movements, ("kind", "amount")),
            (events, ("type", "source_id", "points", "occurred_at", "received_at")),
            (purchase_lines, ("line_no", "line_id", "sku", "quantity", "base_minor", "points")),
            (member_activity, ("occurred_at", "spend_minor", "tier_points", "visit_day")),
            (
                member_tiers,
                ("tier_set", "tier", "since", "review_at", "review_from", "manual", "reason"),
            ),
            (
                tier_changes,
                ("tier_set", "from_tier", "to_tier", "reason", "metric", "at", "actor"),
            ),
        ):
            rows = conn.execute(
                select(table.c.member_id, *(table.c[c] for c in columns)).where(
                    table.c.program_id == program_id
                )
            ).all()
            state[table.name] = sorted((by_id[r[0]], *(str(v) for v in r[1:])) for r in rows)
        state["keys"] = conn.execute(
            select(func.count()).where(idempotency_keys.c.scope == program_id)
        ).scalar_one()
    return state


@pytest.mark.parametrize("program", [DOCUMENT, TIERED], ids=["rates", "tiers"])
def test_a_run_of_purchases_in_bulk_records_and_answers_each_as_alone(engine, program):
    principal = _principal(engine)
    document = ProgramDocument.model_validate(program)
    alone, bulk = (
        create_program(engine, principal, document, now=NOW).body["id"] for _ in range(2)
    )
    with engine.connect() as conn:
        assert purchase_batches.takes_bulk_path(
            load_program(conn, principal, bulk, Scope.WRITE).settings
        )
    alone_ids, bulk_ids = _seed(engine, principal, alone), _seed(engine, principal, bulk)

    def parsed(ids: dict[str, str]) -> list[AnyEvent]:
        return [PurchaseEvent.model_validate(raw) for raw in _batch(ids)]

    one_by_one = []
    for event in parsed(alone_ids):
        try:
            one_by_one.append(submit_event(engine, principal, alone, event, now=NOW))
        except DomainError as exc:
            one_by_one.append(exc)
    items = record_events_batch(engine, principal, bulk, parsed(bulk_ids), now=NOW)
    in_bulk = [item.error if item.error else item for item in items]

    expected = _normalised([_answer(o) for o in one_by_one], {})
    got = _normalised(
        [
            _answer(o) if isinstance(o, DomainError) else ("recorded", o.replayed, o.body)
            for o in in_bulk
        ],
        {},
    )
    assert got == expected
    kinds = [a[0] if a[0] == "refused" else a[1] for a in got]
    assert kinds == [False] * 6 + [True, "refused", True] + ["refused"] * 2 + [False] * 3
    debt = [a[2]["balance"]["debt"] for a in got[:2]]
    assert debt[0] > 0 and debt[1] == 0  # the debt was repaid across the two purchases
    assert _state(engine, bulk) == _state(engine, alone)
    assert audit_ledger(engine) == []
    if program is TIERED:
        moves = {a[2]["order_id"]: a[2]["tier_change"] for a in got if a[0] == "recorded"}
        assert {order: move for order, move in moves.items() if move} == {
            "d-3": {"from": "silver", "to": "gold", "metric": 10805},
            "e-3": {"from": "regular", "to": "silver", "metric": 1548},
            "n-2": {"from": "regular", "to": "silver", "metric": 3999},
        }
        assert got[13][2]["tier"] == "silver"  # e-4 earns at the tier e-3 reached

    # The whole batch again: every purchase recorded is replayed with its first answer, and
    # nothing moves.
    before = _state(engine, bulk)
    again = record_events_batch(engine, principal, bulk, parsed(bulk_ids), now=NOW)
    assert [i.accepted for i in again] == [i.accepted for i in items]
    assert all(i.replayed for i in again if i.accepted)
    assert [i.body for i in again if i.accepted] == [i.body for i in items if i.accepted]
    assert _state(engine, bulk) == before


def test_batches_racing_on_the_same_customers_and_events_apply_each_event_once(engine):
    principal = _principal(engine)
    program = create_program(
        engine, principal, ProgramDocument.model_validate(DOCUMENT), now=NOW
    ).body["id"]
    raw = [_purchase(f"o-{n}", {"external_id": f"C{n % 7}"}, 1 + n % 5) for n in range(60)]
    forward = [PurchaseEvent.model_validate(r) for r in raw]
    backward = list(reversed(forward))
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(
            pool.map(
                lambda batch: record_events_batch(engine, principal, program, batch, now=NOW),
                [forward, backward, forward, backward],
            )
        )
    # Every run answers every event; each event is recorded once and replayed by the others.
    assert all(item.accepted for run in runs for item in run)
    assert sum(not item.replayed for run in runs for item in run) == len(raw)
    first = {r.body["order_id"]: r.body["event_id"] for run in runs for r in run if not r.replayed}
    assert all(r.body["event_id"] == first[r.body["order_id"]] for run in runs for r in run)
    state = _state(engine, program)
    assert len(state["events"]) == len(raw) and state["keys"] == len(raw)
    assert len({m for m, *_ in state["wallets"]}) == 7
    assert audit_ledger(engine) == []


def test_batches_enrolling_the_same_new_customers_wait_instead_of_failing(engine):
    principal = _principal(engine)
    program = create_program(
        engine, principal, ProgramDocument.model_validate(DOCUMENT), now=NOW
    ).body["id"]
    batches = [
        [
            PurchaseEvent.model_validate(
                _purchase(f"b{b}-{n}", {"external_id": f"C{(n * (b + 1)) % 7}"}, 1 + n % 5)
            )
            for n in range(30)
        ]
        for b in range(4)
    ]
    failed: list[str] = []

    def note(context: Any) -> None:
        failed.append(str(context.original_exception))

    sqlalchemy_event.listen(engine, "handle_error", note)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            runs = list(
                pool.map(
                    lambda batch: record_events_batch(engine, principal, program, batch, now=NOW),
                    batches,
                )
            )
    finally:
        sqlalchemy_event.remove(engine, "handle_error", note)
    # No statement failed, so no batch was re-run: a batch that found a customer enrolled by
    # another one meanwhile earned on that member.
    assert failed == []
    assert all(item.accepted and not item.replayed for run in runs for item in run)
    enrolled = sorted(
        item.body["member_id"] for run in runs for item in run if item.body["member_enrolled"]
    )
    state = _state(engine, program)
    assert len(enrolled) == 7 and set(enrolled) == {
        item.body["member_id"] for run in runs for item in run
    }
    assert len(state["events"]) == 120 and len(state["wallets"]) == 7
    assert audit_ledger(engine) == []


@pytest.mark.parametrize("path", ["alone", "in bulk"])
def test_an_answer_lists_the_soonest_expiry_times_and_counts_every_lot(engine, path):
    """A write's answer lists the member's first expiry times only, yet its totals count every
    lot: here four lots past their expiry (the fourth beyond the list) and pending points in
    lots later than the list. ``GET .../balance`` lists them all, with the same figures."""
    principal = _principal(engine)
    document = ProgramDocument.model_validate(DOCUMENT)
    program = create_program(engine, principal, document, now=NOW).body["id"]
    for days in (45, 44, 43, 42, 3, 2):
        at = (NOW - timedelta(days=days)).isoformat()
        raw = _purchase(f"m-{days}", {"external_id": "M"}, 10, occurred_at=at)
        submit_event(engine, principal, program, PurchaseEvent.model_validate(raw), now=NOW)
    last = PurchaseEvent.model_validate(_purchase("m-0", {"external_id": "M"}, 10))
    if path == "alone":
        body = submit_event(engine, principal, program, last, now=NOW).body
    else:
        (item,) = record_events_batch(engine, principal, program, [last], now=NOW)
        body = item.body
    answered = body["balance"]
    full = get_balance(engine, principal, program, "ext:M", now=NOW)

    assert len(answered["expiring"]) == EXPIRY_BUCKETS_ANSWERED
    assert answered["expiring"] == full["expiring"][:EXPIRY_BUCKETS_ANSWERED]
    assert all(bucket["expired"] for bucket in answered["expiring"])
    assert len(full["expiring"]) > EXPIRY_BUCKETS_ANSWERED + 1
    overdue = sum(b["points"] for b in full["expiring"] if b["expired"])
    assert overdue > sum(b["points"] for b in answered["expiring"])  # a fourth lot past expiry
    assert full["pending"] > 0
    for figure in ("balance", "available", "pending", "debt"):
        assert answered[figure] == full[figure], figure
    assert full["available"] == full["balance"] - overdue - full["pending"]
