"""The expiry job run by several threads at once, alone and while members redeem and cancel:
every due lot expires exactly once, for exactly what was left in it."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from sqlalchemy import Engine

from loyalty.application.audit import audit_ledger
from loyalty.application.expiry import ExpiryReport, expire_due_lots
from loyalty.application.redemptions import cancel_redemption, redeem_points
from tests.reliability.helpers import (
    NOW,
    Setup,
    assert_only,
    lot_movement_rows,
    lot_rows,
    make_setup,
    race,
    successes,
)

EXPIRY = {"points": {"expiry": {"policy": "after_days", "days": 30}}}


def _check_each_due_lot_expired_once(s: Setup, *, before: dict[str, int]) -> dict[str, int]:
    """``before``: each due lot's remaining when the race started. Every due lot must end empty,
    having expired exactly once for all of that (burns expire a member's overdue lots before
    spending, so none of it may have been burned). Returns the points expired per lot."""
    all_lots = lot_rows(s.engine, s.program_id)
    movements = lot_movement_rows(s.engine)
    expired: dict[str, list[int]] = defaultdict(list)
    for m in movements:
        if m.kind == "expire":
            expired[m.lot_id].append(-int(m.amount))
    due = {lot.id for lot in all_lots if lot.expires_at is not None and lot.expires_at <= NOW}
    assert set(before) == due
    for lot in all_lots:
        if lot.id not in due:
            assert expired[lot.id] == [], f"lot {lot.id} is not due but expired"
            continue
        history = [(m.kind, int(m.amount)) for m in movements if m.lot_id == lot.id]
        assert len(expired[lot.id]) == 1, (
            f"due lot {lot.id} (amount {lot.amount}, remaining {lot.remaining}) expired "
            f"{len(expired[lot.id])} times; its movements: {history}"
        )
        assert expired[lot.id] == [before[lot.id]], (lot.id, expired[lot.id], before[lot.id])
        assert lot.remaining == 0, f"due lot {lot.id} still holds {lot.remaining}"
    burned_overdue = [m for m in movements if m.kind == "redeem" and m.lot_id in due]
    assert burned_overdue == [], f"overdue points were burned: {burned_overdue}"
    return {lot_id: sum(v) for lot_id, v in expired.items()}


def _due_remaining(s: Setup) -> dict[str, int]:
    return {
        lot.id: int(lot.remaining)
        for lot in lot_rows(s.engine, s.program_id)
        if lot.expires_at is not None and lot.expires_at <= NOW and lot.remaining > 0
    }


def test_concurrent_expiry_runs_expire_each_lot_once(engine: Engine) -> None:
    s = make_setup(engine, **EXPIRY)
    members = [s.enroll(f"C{i}") for i in range(40)]
    for i, member in enumerate(members):
        s.purchase(member, f"OLD-{i}", points=100 + i, now=NOW - timedelta(days=45))
        if i % 3 == 0:
            s.purchase(member, f"NEW-{i}", points=70, now=NOW - timedelta(days=1))
    before = _due_remaining(s)
    assert len(before) == 40

    results = race(4, lambda i: expire_due_lots(engine, now=NOW, batch_size=7))

    assert_only(results, (), "concurrent expiry runs")
    reports = successes(results)
    expired = _check_each_due_lot_expired_once(s, before=before)
    # Only the job expired anything here, so the runs' reports add up to exactly that.
    assert sum(r.points_expired for r in reports) == sum(expired.values())
    assert sum(r.points_expired for r in reports) == sum(100 + i for i in range(40))
    assert sum(r.lots_expired for r in reports) == 40
    assert sum(r.members_touched for r in reports) == 40
    assert expire_due_lots(engine, now=NOW).lots_expired == 0
    for i, member in enumerate(members):
        assert s.balance(member)["balance"] == (70 if i % 3 == 0 else 0)
    assert audit_ledger(engine) == []


def test_expiry_racing_redemptions_and_cancels(engine: Engine) -> None:
    """Members 0-9 hold a fresh lot F (1000, of which an earlier redemption R spent 100) and two
    due lots D (200) and E (150); members 10-14 hold only D and E. During the race three expiry
    runs go, R is cancelled (F gets its 100 back) and members 0-9 each burn 120. A burn expires
    the member's overdue lots before it spends, so whoever gets there first, D and E expire once,
    whole, and the burn comes out of F."""
    s = make_setup(engine, **EXPIRY)
    n_busy, n_idle = 10, 5
    members = [s.enroll(f"C{i}") for i in range(n_busy + n_idle)]
    old_redemptions = []
    for i, member in enumerate(members):
        if i < n_busy:
            s.purchase(member, f"F-{i}", points=1_000, now=NOW - timedelta(days=1))
            old_redemptions.append(
                redeem_points(
                    engine,
                    s.principal,
                    s.program_id,
                    member,
                    points=100,
                    reason=None,
                    reference=None,
                    idempotency_key=f"old-{i}",
                    now=NOW - timedelta(days=1),
                ).body["id"]
            )
        s.purchase(member, f"D-{i}", points=200, now=NOW - timedelta(days=60))
        s.purchase(member, f"E-{i}", points=150, now=NOW - timedelta(days=45))
    before = _due_remaining(s)
    assert len(before) == 2 * len(members)

    expiry_threads = 3

    def act(i: int) -> object:
        if i < expiry_threads:
            return expire_due_lots(engine, now=NOW, batch_size=3)
        k = i - expiry_threads
        if k < n_busy:
            return cancel_redemption(
                engine,
                s.principal,
                s.program_id,
                old_redemptions[k],
                reason=None,
                idempotency_key=None,
                now=NOW,
            )
        k -= n_busy
        return redeem_points(
            engine,
            s.principal,
            s.program_id,
            members[k],
            points=120,
            reason=None,
            reference=None,
            idempotency_key=f"new-{k}",
            now=NOW,
        )

    results = race(expiry_threads + 2 * n_busy, act)

    assert_only(results, (), "expiry racing redemptions and cancels")
    reports = [r for r in results[:expiry_threads] if isinstance(r, ExpiryReport)]
    assert len(reports) == expiry_threads
    # A run may end early when burns expired its whole batch under it (see
    # test_expiry_locking_postgres.py, which forces that). One more run, alone, sweeps what is
    # left; what this test checks is that no lot expires twice or for the wrong amount.
    reports.append(expire_due_lots(engine, now=NOW))
    expired = _check_each_due_lot_expired_once(s, before=before)
    total = sum(expired.values())
    assert total == 350 * len(members)
    # The job expired at least the idle members' lots (nothing else touched them) and never
    # more than everything that expired.
    job_points = sum(r.points_expired for r in reports)
    assert 350 * n_idle <= job_points <= total
    assert 2 * n_idle <= sum(r.lots_expired for r in reports) <= 2 * len(members)
    for i, member in enumerate(members):
        statement = s.statement(member)
        balance = s.balance(member)["balance"]
        assert balance == sum(e["points"] for e in statement)
        expire_entries = [e for e in statement if e["kind"] == "expire"]
        assert len(expire_entries) == 1, expire_entries
        assert expire_entries[0]["points"] == -350
        if i < n_busy:
            # 1000 - 100 + 100 back + 200 + 150 - 350 expired - 120 burned.
            assert balance == 880
            assert len([e for e in statement if e["kind"] == "redeem_cancel"]) == 1
        else:
            assert balance == 0
    assert audit_ledger(engine) == []
