"""The expiry job reads due lots in windows of ``(expires_at, program_id, member_id)``, so a
member with lots due on several days shows up in more than one window. Whatever the windows,
each due lot expires once, and each member gets one ``expire`` entry per run for all of it."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from loyalty.adapters.db.tables import journal_entries, postings
from loyalty.application import expiry
from loyalty.application.audit import audit_ledger
from loyalty.application.expiry import ExpiryReport, expire_due_lots
from tests.reliability.helpers import NOW, lot_movement_rows, lot_rows, make_setup

EXPIRY = {"points": {"expiry": {"policy": "after_days", "days": 30}}}


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("window_rows", [1, 2, 5, 1_000])
def test_a_member_due_across_windows_gets_one_entry_and_each_lot_expires_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, window_rows: int, workers: int
) -> None:
    monkeypatch.setattr(expiry, "EXPIRY_WINDOW_ROWS", window_rows)
    s = make_setup(engine, **EXPIRY)
    members = [s.enroll(f"W{i}") for i in range(4)]
    for i, member in enumerate(members):
        for days_ago in (60, 50, 40):
            s.purchase(
                member, f"O-{i}-{days_ago}", points=10 + i, now=NOW - timedelta(days=days_ago)
            )
        s.purchase(member, f"FRESH-{i}", points=5, now=NOW - timedelta(days=1))

    # Batches of one member: with several workers, batches of a window run at once.
    report = expire_due_lots(engine, now=NOW, batch_size=1, workers=workers)

    assert (report.lots_expired, report.points_expired, report.members_touched) == (
        12,
        3 * sum(10 + i for i in range(4)),
        4,
    )
    with engine.connect() as conn:
        entries = conn.execute(
            select(journal_entries.c.id, journal_entries.c.member_id, journal_entries.c.details)
            .where(journal_entries.c.kind == "expire")
            .order_by(journal_entries.c.member_id)
        ).all()
        legs = conn.execute(
            select(postings.c.entry_id, postings.c.leg, postings.c.member_id, postings.c.amount)
            .where(postings.c.entry_id.in_([e.id for e in entries]))
            .order_by(postings.c.entry_id, postings.c.leg)
        ).all()
    assert [e.member_id for e in entries] == sorted(members)
    assert [e.details for e in entries] == [{"lots": 3}] * 4
    points_of = {m: 3 * (10 + i) for i, m in enumerate(members)}
    assert [(leg.leg, leg.member_id, leg.amount) for leg in legs] == [
        row
        for e in sorted(entries, key=lambda e: e.id)
        for row in ((0, e.member_id, -points_of[e.member_id]), (1, None, points_of[e.member_id]))
    ]
    expired_per_lot = Counter(m.lot_id for m in lot_movement_rows(engine) if m.kind == "expire")
    due = [lot for lot in lot_rows(engine, s.program_id) if lot.expires_at <= NOW]
    assert len(due) == 12
    assert all(expired_per_lot[lot.id] == 1 and lot.remaining == 0 for lot in due)
    for member in members:
        assert s.balance(member)["balance"] == 5
    assert audit_ledger(engine) == []

    assert expire_due_lots(engine, now=NOW, batch_size=3) == ExpiryReport(0, 0, 0, 0)
