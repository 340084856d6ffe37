"""One idempotency key, or one event id, sent by many threads at once: the effect happens once
and every identical request gets the stored response back."""

from __future__ import annotations

from functools import partial

from sqlalchemy import Engine, func, select

from loyalty.adapters.db.tables import events as events_table
from loyalty.adapters.db.tables import idempotency_keys, members, redemptions
from loyalty.application import events
from loyalty.application.access import Principal
from loyalty.application.audit import audit_ledger
from loyalty.application.idempotency import Outcome
from loyalty.application.members import MemberProfile, enroll_member
from loyalty.application.redemptions import redeem_points
from loyalty.domain.errors import IdempotencyConflict, MemberAlreadyExists
from tests.reliability.helpers import (
    NOW,
    assert_only,
    failures,
    make_setup,
    purchase_event,
    race,
    successes,
)

THREADS = 32


def _count(engine: Engine, stmt: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())  # type: ignore[call-overload]


def test_same_redeem_key_and_body_racing_posts_once(engine: Engine) -> None:
    s = make_setup(engine)
    member = s.enroll("C1")
    s.purchase(member, "O1", points=1_000)

    results = race(
        THREADS,
        lambda i: redeem_points(
            engine,
            s.principal,
            s.program_id,
            member,
            points=100,
            reason="voucher",
            reference="V-1",
            idempotency_key="same-key",
            now=NOW,
        ),
    )

    assert_only(results, (), "same redeem key, same body")
    outcomes = successes(results)
    assert len(outcomes) == THREADS
    assert len({o.body["id"] for o in outcomes}) == 1
    assert sum(o.replayed for o in outcomes) == THREADS - 1
    assert all(o.status_code == 201 for o in outcomes)
    # A replay is the stored response, byte for byte.
    assert all(o.body == outcomes[0].body for o in outcomes)
    assert s.balance(member)["balance"] == 900
    redeems = [e for e in s.statement(member) if e["kind"] == "redeem"]
    assert len(redeems) == 1
    assert _count(engine, select(func.count()).select_from(redemptions)) == 1
    assert audit_ledger(engine) == []


def test_same_redeem_key_for_the_whole_balance_racing_replays(engine: Engine) -> None:
    """The same request burning the member's whole balance, sent by 32 threads: the first one
    burns it, and the 31 others are the same request, so they must get its response replayed
    (not a refusal for want of points that the request itself spent)."""
    s = make_setup(engine)
    member = s.enroll("C1")
    s.purchase(member, "O1", points=400)

    results = race(
        THREADS,
        lambda i: redeem_points(
            engine,
            s.principal,
            s.program_id,
            member,
            points=400,
            reason=None,
            reference=None,
            idempotency_key="all-of-it",
            now=NOW,
        ),
    )

    # Whatever the callers see, the points went once.
    assert s.balance(member)["balance"] == 0
    assert len([e for e in s.statement(member) if e["kind"] == "redeem"]) == 1
    assert audit_ledger(engine) == []
    assert_only(results, (), "same key burning the whole balance")
    outcomes = successes(results)
    assert len({o.body["id"] for o in outcomes}) == 1
    assert sum(o.replayed for o in outcomes) == THREADS - 1


def test_same_redeem_key_with_different_bodies_racing_posts_once(engine: Engine) -> None:
    """32 threads share one key but ask for 1..32 points. Exactly one request is carried out;
    a request identical to it is a replay, every other one is an IdempotencyConflict."""
    s = make_setup(engine)
    member = s.enroll("C1")
    s.purchase(member, "O1", points=1_000)

    def points_of(i: int) -> int:
        return i % 8 + 1  # four threads send each body, so replays and conflicts both occur

    results = race(
        THREADS,
        lambda i: redeem_points(
            engine,
            s.principal,
            s.program_id,
            member,
            points=points_of(i),
            reason=None,
            reference=None,
            idempotency_key="shared-key",
            now=NOW,
        ),
    )

    assert_only(results, (IdempotencyConflict,), "same key, different bodies")
    outcomes = successes(results)
    originals = [o for o in outcomes if not o.replayed]
    assert len(originals) == 1
    winner = originals[0]
    burned = winner.body["points"]
    for i, r in enumerate(results):
        if points_of(i) == burned:
            assert not isinstance(r, BaseException), f"thread {i} sent the winning body"
            assert r.body == winner.body
        else:
            assert isinstance(r, IdempotencyConflict), f"thread {i} sent another body: {r!r}"
    assert len(failures(results)) == THREADS - THREADS // 8
    assert s.balance(member)["balance"] == 1_000 - burned
    redeems = [e for e in s.statement(member) if e["kind"] == "redeem"]
    assert len(redeems) == 1
    assert redeems[0]["points"] == -burned
    assert audit_ledger(engine) == []


