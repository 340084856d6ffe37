"""Group commit for single events: concurrent ``POST .../events`` purchases of one program,
sent with one API key, are recorded together in one transaction through the bulk path.

The first request to find no group in progress for its program and key starts a leader, a
task on the event loop that takes what is queued (oldest first, at most
``EVENT_GROUP_SIZE_MAX``; optionally after waiting ``EVENT_GROUP_WAIT_MS`` for more to join),
records it with ``purchase_batches.record_group`` in one transaction, commits, and only
then hands each waiting request its own answer: the outcome it would have got alone (the
bulk path answers body for body what ``events.record_event`` answers), or the domain error
that refused it (a refused purchase writes nothing, so the others commit). Then it takes the
next group, until the queue is empty. Before taking a group it lets the event loop turn
until a few turns in a row bring no new request (``SETTLE_QUIET_TURNS``), so the requests
the server is already reading join it. Waiting requests hold no thread, only a future on the
event loop: with threads, every answer woke a thread, and 32 waiting clients held 32 of the
server's worker threads.

Where a group is written: on the event loop's own thread where the server sets that up
(``on_loop``, a ``nowait_engine``), so the group's Python and the loop's don't take turns at
Python's lock; the loop reads no request meanwhile. There the transaction runs ``nowait``:
whatever would make it wait (a lock, another writer, a slow statement) makes it give way with
nothing written (``WouldWait``), and the group is written in a worker thread instead, where
waiting is fine. On the loop even a group of one takes the bulk path, which answers as it
would alone; in a worker thread a group of one is recorded alone by
``events.submit_event``, still by the leader, so it never races the next group for the
database.

Anything else goes alone, exactly as before: a return or an action, a program whose
purchases don't take the bulk path, and every request of a group that failed for any other
reason than a domain error or the database itself, so one request can't fail the others. A
group the database failed (``StorageUnavailable``: down, its sessions ended, contended past
the retry budget) wrote nothing, and each of its requests gets the ``503`` it would have got
alone. Nothing is answered before the commit that recorded it; a server killed between the
commit and the answers leaves events that the client's retry, on the same event id, replays.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy import Connection, Engine

from loyalty.adapters.db.engine import StorageUnavailable, WouldWait, run_transaction
from loyalty.application import events, purchase_batches
from loyalty.application.access import Principal
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.events import AnyEvent
from loyalty.application.idempotency import Outcome
from loyalty.domain.errors import DomainError

GROUP_THREADS_MAX = 16
"""Transactions of groups (and of events recorded alone) running at once in one process."""
SETTLE_QUIET_TURNS = 5
"""Before taking a group, the leader lets the event loop turn until this many turns in a row
add no request to the queue (at most ``SETTLE_TURNS_MAX``): requests the server has already
read but not yet validated join the group instead of waiting for the next one."""
SETTLE_TURNS_MAX = 32

T = TypeVar("T")

_Answer = Outcome | DomainError | None
"""None: record it alone."""


@dataclass(eq=False, slots=True)
class _Ticket:
    """One waiting request: its purchase, and the future its answer is set on."""

    event: PurchaseEvent
    now: datetime
    answer: asyncio.Future[_Answer]


_GroupKey = tuple[Principal, str]


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
        nowait: bool = False,
    ) -> list[_Answer]: ...


class EventGroups:
    """The queues of one process, per program and API key. The queues live on the event loop
    (only its thread touches them, so they need no lock); a waiting request holds no thread,
    only a future. Each queue has one leader, a task that records its groups one after another
    in a worker thread and sets each request's answer."""

    def __init__(
        self,
        engine: Engine,
        *,
        size_max: int,
        wait_ms: float,
        record: GroupRecorder | None = None,
        on_loop: Engine | None = None,
    ) -> None:
        assert size_max >= 1
        assert wait_ms >= 0
        self._engine = engine
        self._record = record or record_group
        self._size_max = size_max
        self._wait_s = wait_ms / 1000
        self._queues: dict[_GroupKey, list[_Ticket]] = {}
        """The requests waiting, per program and key; a queue exists while its leader runs."""
        self._leaders: set[asyncio.Task[None]] = set()
        self._threads = ThreadPoolExecutor(GROUP_THREADS_MAX, thread_name_prefix="event-groups")
        self._on_loop = on_loop
        """Where groups are recorded on the event loop's own thread (``nowait_engine``); None:
        in a worker thread."""

    @property
    def reads_on_loop(self) -> Engine | None:
        """Where a short request may be answered on the event loop's thread rather than a
        worker's, run ``nowait``: the loop's own connection to a SQLite file, the one groups
        are written on (the loop runs one thing at a time, so they never share it at once).
        None on PostgreSQL, whose round trips would hold the loop, on a SQLite in memory, and
        where groups are not written on the loop."""
        on_loop = self._on_loop
        if on_loop is None or on_loop is self._engine or on_loop.dialect.name != "sqlite":
            return None
        return on_loop

    def close(self) -> None:
        """Close the connections groups were recorded on the loop with, where they are not
        the engine's own (a later group opens them again)."""
        if self._on_loop is not None and self._on_loop is not self._engine:
            self._on_loop.dispose()

    async def submit(
        self, principal: Principal, program_id: str, event: AnyEvent, *, now: datetime
    ) -> Outcome:
        """``events.submit_event``, recorded with whatever else is queued for the same program
        and key. Raises what ``submit_event`` raises, for this event alone."""
        if not isinstance(event, PurchaseEvent):
            return await self._submit_alone(principal, program_id, event, now=now)
        loop = asyncio.get_running_loop()
        ticket = _Ticket(event, now, loop.create_future())
        key = (principal, program_id)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = []
            leader = loop.create_task(self._lead(key, principal, program_id))
            self._leaders.add(leader)
            leader.add_done_callback(self._leaders.discard)
        queue.append(ticket)
        # Shielded: a request whose client went away still has its purchase recorded (as a
        # synchronous request's thread would run on); only its answer is not awaited.
        answer = await asyncio.shield(ticket.answer)
        if isinstance(answer, DomainError):
            raise answer
        if answer is None:
            return await self._submit_alone(principal, program_id, event, now=now)
        return answer

    async def _settle(self, queue: list[_Ticket]) -> None:
        """Let requests already on their way join: when a group's answers go out, its clients
        send their next purchases at once, and the first to arrive would otherwise find the
        queue to itself and be recorded alone while the others wait behind it. A turn of an
        idle loop costs microseconds, so a lone request hardly waits."""
        quiet = turns = 0
        while quiet < SETTLE_QUIET_TURNS and turns < SETTLE_TURNS_MAX:
            if len(queue) >= self._size_max:
                return
            seen = len(queue)
            await asyncio.sleep(0)
            turns += 1
            quiet = quiet + 1 if len(queue) == seen else 0

    async def _submit_alone(
        self, principal: Principal, program_id: str, event: AnyEvent, *, now: datetime
    ) -> Outcome:
        return await self._in_thread(
            functools.partial(
                events.submit_event, self._engine, principal, program_id, event, now=now
            )
        )

    async def _in_thread(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, work)

    async def _lead(self, key: _GroupKey, principal: Principal, program_id: str) -> None:
        """Record the queue's groups, oldest requests first, until it is empty. Whatever
        happens, every ticket taken is answered, so no request waits forever."""
        queue = self._queues[key]
        try:
            while queue:
                if self._wait_s and len(queue) < self._size_max:
                    await asyncio.sleep(self._wait_s)  # let more requests join this group
                await self._settle(queue)
                group = queue[: self._size_max]
                del queue[: self._size_max]
                answers: list[_Answer] = [None] * len(group)
                failure: Exception | None = None
                try:
                    answers = await self._recorded(principal, program_id, group)
                except StorageUnavailable as exc:
                    # The database failed the transaction (down, sessions ended, contended
                    # past the retry budget): nothing was written, and each request gets the
                    # 503 it would have got alone, rather than each trying again at once.
                    failure = exc
                except Exception as exc:
                    # A request that was alone met its own error. A group's requests are each
                    # recorded alone and meet their own, so one can't fail the others.
                    answers = [None] * len(group)
                    failure = exc if len(group) == 1 else None
                finally:
                    for ticket, answer in zip(group, answers, strict=True):
                        if ticket.answer.done():
                            continue
                        if failure is not None:
                            ticket.answer.set_exception(failure)
                        else:
                            ticket.answer.set_result(answer)
        finally:
            for ticket in queue:  # only if this task itself was cancelled
                if not ticket.answer.done():
                    ticket.answer.set_result(None)
            queue.clear()
            del self._queues[key]

    async def _recorded(
        self, principal: Principal, program_id: str, group: list[_Ticket]
    ) -> list[_Answer]:
        """The group's answers: recorded on the event loop's thread where that is set up and
        nothing would make it wait, else in a worker thread."""
        if self._on_loop is not None:
            try:
                return self._bulk(self._on_loop, principal, program_id, group, nowait=True)
            except WouldWait:
                pass  # nothing was written: recorded in a thread, where waiting is fine
        return await self._in_thread(
            functools.partial(self._record_group, principal, program_id, group)
        )

    def _bulk(
        self,
        engine: Engine,
        principal: Principal,
        program_id: str,
        group: list[_Ticket],
        *,
        nowait: bool,
    ) -> list[_Answer]:
        purchases = [t.event for t in group]
        now = max(t.now for t in group)
        return list(self._record(engine, principal, program_id, purchases, now=now, nowait=nowait))

    def _record_group(
        self, principal: Principal, program_id: str, group: list[_Ticket]
    ) -> list[_Answer]:
        """In a worker thread: the group through the bulk path, or a group of one alone (a
        domain error is its answer). Raises anything else."""
        if len(group) > 1:
            return self._bulk(self._engine, principal, program_id, group, nowait=False)
        ticket = group[0]
        try:
            return [
                events.submit_event(
                    self._engine, principal, program_id, ticket.event, now=ticket.now
                )
            ]
        except DomainError as exc:
            return [exc]


def record_group(
    engine: Engine,
    principal: Principal,
    program_id: str,
    group: list[PurchaseEvent],
    *,
    now: datetime,
    nowait: bool = False,
) -> list[_Answer]:
    """Record ``group`` in one transaction through the bulk path: one answer per purchase, in
    order, an ``Outcome`` or the ``DomainError`` that refused it. All ``None`` (nothing
    written) if the program's purchases don't take the bulk path or the key can't use it:
    each is then recorded alone and meets its own error. None too for a purchase whose
    member's wallet another transaction holds: the group doesn't wait for it (so one held
    wallet can't stall every purchase of the program), and it is recorded alone, where
    waiting is fine. ``nowait``: ``run_transaction``."""

    def work(conn: Connection) -> list[_Answer]:
        recorded = purchase_batches.record_group(conn, principal, program_id, group, now=now)
        return [None] * len(group) if recorded is None else list(recorded)

    return run_transaction(engine, work, nowait=nowait)
