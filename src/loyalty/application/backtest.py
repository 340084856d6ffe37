"""Backtesting over the API: a candidate document replayed on the program's stored events, and
compared with the published version on the same events. Read-only: nothing is written."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Connection, Engine, and_, select

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.tables import events, members
from loyalty.application.access import Principal, Scope
from loyalty.application.event_documents import Event
from loyalty.application.events import AnyEvent
from loyalty.application.expressions import check_document_expressions
from loyalty.application.program_document import ProgramDocument, settings_from_document
from loyalty.application.programs import load_program
from loyalty.application.simulation import compare, simulate
from loyalty.domain.errors import LimitExceeded

BACKTEST_EVENTS_MAX = 100_000
"""Events one API backtest replays; larger histories go through ``loyalty simulate``."""

_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(Event)


def backtest(
    engine: Engine,
    principal: Principal,
    program_id: str,
    candidate: ProgramDocument,
    *,
    since: datetime | None,
    until: datetime | None,
) -> dict[str, Any]:
    """Raises ``ProgramNotFound``, ``InvalidProgramDocument`` (expressions),
    ``LimitExceeded`` (more than ``BACKTEST_EVENTS_MAX`` events in the window)."""
    check_document_expressions(candidate)

    def work(conn: Connection) -> dict[str, Any]:
        ctx = load_program(conn, principal, program_id, Scope.READ)
        conditions = [events.c.program_id == program_id, events.c.type.in_(["purchase", "action"])]
        if since is not None:
            conditions.append(events.c.occurred_at >= since)
        if until is not None:
            conditions.append(events.c.occurred_at < until)
        rows = conn.execute(
            select(events.c.payload)
            .where(and_(*conditions))
            .order_by(events.c.occurred_at, events.c.id)
            .limit(BACKTEST_EVENTS_MAX + 1)
        ).all()
        if len(rows) > BACKTEST_EVENTS_MAX:
            raise LimitExceeded(
                f"The window holds more than {BACKTEST_EVENTS_MAX} events; narrow it with "
                "'from'/'until', or export the history and run `loyalty simulate`.",
                limit="backtest_events",
                events_max=BACKTEST_EVENTS_MAX,
            )
        history = [_EVENT.validate_python(row.payload) for row in rows]
        attributes = {
            f"ext:{r.external_id}": dict(r.attributes)
            for r in conn.execute(
                select(members.c.external_id, members.c.attributes).where(
                    members.c.program_id == program_id
                )
            ).all()
        }
        by_id = {
            r.id: dict(r.attributes)
            for r in conn.execute(
                select(members.c.id, members.c.attributes).where(members.c.program_id == program_id)
            ).all()
        }
        lookup = {**attributes, **by_id}

        def member_attributes(ref: str) -> dict[str, Any]:
            return lookup.get(ref, {})

        new = simulate(
            settings_from_document(candidate, version=0),
            history,
            member_attributes=member_attributes,
        )
        current = simulate(ctx.settings, history, member_attributes=member_attributes)
        return {
            "events": len(history),
            "candidate": new.as_dict(),
            "published": {**current.as_dict(), "version": ctx.settings.version},
            "difference": compare(new, current),
        }

    return run_transaction(engine, work, write=False)
