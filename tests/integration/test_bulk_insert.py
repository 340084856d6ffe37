"""``insert_rows`` stores exactly what SQLAlchemy's own ``insert`` stores, on both databases,
for thousands of rows at once, and its errors reach
the caller as SQLAlchemy's (the transaction runner retries on those), in a ``pipelined`` block
too. ``insert_new_rows`` stores the same, skipping the rows whose unique key is taken."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import DataError, IntegrityError

from loyalty.adapters.db.bulk import execute_raw, insert_new_rows, insert_rows, pipelined
from loyalty.adapters.db.engine import PG_PREPARED_STATEMENTS_MAX, _is_unique_violation
from loyalty.adapters.db.tables import events

ROWS = 2_301
PARIS = timezone(timedelta(hours=1))


def _rows(prefix: str) -> list[dict[str, object]]:
    start = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=PARIS)
    return [
        {
            "id": f"{prefix}{i:05d}",
            "program_id": "prg_1",
            "member_id": f"mem_{i % 7}",
            "type": "purchase",
            "source_id": f"{prefix}-order-{i}",
            "action": None if i % 3 else "review",
            "occurred_at": start + timedelta(seconds=i),
            "received_at": datetime(2026, 3, 1, tzinfo=UTC) + timedelta(microseconds=i),
            "payload": {"n": i, "name": "café ☕ 'quoted' %s", "none": None, "list": [1, "2"]},
            "entry_id": None,
            "points": i * 10 - 5,
        }
        for i in range(ROWS)
    ]


def _stored(conn, prefix: str) -> list[tuple[object, ...]]:
    rows = conn.execute(
        select(events).where(events.c.id.startswith(prefix)).order_by(events.c.id)
    ).all()
    return [(row.id[1:], row.source_id[1:], *row[2:4], *row[5:]) for row in rows]


def test_insert_rows_stores_what_sqlalchemy_stores(engine):
    with engine.begin() as conn:
        conn.execute(insert(events), _rows("a"))
        insert_rows(conn, events, _rows("b"))
    with engine.connect() as conn:
        by_sqlalchemy = _stored(conn, "a")
        by_insert_rows = _stored(conn, "b")
    assert len(by_insert_rows) == ROWS
    assert by_insert_rows == by_sqlalchemy
    first = by_insert_rows[0]
    assert first[5] == datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)  # occurred_at
    assert first[7]["name"] == "café ☕ 'quoted' %s"  # payload


def test_insert_rows_raises_sqlalchemys_integrity_error_and_writes_nothing(engine):
    rows = _rows("c")
    rows[-1]["source_id"] = rows[0]["source_id"]  # uq_events_source, in the last statement
    with pytest.raises(IntegrityError), engine.begin() as conn:
        insert_rows(conn, events, rows)
    with engine.connect() as conn:
        assert _stored(conn, "c") == []


def test_insert_new_rows_skips_the_rows_whose_key_is_taken_and_names_the_others(engine):
    taken = _rows("p")[:30]
    again = [{**row, "id": "q" + row["id"][1:]} for row in taken]  # the same source ids
    fresh = _rows("r")[:45]
    with engine.begin() as conn:
        insert_rows(conn, events, taken[::3])
        conn.execute(insert(events), _rows("s")[:45])  # what SQLAlchemy stores for ``fresh``
    rows = again + fresh  # 75 rows: statements of 64 and 11
    with engine.begin() as conn:
        inserted = insert_new_rows(
            conn, events, rows, unique=("program_id", "type", "source_id"), returning="id"
        )
    skipped = {"q" + row["id"][1:] for row in taken[::3]}
    assert inserted == {row["id"] for row in rows} - skipped
    assert len(inserted) == 65
    with engine.connect() as conn:
        assert _stored(conn, "r") == _stored(conn, "s")
        assert len(_stored(conn, "q")) == 20
    with engine.begin() as conn:  # again: every key is taken now
        key = ("program_id", "type", "source_id")
        assert insert_new_rows(conn, events, rows, unique=key, returning="id") == set()
        assert insert_new_rows(conn, events, [], unique=key, returning="id") == set()


def test_a_value_too_long_for_its_column_is_refused_as_sqlalchemys_insert_refuses_it(
    postgres_engine,
):
    """PostgreSQL refuses an id longer than its column (SQLite keeps what it is given)."""
    rows = _rows("t")[:3]
    rows[1]["id"] = "t" + "x" * 40  # events.id is VARCHAR(32)
    with pytest.raises(DataError), postgres_engine.begin() as conn:
        conn.execute(insert(events), rows[1:2])
    with pytest.raises(DataError), postgres_engine.begin() as conn:
        insert_rows(conn, events, rows)
    with postgres_engine.connect() as conn:
        assert _stored(conn, "t") == []


def test_timestamps_are_stored_as_sqlalchemy_stores_them_to_the_byte(engine):
    """The same instants in other zones, whole seconds, and one instant repeated: the stored
    values as the driver returns them (SQLite's text, PostgreSQL's timestamps) are equal."""
    instants = [
        datetime(2026, 3, 1, 9, 30, tzinfo=PARIS),
        datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-11))),
        datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ]
    rows = _rows("z")[: len(instants) * 3]
    for i, row in enumerate(rows):
        row["occurred_at"] = instants[i % len(instants)]
        row["received_at"] = instants[0]
    with engine.begin() as conn:
        copies = [{**row, "id": "y" + row["id"][1:], "source_id": "y" + row["id"]} for row in rows]
        conn.execute(insert(events), copies)
        insert_rows(conn, events, rows)
        raw = "SELECT occurred_at, received_at FROM events WHERE substr(id, 1, 1) = '{}'"
        raw += " ORDER BY id"
        by_sqlalchemy = conn.exec_driver_sql(raw.format("y")).all()
        by_insert_rows = conn.exec_driver_sql(raw.format("z")).all()
    assert by_insert_rows == by_sqlalchemy
    if engine.dialect.name == "sqlite":
        assert by_insert_rows[1] == ("2026-03-01 08:30:00.000000", "2026-03-01 08:30:00.000000")


def test_a_naive_timestamp_is_refused_and_nothing_written(engine):
    rows = _rows("n")[:3]
    rows[2]["occurred_at"] = datetime(2026, 3, 1, 9, 30)  # no zone
    with pytest.raises(ValueError, match="naive"), engine.begin() as conn:
        insert_rows(conn, events, rows)
    with engine.connect() as conn:
        assert _stored(conn, "n") == []


def test_no_rows_is_no_statement(engine):
    with engine.begin() as conn:
        insert_rows(conn, events, [])
        assert conn.execute(select(events.c.id)).first() is None


def test_pipelined_inserts_store_what_plain_ones_store(engine):
    with engine.begin() as conn:
        insert_rows(conn, events, _rows("d"))
        with pipelined(conn):
            insert_rows(conn, events, _rows("e"))
            insert_rows(conn, events, _rows("f")[:3])
        # Read in the same transaction, after the block: everything arrived.
        assert len(_stored(conn, "e")) == ROWS
    with engine.connect() as conn:
        plain = _stored(conn, "d")
        piped = _stored(conn, "e")
        assert len(_stored(conn, "f")) == 3
    assert piped == plain


def test_an_error_in_a_pipelined_block_arrives_as_sqlalchemys_and_writes_nothing(engine):
    first = _rows("g")[:5]
    clash = _rows("h")[:5]
    clash[2]["source_id"] = first[0]["source_id"]  # uq_events_source
    with pytest.raises(IntegrityError) as raised, engine.begin() as conn, pipelined(conn):
        insert_rows(conn, events, first)
        insert_rows(conn, events, clash)
        insert_rows(conn, events, _rows("i")[:5])
    assert _is_unique_violation(raised.value)  # what makes the transaction runner re-run
    with engine.connect() as conn:
        assert _stored(conn, "g") == _stored(conn, "h") == _stored(conn, "i") == []
        # The pooled connection is usable again.
        assert conn.execute(select(events.c.id)).first() is None


def test_inserts_in_a_pipelined_block_wait_for_no_answer_before_its_end(engine, monkeypatch):
    """On PostgreSQL the block's inserts are answered together when it ends (one round trip):
    none of them asks psycopg for a Sync, the message after which it waits for every answer
    so far (a nested pipeline asks for one at its start and its end). A refusal still arrives
    as SQLAlchemy's error and nothing stays written."""
    syncs: list[int] = []
    if engine.dialect.name == "postgresql":
        from psycopg._pipeline_base import BasePipeline

        enqueue_sync = BasePipeline._enqueue_sync

        def counted(pipeline: BasePipeline) -> None:
            syncs.append(1)
            enqueue_sync(pipeline)

        monkeypatch.setattr(BasePipeline, "_enqueue_sync", counted)
    first = _rows("j")[:5]
    clash = _rows("k")[:5]
    clash[0]["source_id"] = first[0]["source_id"]  # uq_events_source
    syncs_before_the_end = None
    with pytest.raises(IntegrityError), engine.begin() as conn:
        # As in a group: its reads came first (psycopg waits for the BEGIN it sends with a
        # transaction's first statement).
        conn.execute(select(events.c.id).limit(1)).all()
        syncs_after_the_reads = len(syncs)
        with pipelined(conn):
            insert_rows(conn, events, first)
            insert_rows(conn, events, _rows("l")[:70])  # 64 + 4 + 1 + 1 rows: four statements
            syncs_before_the_end = len(syncs) - syncs_after_the_reads
            insert_rows(conn, events, clash)
    assert syncs_before_the_end == 0
    if engine.dialect.name == "postgresql":
        assert len(syncs) == syncs_after_the_reads + 1  # the block's end
    with engine.connect() as conn:
        assert _stored(conn, "j") == _stored(conn, "k") == _stored(conn, "l") == []


@pytest.mark.postgresql
def test_a_session_keeps_more_prepared_statements_than_psycopgs_default(postgres_engine):
    """The bulk inserts prepare a text per table and size: a session that kept only psycopg's
    default of 100 deallocated and prepared again the texts of groups of mixed sizes."""
    texts = PG_PREPARED_STATEMENTS_MAX - 6
    assert texts > 100
    with postgres_engine.connect() as conn:
        for n in range(texts):
            cursor = execute_raw(conn, f"SELECT $1::int + {n}", [n])
            assert cursor.fetchone() == (2 * n,)
        kept = conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar_one()
    assert kept >= texts
