"""Forced interleavings of two identical requests on PostgreSQL (READ COMMITTED).

The racing tests in test_idempotency_races.py hit these windows only now and then. Here the
window is opened on purpose: request B runs on an engine whose ``before_cursor_execute`` hook
holds B's thread just before a chosen statement, request A runs to completion and commits, then
B goes on. Nothing is replaced: both requests run the real use cases against the real database;
the hook only decides when B's next statement is sent. (SQLite serialises write transactions
with ``BEGIN IMMEDIATE``, so there is no such window there.)
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.tables import members
from loyalty.application import events
from loyalty.application.idempotency import Outcome
from loyalty.application.members import MemberProfile, enroll_member
from tests.reliability.helpers import NOW, describe, make_setup, purchase_event

pytestmark = pytest.mark.postgresql

HOLD_TIMEOUT_S = 20.0
SELECT_FROM_MEMBERS = re.compile(r"^\s*SELECT\b.*\bFROM members\b", re.DOTALL | re.IGNORECASE)


class HoldBeforeStatement:
    """Holds the thread named ``thread_name`` before its ``nth`` statement that matches
    ``pattern`` until ``release()``."""

    def __init__(self, engine: Engine, thread_name: str, pattern: re.Pattern[str], nth: int):
        self.thread_name = thread_name
        self.pattern = pattern
        self.nth = nth
        self.seen = 0
        self.held = threading.Event()
        self.released = threading.Event()
        event.listen(engine, "before_cursor_execute", self._hook)

    def _hook(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name != self.thread_name:
            return
        if not self.pattern.search(statement):
            return
        self.seen += 1
        if self.seen == self.nth:
            self.held.set()
            assert self.released.wait(HOLD_TIMEOUT_S), "never released"

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def hooked_engine(postgres_engine: Engine) -> Iterator[Engine]:
    """A second engine on the same (truncated) test database, so hooks stay local to a test."""
    engine = make_engine(postgres_engine.url.render_as_string(hide_password=False), pool_size=4)
    yield engine
    engine.dispose()


def _run_in_thread(name: str, call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(call())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread, out


def _member_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(members)).scalar_one())


def test_enroll_same_key_committed_between_key_lookup_and_member_check_replays(
    hooked_engine: Engine,
) -> None:
    """B looks up its Idempotency-Key (absent), then A, the same request with the same key,
    enrols the member and commits, then B checks whether the member exists. B is the same
    request as A, so it must get A's response replayed, not ``MemberAlreadyExists``."""
    engine = hooked_engine
    s = make_setup(engine)
    hold = HoldBeforeStatement(engine, "request-B", SELECT_FROM_MEMBERS, nth=1)

    def enroll() -> Outcome:
        return enroll_member(
            engine,
            s.principal,
            s.program_id,
            external_id="C1",
            profile=MemberProfile(),
            now=NOW,
            idempotency_key="enroll-C1",
        )

    thread_b, out_b = _run_in_thread("request-B", enroll)
    try:
        assert hold.held.wait(HOLD_TIMEOUT_S), "B never reached its member lookup"
        a = enroll()
        assert not a.replayed
    finally:
        hold.release()
        thread_b.join(HOLD_TIMEOUT_S)
    assert not thread_b.is_alive()

    assert _member_count(engine) == 1
    (b,) = out_b
    assert isinstance(b, Outcome), describe(b) if isinstance(b, BaseException) else b
    assert b.replayed
    assert b.body == a.body


def test_auto_enrolling_purchase_when_the_member_appears_meanwhile_earns(
    hooked_engine: Engine,
) -> None:
    """Auto-enrolment on purchase: B (order O-B) finds no member "NEW", then A (order O-A, same
    customer) enrols "NEW" and commits, then B's enrolment checks again. B must earn on the
    member A created, not fail with ``MemberAlreadyExists``."""
    engine = hooked_engine
    s = make_setup(engine, enrollment={"auto_enroll_on_purchase": True})
    # B's first SELECT on members is find_member (absent); the second is insert_member's check.
    hold = HoldBeforeStatement(engine, "request-B", SELECT_FROM_MEMBERS, nth=2)

    def buy(order: str) -> Outcome:
        return events.submit_event(
            engine,
            s.principal,
            s.program_id,
            purchase_event(order, member={"external_id": "NEW"}, total_minor=1_000),
            now=NOW,
        )

    thread_b, out_b = _run_in_thread("request-B", lambda: buy("O-B"))
    try:
        assert hold.held.wait(HOLD_TIMEOUT_S), "B never reached its enrolment check"
        a = buy("O-A")
        assert a.body["member_enrolled"] is True
    finally:
        hold.release()
        thread_b.join(HOLD_TIMEOUT_S)
    assert not thread_b.is_alive()

    assert _member_count(engine) == 1
    (b,) = out_b
    assert isinstance(b, Outcome), describe(b) if isinstance(b, BaseException) else b
    assert b.body["member_id"] == a.body["member_id"]
    assert b.body["member_enrolled"] is False
    assert s.balance("ext:NEW")["balance"] == 20
