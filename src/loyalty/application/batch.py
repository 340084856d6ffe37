"""Recording many events in one transaction, each still individually idempotent and
individually reported: a rejected event rolls back to its own savepoint and the rest go on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from loyalty.adapters.db.engine import run_transaction
from loyalty.application.access import Principal
from loyalty.application.events import AnyEvent, record_event
from loyalty.application.limits import IMPORT_BATCH_MAX
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
