"""Group commit for single events: concurrent ``POST .../events`` purchases of one program,
sent with one API key, are recorded together in one transaction through the bulk path.

Whichever request finds no group in progress for its program and key leads: it takes what is
queued (its own purchase first, at most ``EVENT_GROUP_SIZE_MAX``; optionally after waiting
``EVENT_GROUP_WAIT_MS`` for more to join), records it with
``purchase_batches.record_purchases`` in one transaction, commits, and only then hands each
waiting request its own answer: the outcome it would have got alone (the bulk path answers
body for body what ``events.record_event`` answers), or the domain error that refused it (a
refused purchase writes nothing, so the others commit). Then it passes the lead to the oldest
request still queued, and returns its own answer.

A group of one is recorded alone by ``events.submit_event``, still under the lead, so it
never races the next group for the database. Anything else goes alone, exactly as before: a
return or an action, a program whose purchases don't take the bulk path, and every request
of a group that failed for any other reason than a domain error (a database error, a retry
budget run out), so one request can't fail the others and each gets its own ``503`` if the
database is really down.
Nothing is answered before the commit that recorded it; a server killed between the commit
and the answers leaves events that the client's retry, on the same event id, replays.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection, Engine

from loyalty.adapters.db.engine import run_transaction
from loyalty.application import events, purchase_batches
from loyalty.application.access import Principal, Scope
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.events import AnyEvent
from loyalty.application.idempotency import Outcome
from loyalty.application.programs import load_program
from loyalty.domain.errors import DomainError


@dataclass(eq=False, slots=True)
class _Ticket:
    """One waiting request: its purchase, and once decided, its answer."""

    event: PurchaseEvent
    now: datetime
    decided: threading.Event = field(default_factory=threading.Event)
    answer: Outcome | DomainError | None = None
    """None once decided: record it alone."""
    leads: bool = False
    """Set instead of an answer: this request leads the next group."""


@dataclass(slots=True)
class _Queue:
    waiting: list[_Ticket] = field(default_factory=list)
    led: bool = False


_GroupKey = tuple[Principal, str]
_Answer = Outcome | DomainError | None


class GroupRecorder(Protocol):
    """How a group is recorded: ``record_group``."""

    def __call__(
        self,
        engine: Engine,
        principal: Principal,
        program_id: str,
        group: list[PurchaseEvent],
        *,
        now: datetime,
    ) -> list[_Answer]: ...


class EventGroups:
    """The queues of one process, per program and API key."""

    def __init__(
        self,
        engine: Engine,
        *,
        size_max: int,
        wait_ms: float,
        record: GroupRecorder | None = None,
    ) -> None:
        assert size_max >= 1
        assert wait_ms >= 0
        self._engine = engine
        self._record = record or record_group
        self._size_max = size_max
        self._wait_s = wait_ms / 1000
        self._lock = threading.Lock()
        self._queues: dict[_GroupKey, _Queue] = {}

    def submit(
        self, principal: Principal, program_id: str, event: AnyEvent, *, now: datetime
    ) -> Outcome:
        """``events.submit_event``, recorded with whatever else is queued for the same program
        and key. Raises what ``submit_event`` raises, for this event alone."""
        if not isinstance(event, PurchaseEvent):
            return events.submit_event(self._engine, principal, program_id, event, now=now)
        ticket = _Ticket(event, now)
        key = (principal, program_id)
        with self._lock:
            queue = self._queues.setdefault(key, _Queue())
            queue.waiting.append(ticket)
            ticket.leads = not queue.led
            queue.led = True
        if not ticket.leads:
            ticket.decided.wait()
        if ticket.leads:
            self._lead(key, principal, program_id)
        answer = ticket.answer
        if isinstance(answer, DomainError):
            raise answer
        if answer is None:
            return events.submit_event(self._engine, principal, program_id, event, now=now)
        return answer

    def _lead(self, key: _GroupKey, principal: Principal, program_id: str) -> None:
        """Record one group (the leader's ticket is the oldest queued), answer it, and pass
        the lead on. Whatever happens, every ticket taken is decided and the lead is passed,
        so no request waits forever."""
        if self._wait_s:
            with self._lock:
                short = len(self._queues[key].waiting) < self._size_max
            if short:
                time.sleep(self._wait_s)  # let more requests join this group
        with self._lock:
            queue = self._queues[key]
            group = queue.waiting[: self._size_max]
            del queue.waiting[: self._size_max]
        answers: list[_Answer] = [None] * len(group)
        try:
            if len(group) > 1:
                answers = list(
                    self._record(
                        self._engine,
                        principal,
                        program_id,
                        [t.event for t in group],
                        now=max(t.now for t in group),
                    )
                )
            else:
                # Alone, but still holding the lead: recorded after it passed, this write
                # would race the next group's for the database (on SQLite, one writer).
                answers = [self._alone(principal, program_id, group[0])]
        except Exception:  # each request is recorded alone and meets its own error
            answers = [None] * len(group)
        finally:
            for ticket, answer in zip(group, answers, strict=True):
                ticket.answer = answer
                ticket.leads = False
            with self._lock:
                if queue.waiting:
                    queue.waiting[0].leads = True
                    queue.waiting[0].decided.set()
                else:
                    queue.led = False
                    del self._queues[key]
            for ticket in group[1:]:
                ticket.decided.set()

    def _alone(self, principal: Principal, program_id: str, ticket: _Ticket) -> _Answer:
        try:
            return events.submit_event(
                self._engine, principal, program_id, ticket.event, now=ticket.now
            )
        except DomainError as exc:
            return exc


def record_group(
    engine: Engine,
    principal: Principal,
    program_id: str,
    group: list[PurchaseEvent],
    *,
    now: datetime,
) -> list[_Answer]:
    """Record ``group`` in one transaction through the bulk path: one answer per purchase, in
    order, an ``Outcome`` or the ``DomainError`` that refused it. All ``None`` (nothing
    written) if the program's purchases don't take the bulk path or the key can't use it:
    each is then recorded alone and meets its own error."""

    def work(conn: Connection) -> list[_Answer]:
        try:
            ctx = load_program(conn, principal, program_id, Scope.WRITE)
        except DomainError:
            return [None] * len(group)
        if not purchase_batches.takes_bulk_path(ctx.settings):
            return [None] * len(group)
        recorded = purchase_batches.record_purchases(conn, principal, ctx, group, now=now)
        return list(recorded)

    return run_transaction(engine, work)
