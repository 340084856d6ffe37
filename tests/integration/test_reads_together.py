"""``read_together`` answers what ``Connection.execute`` answers for each of a group's reads,
value for value, on both databases; on PostgreSQL an error among them reaches the caller as
SQLAlchemy's, a read after a wallet lock sees what the lock's holder committed, and the keyed
reads are planned once, not at every group."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Integer, String, bindparam, column, literal, select, table
from sqlalchemy.exc import DBAPIError

from loyalty.adapters.db.bulk import pipelined
from loyalty.adapters.db.locking import lock_wallets_read, wallets_locked
from loyalty.adapters.db.reads import read_together
from loyalty.application import idempotency, purchase_batches
from loyalty.application.access import authenticate
from loyalty.application.balances import live_lots_read
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.members import find_members_reads, members_found
from loyalty.application.programs import program_read

AT = datetime(2026, 5, 4, 12, tzinfo=UTC)


ON_POSTGRESQL = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
"""``api`` on PostgreSQL only: locks and plans, which SQLite has none of."""


def _purchase(n: int, *, member: int | None = None) -> dict[str, Any]:
    return {
        "type": "purchase",
        "id": f"O{n}",
        "member": {"external_id": f"C{n % 5 if member is None else member}"},
        "occurred_at": (AT + timedelta(days=n % 3)).isoformat(),
        "currency": "EUR",
        "total_minor": 1_000 + 37 * n,
    }


def _program(api: Any, purchases: int = 20) -> str:
    program = api.create_program(
        enrollment={"auto_enroll_on_purchase": True},
        points={"expiry": {"policy": "after_days", "days": 365}},
    )
    body = {"events": [_purchase(n) for n in range(purchases)]}
    response = api.request("POST", f"/v1/programs/{program}/events:batch", json=body)
    assert response.status_code == 200, response.text
    assert all(r["status"] == 201 for r in response.json()["results"]), response.text
    return program


def _group_reads(conn: Any, api: Any, program: str) -> list[Any]:
    ids = sorted(r.id for r in conn.exec_driver_sql("SELECT id FROM members").all())
    keys = {f"event:purchase:O{n}" for n in (1, 2, 7, 99)}  # O99 was never sent
    refs = {"ext:C1", "ext:C3", "ext:C404", ids[0]}
    return [
        program_read(program),
        idempotency.find_many_read(conn, tenant_id=api.tenant_id, scope=program, keys=keys),
        *find_members_reads(conn, program, refs),
        lock_wallets_read(conn, program, ids, skip_locked=True),
        live_lots_read(conn, program, ids, now=AT + timedelta(days=1)),
    ]


def test_read_together_answers_what_sqlalchemy_answers(api):
    program = _program(api)
    with api.engine.connect() as conn, conn.begin():
        reads = _group_reads(conn, api, program)
        together = read_together(conn, reads)
        one_by_one = [conn.execute(statement, params).all() for statement, params in reads]
    assert len(together) == len(reads) == 6
    for rows, expected in zip(together, one_by_one, strict=True):
        assert [tuple(row) for row in rows] == [tuple(row) for row in expected]
        for row, same in zip(rows, expected, strict=True):
            assert row._asdict() == same._asdict()  # the same names too
    program_rows, stored, by_external, by_id, locked, lots = together
    assert program_rows[0].current_version == 1
    assert {row.key for row in stored} == {f"event:purchase:O{n}" for n in (1, 2, 7)}
    assert all(isinstance(row.response, dict) and row.status_code == 201 for row in stored)
    assert {row.external_id for row in by_external} == {"C1", "C3"}
    assert len(by_id) == 1
    assert len(wallets_locked(locked)) == 5
    assert lots and all(row.expires_at.tzinfo is not None for row in lots if row.expires_at)
    assert sum(int(row.points) for row in lots if row.points is not None) > 0
    assert all(isinstance(row.enrolled_at, datetime) for row in by_external)
    found = members_found({"ext:C1", "ext:C3", "ext:C404", by_id[0].id}, by_external + by_id)
    assert set(found) == {"ext:C1", "ext:C3", by_id[0].id}


def test_an_error_among_the_reads_is_sqlalchemys_and_leaves_the_connection_usable(engine):
    """Wrapped as SQLAlchemy wraps a statement's error, which the transaction runner reads to
    retry (a locked SQLite, a deadlock) or answer 503."""
    missing = select(table("no_such_table", column("x")).c.x)
    later = select(literal(2, Integer).label("two"))
    with engine.connect() as conn:
        with pytest.raises(DBAPIError) as raised, conn.begin():
            read_together(conn, [(later, {}), (missing, {}), (later, {})])
        assert "no_such_table" in str(raised.value.orig)
        with conn.begin():
            assert read_together(conn, [(later, {})]) == [[(2,)]]


@pytest.mark.postgresql
@ON_POSTGRESQL
def test_a_read_after_the_wallet_lock_sees_what_the_holder_committed(api):
    """A batch waits for a wallet another transaction holds; the lots it reads in the same
    round trip, after the lock, include the lot that transaction committed."""
    program = _program(api, purchases=5)
    engine = api.engine
    with engine.connect() as conn:
        member = conn.exec_driver_sql(
            "SELECT id FROM members WHERE external_id = 'C2'"
        ).scalar_one()
    holder = engine.connect()
    holder.begin()
    holder.exec_driver_sql(
        "SELECT 1 FROM wallets WHERE member_id = %(m)s AND asset = 'PTS' FOR UPDATE", {"m": member}
    )
    seen: list[Any] = []

    def batch_reads() -> None:
        with engine.connect() as conn, conn.begin():
            locked, lots = read_together(
                conn,
                [
                    lock_wallets_read(conn, program, [member]),
                    live_lots_read(conn, program, [member], now=AT),
                ],
            )
            seen.append((locked, lots))

    waiting = threading.Thread(target=batch_reads)
    waiting.start()
    time.sleep(0.5)
    assert not seen  # still waiting for the wallet
    # The holder adds a lot of 1,000 points expiring in 2030, then lets the wallet go.
    holder.exec_driver_sql(
        """INSERT INTO lots (id, program_id, member_id, entry_id, asset, amount, remaining,
                             earned_at, expires_at)
           SELECT 'lot_held', program_id, member_id, entry_id, asset, 1000, 1000, earned_at,
                  '2030-01-01T00:00:00Z'
           FROM lots WHERE member_id = %(m)s LIMIT 1""",
        {"m": member},
    )
    holder.commit()
    holder.close()
    waiting.join(timeout=10)
    locked, lots = seen[0]
    assert len(locked) == 1
    by_expiry = {row.expires_at: row.points for row in lots if row.expires_at}
    assert by_expiry[datetime(2030, 1, 1, tzinfo=UTC)] == Decimal(1000)


@pytest.mark.postgresql
@ON_POSTGRESQL
def test_the_groups_keyed_reads_are_planned_once(api):
    """PostgreSQL plans a prepared statement again at every execution while it guesses that
    plan cheaper than its generic one, which it did for the keyed reads (an array of unknown
    length): the group's reads ask for the generic plan."""
    program = _program(api)
    principal = authenticate(api.engine, api.token)
    with api.engine.connect() as conn:
        for group in range(8):
            events = [
                PurchaseEvent.model_validate(_purchase(100 + 8 * group + n, member=n))
                for n in range(group % 3 + 1)
            ]
            with conn.begin():
                results = purchase_batches.record_group(
                    conn, principal, program, events, now=AT + timedelta(days=3)
                )
            assert results is not None and all(r.status_code == 201 for r in results)
        plans = conn.exec_driver_sql(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE position('unnest' in statement) > 0"
            " AND left(ltrim(statement, E' (\\n'), 6) = 'SELECT'"
        ).all()
    # The groups' keys, members, wallets and lots, each run 8 times (and the batch's reads).
    assert sum(generic >= 8 for _, generic, _ in plans) >= 4, plans
    for statement, generic, custom in plans:
        assert generic >= 1 and custom == 0, (statement, generic, custom)


def test_a_value_the_caller_gives_wins_over_the_statements_own(engine):
    """As with ``Connection.execute``: a parameter the statement holds a value for (here
    ``"a"``) takes the caller's value when one is given."""
    statement = select(bindparam("letter", "a", type_=String).label("letter"))
    with engine.connect() as conn, conn.begin():
        assert read_together(conn, [(statement, {})]) == [[("a",)]]
        assert read_together(conn, [(statement, {"letter": "b"})]) == [[("b",)]]
        assert conn.execute(statement, {"letter": "b"}).all() == [("b",)]


@pytest.mark.postgresql
def test_reads_are_refused_inside_a_pipelined_block(postgres_engine):
    """Their rows would be read before the block's end, where its errors are wrapped."""
    later = select(literal(2, Integer).label("two"))
    with (
        postgres_engine.connect() as conn,
        conn.begin(),
        pytest.raises(RuntimeError),
        pipelined(conn),
    ):
        read_together(conn, [(later, {})])
