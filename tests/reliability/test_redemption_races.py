"""Parallel redemptions and cancellations against one member's points.

On PostgreSQL the wallet row lock serialises them; on SQLite ``BEGIN IMMEDIATE`` does. Either
way no burn may overdraw the balance and no redemption may be cancelled twice.
"""

from __future__ import annotations

from sqlalchemy import Engine

from loyalty.application.audit import audit_ledger
from loyalty.application.idempotency import Outcome
from loyalty.application.redemptions import cancel_redemption, redeem_points
from loyalty.domain.errors import InsufficientPoints, RedemptionAlreadyCancelled
from tests.reliability.helpers import (
    NOW,
    assert_only,
    failures,
    make_setup,
    race,
    successes,
)

BALANCE = 1_000
THREADS = 40
BURN = 50  # 40 x 50 = 2000 points asked for, twice the balance


def test_parallel_redemptions_never_overdraw(engine: Engine) -> None:
    s = make_setup(engine)
    member = s.enroll("C1")
    s.purchase(member, "O1", points=BALANCE)
    assert s.balance(member)["balance"] == BALANCE

    results = race(
        THREADS,
        lambda i: redeem_points(
            engine,
            s.principal,
            s.program_id,
            member,
            points=BURN,
            reason=None,
            reference=f"r{i}",
            idempotency_key=f"burn-{i}",
            now=NOW,
        ),
    )

    assert_only(results, (InsufficientPoints,), "parallel redemptions")
    won = successes(results)
    lost = failures(results)
    assert all(o.status_code == 201 for o in won)
    assert all(not o.replayed for o in won)
    assert len({o.body["id"] for o in won}) == len(won)

    final = s.balance(member)["balance"]
    assert final >= 0
    assert len(won) * BURN == BALANCE - final
    # With 2000 points asked for and 1000 available, the balance must be used up: a burn may
    # only be refused when fewer than BURN points are left.
    assert final < BURN
    assert len(lost) == THREADS - BALANCE // BURN
    # Each refusal reports what was really left when it ran: never more than the balance.
    for exc in lost:
        assert isinstance(exc, InsufficientPoints)
        assert exc.context["points_required"] == BURN
        assert 0 <= exc.context["points_available"] < BURN

    assert audit_ledger(engine) == []
    statement = s.statement(member)
    redeems = [e for e in statement if e["kind"] == "redeem"]
    assert len(redeems) == len(won)
    assert sorted(e["source"]["id"] for e in redeems) == sorted(o.body["id"] for o in won)
    assert all(e["points"] == -BURN for e in redeems)
    assert sum(e["points"] for e in statement) == final


def test_parallel_redemptions_across_several_lots_never_overdraw(engine: Engine) -> None:
    """Burns that span lots: ten lots of 97 points and burns of 61, so most burns split."""
    s = make_setup(engine)
    member = s.enroll("C1")
    for k in range(10):
        s.purchase(member, f"O{k}", points=97)
    balance = 970
    burn = 61

    results = race(
        32,
        lambda i: redeem_points(
            engine,
            s.principal,
            s.program_id,
            member,
            points=burn,
            reason="gift",
            reference=None,
            idempotency_key=f"k{i}",
            now=NOW,
        ),
    )

    assert_only(results, (InsufficientPoints,), "parallel split redemptions")
    won = successes(results)
    final = s.balance(member)["balance"]
    assert len(won) == balance // burn
    assert final == balance - len(won) * burn
    assert 0 <= final < burn
    # Every redemption's lot takes add up to its points, and no lot gave more than it had.
    for o in won:
        assert sum(t["points"] for t in o.body["lots"]) == burn
    assert audit_ledger(engine) == []
    redeems = [e for e in s.statement(member) if e["kind"] == "redeem"]
    assert len(redeems) == len(won)


