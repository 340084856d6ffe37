"""The expiry job against a wallet lock held by another transaction, on PostgreSQL only (SQLite
serialises whole write transactions, so the job never sees a batch change under it).

The interleaving is forced, not hoped for: this test holds member A's wallet lock, waits until
the job's transaction is blocked on it, expires A itself (as a burn does before spending) and
commits. The job then finds its batch already handled.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from loyalty.adapters.db.locking import lock_wallet
from loyalty.application.audit import audit_ledger
from loyalty.application.expiry import ExpiryReport, expire_due_lots, expire_member_now
from tests.reliability.helpers import NOW, lot_rows, make_setup

pytestmark = pytest.mark.postgresql

EXPIRY = {"points": {"expiry": {"policy": "after_days", "days": 30}}}
BLOCKED_WAIT_S = 20.0


def _wait_until_a_backend_waits_on_a_lock(engine: Engine) -> None:
    deadline = time.monotonic() + BLOCKED_WAIT_S
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the expiry job never blocked on the held wallet lock")


def test_expiry_run_finishes_when_a_batch_was_expired_under_it(postgres_engine: Engine) -> None:
    """Members A and B both have a due lot; the job runs with batch_size=1, so its first batch
    is A. While the job waits for A's wallet, another transaction expires A's lot and commits.
    The job must still go on to B: after ``expire_due_lots(now)`` returns, nothing due at
    ``now`` may be left."""
    engine = postgres_engine
    s = make_setup(engine, **EXPIRY)
    a = s.enroll("A")
    b = s.enroll("B")
    assert a < b  # the job takes members in id order, so A is its first batch
    s.purchase(a, "OA", points=100, now=NOW - timedelta(days=60))
    s.purchase(b, "OB", points=200, now=NOW - timedelta(days=60))

    reports: list[ExpiryReport | BaseException] = []

    def job() -> None:
        try:
            reports.append(expire_due_lots(engine, now=NOW, batch_size=1))
        except Exception as exc:
            reports.append(exc)

    with engine.connect() as conn:
        with conn.begin():
            lock_wallet(conn, s.program_id, a)
            runner = threading.Thread(target=job)
            runner.start()
            _wait_until_a_backend_waits_on_a_lock(engine)
            assert expire_member_now(conn, s.program_id, a, now=NOW) == 100
        runner.join(timeout=30)
    assert not runner.is_alive()

    assert len(reports) == 1
    report = reports[0]
    assert isinstance(report, ExpiryReport), report
    left_due = [
        (lot.member_id, lot.remaining)
        for lot in lot_rows(engine, s.program_id)
        if lot.expires_at <= NOW and lot.remaining > 0
    ]
    assert audit_ledger(engine) == []
    assert left_due == [], (
        f"expire_due_lots(now) returned {report} but left lots due at now: {left_due}"
    )
    assert report.points_expired == 200
    assert s.balance(b)["balance"] == 0
