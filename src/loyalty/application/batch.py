"""Recording many events in one transaction, each still individually idempotent and
individually reported: a rejected event rolls back to its own savepoint and the rest go on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection, Engine

from loyalty.adapters.db.engine import reading, run_transaction
from loyalty.application.access import Principal, Scope
from loyalty.application.event_documents import Event
from loyalty.application.events import AnyEvent, record_event
from loyalty.application.limits import BATCH_EVENTS_MAX, IMPORT_BATCH_MAX
from loyalty.application.programs import load_program
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
        results: list[BatchItem] = []
        for index, event in enumerate(batch):
            savepoint = conn.begin_nested()
            try:
                outcome = record_event(conn, principal, program_id, event, now=now)
            except DomainError as exc:
                savepoint.rollback()
                results.append(
                    BatchItem(
                        index,
                        False,
                        {"code": exc.code, "detail": exc.detail, **exc.context},
                        error=exc,
                    )
                )
                continue
            savepoint.commit()
            results.append(BatchItem(index, True, outcome.body, outcome.replayed))
        return results

    return run_transaction(engine, work)


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
    recorded in its own savepoint and idempotent on its own id, and reported in order. A
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