def test_cancel_racing_with_itself_reverses_once(engine: Engine) -> None:
    s = make_setup(engine)
    member = s.enroll("C1")
    s.purchase(member, "O1", points=500)
    red = redeem_points(
        engine,
        s.principal,
        s.program_id,
        member,
        points=300,
        reason=None,
        reference=None,
        idempotency_key="burn",
        now=NOW,
    )
    red_id = red.body["id"]
    assert s.balance(member)["balance"] == 200

    results = race(
        16,
        lambda i: cancel_redemption(
            engine,
            s.principal,
            s.program_id,
            red_id,
            reason=f"cancel {i}",
            idempotency_key=None,
            now=NOW,
        ),
    )

    assert_only(results, (RedemptionAlreadyCancelled,), "parallel cancels")
    won = successes(results)
    assert len(won) == 1
    assert won[0].status_code == 200
    assert won[0].body["status"] == "cancelled"
    assert len(failures(results)) == 15
    assert s.balance(member)["balance"] == 500
    cancels = [e for e in s.statement(member) if e["kind"] == "redeem_cancel"]
    assert len(cancels) == 1
    assert cancels[0]["id"] == won[0].body["cancel_entry_id"]
    assert cancels[0]["points"] == 300
    assert audit_ledger(engine) == []


def test_cancel_with_one_idempotency_key_racing_with_itself_replays(engine: Engine) -> None:
    """The same cancel request (same Idempotency-Key, same body) sent 16 times at once: one
    reversal, and every caller gets the stored response, 15 of them as replays."""
    s = make_setup(engine)
    member = s.enroll("C1")
    s.purchase(member, "O1", points=500)
    red_id = redeem_points(
        engine,
        s.principal,
        s.program_id,
        member,
        points=300,
        reason=None,
        reference=None,
        idempotency_key="burn",
        now=NOW,
    ).body["id"]

    results = race(
        16,
        lambda i: cancel_redemption(
            engine,
            s.principal,
            s.program_id,
            red_id,
            reason="customer changed mind",
            idempotency_key="cancel-once",
            now=NOW,
        ),
    )

    assert_only(results, (), "same cancel with one idempotency key")
    won = successes(results)
    assert len(won) == 16
    assert sum(not o.replayed for o in won) == 1
    assert len({o.body["cancel_entry_id"] for o in won}) == 1
    assert all(o.status_code == 200 for o in won)
    assert s.balance(member)["balance"] == 500
    assert len([e for e in s.statement(member) if e["kind"] == "redeem_cancel"]) == 1
    assert audit_ledger(engine) == []


def test_cancels_of_different_redemptions_race_with_new_burns(engine: Engine) -> None:
    """Cancels of ten redemptions race with twenty new burns on the same member: every cancel
    succeeds once, burns never overdraw, and the ledger adds up."""
    s = make_setup(engine)
    member = s.enroll("C1")
    s.purchase(member, "O1", points=1_000)
    old = [
        redeem_points(
            engine,
            s.principal,
            s.program_id,
            member,
            points=80,
            reason=None,
            reference=None,
            idempotency_key=f"old-{k}",
            now=NOW,
        ).body["id"]
        for k in range(10)
    ]
    assert s.balance(member)["balance"] == 200

    def act(i: int) -> Outcome:
        if i < 10:
            return cancel_redemption(
                engine,
                s.principal,
                s.program_id,
                old[i],
                reason=None,
                idempotency_key=None,
                now=NOW,
            )
        return redeem_points(
            engine,
            s.principal,
            s.program_id,
            member,
            points=70,
            reason=None,
            reference=None,
            idempotency_key=f"new-{i}",
            now=NOW,
        )

    results = race(30, act)

    assert_only(results, (InsufficientPoints,), "cancels racing burns")
    cancels_ok = successes(results[:10])
    assert len(cancels_ok) == 10
    burns_ok = successes(results[10:])
    final = s.balance(member)["balance"]
    assert final >= 0
    assert final == 200 + 10 * 80 - 70 * len(burns_ok)
    statement = s.statement(member)
    assert len([e for e in statement if e["kind"] == "redeem_cancel"]) == 10
    assert len([e for e in statement if e["kind"] == "redeem"]) == 10 + len(burns_ok)
    assert sum(e["points"] for e in statement) == final
    assert audit_ledger(engine) == []
