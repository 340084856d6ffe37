"""Shared helpers for the concurrency tests: a tenant with an admin principal, a program,
members and purchases set up through the use cases, and ``race`` to run calls in real threads
that start together."""

from __future__ import annotations

import threading
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, func, select

from loyalty.adapters.db.tables import lot_movements, lots, metadata
from loyalty.application import balances, events, members, programs
from loyalty.application.access import Principal, Scope, authenticate, create_api_key
from loyalty.application.event_documents import PurchaseEvent, ReturnEvent
from loyalty.application.idempotency import Outcome
from loyalty.application.program_document import ProgramDocument

T = TypeVar("T")

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
BARRIER_TIMEOUT_S = 30.0


@dataclass
class Setup:
    engine: Engine
    principal: Principal
    program_id: str

    def enroll(self, external_id: str, *, now: datetime = NOW) -> str:
        outcome = members.enroll_member(
            self.engine,
            self.principal,
            self.program_id,
            external_id=external_id,
            profile=members.MemberProfile(),
            now=now,
        )
        return str(outcome.body["id"])

    def purchase(
        self,
        member_id: str,
        order_id: str,
        *,
        points: int,
        now: datetime = NOW,
    ) -> Outcome:
        """A purchase without lines that earns exactly ``points`` (1 point per 100 minor)."""
        return events.submit_event(
            self.engine,
            self.principal,
            self.program_id,
            purchase_event(order_id, member={"id": member_id}, total_minor=points * 100, now=now),
            now=now,
        )

    def return_order(self, return_id: str, order_id: str, *, now: datetime = NOW) -> Outcome:
        """Return everything of ``order_id`` that is not yet returned."""
        event = ReturnEvent.model_validate(
            {
                "type": "return",
                "id": return_id,
                "order_id": order_id,
                "occurred_at": now.isoformat(),
            }
        )
        return events.submit_event(self.engine, self.principal, self.program_id, event, now=now)

    def balance(self, member_id: str, *, now: datetime = NOW) -> dict[str, Any]:
        return balances.get_balance(
            self.engine, self.principal, self.program_id, member_id, now=now
        )

    def statement(self, member_id: str, *, page: int = 37) -> list[dict[str, Any]]:
        """Every statement entry of the member, following the cursor to the end."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        seen_cursors: set[str] = set()
        while True:
            result = balances.get_statement(
                self.engine,
                self.principal,
                self.program_id,
                member_id,
                limit=page,
                cursor=cursor,
            )
            items.extend(result["items"])
            cursor = result["next_cursor"]
            if cursor is None:
                break
            assert cursor not in seen_cursors, "statement pagination loops"
            seen_cursors.add(cursor)
        ids = [item["id"] for item in items]
        assert len(ids) == len(set(ids)), "statement pages overlap"
        return items


def purchase_event(
    order_id: str, *, member: dict[str, str], total_minor: int, now: datetime = NOW
) -> PurchaseEvent:
    return PurchaseEvent.model_validate(
        {
            "type": "purchase",
            "id": order_id,
            "member": member,
            "occurred_at": now.isoformat(),
            "currency": "EUR",
            "total_minor": total_minor,
        }
    )


def make_setup(engine: Engine, **document: Any) -> Setup:
    issued = create_api_key(
        engine, tenant_name="t", name="k", scopes=[Scope.ADMIN], program_id=None, now=NOW
    )
    principal = authenticate(engine, issued.token)
    doc: dict[str, Any] = {"name": "Reliability", "currency": "EUR", **document}
    created = programs.create_program(
        engine, principal, ProgramDocument.model_validate(doc), now=NOW
    )
    return Setup(engine, principal, str(created.body["id"]))


def race(n: int, call: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``call(0..n-1)`` in ``n`` threads released together by a barrier. Returns each
    call's result or the exception it raised, in index order."""
    barrier = threading.Barrier(n, timeout=BARRIER_TIMEOUT_S)

    def worker(i: int) -> T | BaseException:
        barrier.wait()
        try:
            return call(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(worker, i) for i in range(n)]
        return [f.result() for f in futures]


def describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def assert_only(
    results: Sequence[object], allowed: tuple[type[BaseException], ...], what: str
) -> None:
    """Every exception in ``results`` is one of ``allowed``; otherwise fail showing the first
    unexpected one with its traceback."""
    unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, allowed)]
    if unexpected:
        kinds = sorted({type(r).__name__ for r in unexpected})
        raise AssertionError(
            f"{what}: {len(unexpected)} unexpected exception(s) {kinds}; first:\n"
            + describe(unexpected[0])
        )


def successes(results: Sequence[T | BaseException]) -> list[T]:
    return [r for r in results if not isinstance(r, BaseException)]


def failures(results: Sequence[object]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


def lot_movement_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(
                    lot_movements.c.entry_id,
                    lot_movements.c.lot_id,
                    lot_movements.c.kind,
                    lot_movements.c.amount,
                )
            ).all()
        )


def lot_rows(engine: Engine, program_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(
                    lots.c.id,
                    lots.c.member_id,
                    lots.c.amount,
                    lots.c.remaining,
                    lots.c.expires_at,
                ).where(lots.c.program_id == program_id)
            ).all()
        )


def table_counts(engine: Engine) -> dict[str, int]:
    """The number of rows in every table: what a refused request must leave unchanged."""
    with engine.connect() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in metadata.sorted_tables
        }


def redeem_over_http(api: Any, program_id: str, member: str, points: int) -> str:
    """Redeem through the API (with a fresh ``Idempotency-Key``); the redemption's id."""
    r = api.request(
        "POST",
        f"/v1/programs/{program_id}/members/{member}/redemptions",
        json={"points": points},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])