def test_same_purchase_event_racing_earns_once(engine: Engine) -> None:
    s = make_setup(engine)
    member = s.enroll("C1")
    event = purchase_event("ORDER-1", member={"id": member}, total_minor=12_345)

    results = race(
        THREADS,
        lambda i: events.submit_event(engine, s.principal, s.program_id, event, now=NOW),
    )

    assert_only(results, (), "same purchase event")
    outcomes = successes(results)
    assert len(outcomes) == THREADS
    assert sum(o.replayed for o in outcomes) == THREADS - 1
    assert len({o.body["event_id"] for o in outcomes}) == 1
    assert all(o.body["points_earned"] == 123 for o in outcomes)
    assert s.balance(member)["balance"] == 123
    earns = [e for e in s.statement(member) if e["kind"] == "earn"]
    assert len(earns) == 1
    assert _count(engine, select(func.count()).select_from(events_table)) == 1
    assert audit_ledger(engine) == []


def test_same_order_id_with_different_bodies_racing_earns_once(engine: Engine) -> None:
    """One order id, two different totals: one is recorded, the identical ones replay it and the
    others are conflicts; points are earned once."""
    s = make_setup(engine)
    member = s.enroll("C1")
    bodies = [
        purchase_event("ORDER-1", member={"id": member}, total_minor=10_000),
        purchase_event("ORDER-1", member={"id": member}, total_minor=20_000),
    ]

    results = race(
        THREADS,
        lambda i: events.submit_event(engine, s.principal, s.program_id, bodies[i % 2], now=NOW),
    )

    assert_only(results, (IdempotencyConflict,), "same order id, different bodies")
    outcomes = successes(results)
    originals = [o for o in outcomes if not o.replayed]
    assert len(originals) == 1
    earned = originals[0].body["points_earned"]
    assert earned in (100, 200)
    winning_parity = 0 if earned == 100 else 1
    for i, r in enumerate(results):
        if i % 2 == winning_parity:
            assert not isinstance(r, BaseException), f"thread {i} sent the winning body"
            assert r.body == originals[0].body
        else:
            assert isinstance(r, IdempotencyConflict), f"thread {i}: {r!r}"
    assert s.balance(member)["balance"] == earned
    assert len([e for e in s.statement(member) if e["kind"] == "earn"]) == 1
    assert _count(engine, select(func.count()).select_from(events_table)) == 1
    assert audit_ledger(engine) == []


ROUNDS = 6  # the windows below are narrow; a few rounds make a miss unlikely


def _enroll(
    engine: Engine,
    principal: Principal,
    program_id: str,
    _thread: int,
    *,
    external_id: str,
    key: str | None,
) -> Outcome:
    return enroll_member(
        engine,
        principal,
        program_id,
        external_id=external_id,
        profile=MemberProfile(),
        now=NOW,
        idempotency_key=key,
    )


def test_purchases_auto_enrolling_one_new_member_racing(engine: Engine) -> None:
    """Per round, 16 different orders for a customer nobody has enrolled yet, in a program that
    enrols on purchase: one member is created, and every order earns on that one member (no
    purchase is refused because the customer got enrolled meanwhile)."""
    s = make_setup(engine, enrollment={"auto_enroll_on_purchase": True})

    for rnd in range(ROUNDS):
        customer = f"NEW-{rnd}"

        def buy(i: int, customer: str = customer) -> Outcome:
            return events.submit_event(
                engine,
                s.principal,
                s.program_id,
                purchase_event(
                    f"ORDER-{customer}-{i}", member={"external_id": customer}, total_minor=1_000
                ),
                now=NOW,
            )

        results = race(16, buy)

        assert _count(engine, select(func.count()).select_from(members)) == rnd + 1
        assert_only(results, (), f"round {rnd}: auto-enrolling purchases for one new customer")
        outcomes = successes(results)
        assert len({o.body["member_id"] for o in outcomes}) == 1
        assert sum(o.body["member_enrolled"] for o in outcomes) == 1
        assert s.balance(f"ext:{customer}")["balance"] == 16 * 10
    assert _count(engine, select(func.count()).select_from(events_table)) == 16 * ROUNDS
    assert audit_ledger(engine) == []


def test_enrolling_one_external_id_racing(engine: Engine) -> None:
    """16 enrolments of the same external id: one member; the others are told it exists."""
    s = make_setup(engine)

    for rnd in range(ROUNDS):
        results = race(
            16,
            partial(_enroll, engine, s.principal, s.program_id, external_id=f"DUP-{rnd}", key=None),
        )

        assert _count(engine, select(func.count()).select_from(members)) == rnd + 1
        assert_only(results, (MemberAlreadyExists,), f"round {rnd}: enrolling one external id")
        assert len(successes(results)) == 1
        assert len(failures(results)) == 15


def test_enrolling_with_one_idempotency_key_racing_replays(engine: Engine) -> None:
    """Per round, the same enrolment (same Idempotency-Key, same body) sent 16 times at once:
    one member, and every caller gets the stored response, 15 of them as replays."""
    s = make_setup(engine)

    for rnd in range(ROUNDS):
        results = race(
            16,
            partial(
                _enroll,
                engine,
                s.principal,
                s.program_id,
                external_id=f"DUP-{rnd}",
                key=f"enroll-once-{rnd}",
            ),
        )

        assert _count(engine, select(func.count()).select_from(members)) == rnd + 1
        assert _count(engine, select(func.count()).select_from(idempotency_keys)) == rnd + 1
        assert_only(results, (), f"round {rnd}: enrolling with one idempotency key")
        outcomes = successes(results)
        assert len({o.body["id"] for o in outcomes}) == 1
        assert sum(o.replayed for o in outcomes) == 15
