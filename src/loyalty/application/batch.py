"""Recording many events in one transaction, each still individually idempotent and
individually reported: a rejected event leaves nothing behind and the rest go on (runs of
purchases are written in bulk, see ``purchase_batches``; other events each in a savepoint)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection, Engine

from loyalty.adapters.db.engine import reading, run_transaction
from loyalty.application import purchase_batches
from loyalty.application.access import Principal, Scope
from loyalty.application.event_documents import Event, PurchaseEvent
from loyalty.application.events import AnyEvent, record_event
from loyalty.application.idempotency import Outcome
from loyalty.application.limits import BATCH_EVENTS_MAX, IMPORT_BATCH_MAX
from loyalty.application.programs import ProgramContext, load_program
from loyalty.domain.errors import DomainError


@dataclass(frozen=True, slots=True)
class BatchItem:
    index: int
    accepted: bool
    body: dict[str, Any]
    replayed: bool = False
    error: DomainError | None = None


def record_events_batch(
    engine: Engine,
    principal: Principal,
    program_id: str,
    batch: list[AnyEvent],
    *,
    now: datetime,
) -> list[BatchItem]:
    """At most ``IMPORT_BATCH_MAX`` events; one result per event, in order."""
    if len(batch) > IMPORT_BATCH_MAX:
        raise ValueError(f"a batch holds at most {IMPORT_BATCH_MAX} events")

    def work(conn: Connection) -> list[BatchItem]:
        try:
            ctx: ProgramContext | None = load_program(conn, principal, program_id, Scope.WRITE)
        except DomainError:
            ctx = None  # each event is refused on its own, as record_event refuses it
        bulk = ctx is not None and purchase_batches.takes_bulk_path(ctx.settings)
        results: list[BatchItem] = []
        # Consecutive purchases go through the bulk path together; anything else (and every
        # event of a program that doesn't qualify) one by one, each in its own savepoint. Runs
        # are written in order, so an event sees everything before it in the batch.
        for is_run, group in groupby(batch, key=lambda e: bulk and isinstance(e, PurchaseEvent)):
            events = list(group)
            if is_run:
                assert ctx is not None
                run = [e for e in events if isinstance(e, PurchaseEvent)]
                outcomes = purchase_batches.record_purchases(conn, principal, ctx, run, now=now)
                for outcome in outcomes:
                    assert outcome is not None  # only a run that skips locked wallets has None
                    results.append(_item(len(results), outcome))
                continue
            for event in events:
                savepoint = conn.begin_nested()
                try:
                    outcome = record_event(conn, principal, program_id, event, now=now)
                except DomainError as exc:
                    savepoint.rollback()
                    results.append(_item(len(results), exc))
                    continue
                savepoint.commit()
                results.append(_item(len(results), outcome))
        return results

    return run_transaction(engine, work)


def _item(index: int, outcome: Outcome | DomainError) -> BatchItem:
    if isinstance(outcome, DomainError):
        return BatchItem(
            index,
            False,
            {"code": outcome.code, "detail": outcome.detail, **outcome.context},
            error=outcome,
        )
    return BatchItem(index, True, outcome.body, outcome.replayed)


_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(Event)


@dataclass(frozen=True, slots=True)
class Invalid:
    """An event of a batch that doesn't match the schema: its validation errors."""

    errors: list[dict[str, Any]]


def submit_batch(
    engine: Engine,
    principal: Principal,
    program_id: str,
    raw: list[Any],
    *,
    now: datetime,
) -> list[BatchItem | Invalid]:
    """Up to ``BATCH_EVENTS_MAX`` events in one transaction: each is validated on its own,
    recorded or refused on its own, idempotent on its own id, and reported in order. A
    program the key can't use refuses the whole batch."""
    assert len(raw) <= BATCH_EVENTS_MAX
    with reading(engine) as conn:
        load_program(conn, principal, program_id, Scope.WRITE)
    parsed: list[AnyEvent | Invalid] = []
    for item in raw:
        try:
            parsed.append(_EVENT.validate_python(item))
        except ValidationError as exc:
            parsed.append(
                Invalid(
                    [
                        {
                            "field": ".".join(str(p) for p in err["loc"]),
                            "message": err["msg"],
                            "type": err["type"],
                        }
                        for err in exc.errors()[:20]
                    ]
                )
            )
    valid = [event for event in parsed if not isinstance(event, Invalid)]
    recorded = iter(record_events_batch(engine, principal, program_id, valid, now=now))
    return [item if isinstance(item, Invalid) else next(recorded) for item in parsed]
