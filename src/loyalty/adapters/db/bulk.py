"""Many rows into one table with one compiled statement and no per-row SQLAlchemy work.

``conn.execute(insert(table), rows)`` builds every row's parameters through SQLAlchemy's
compiled-statement machinery, about 10 us a row, which is most of what a bulk write of a few
thousand rows costs once the rules are done. Here the statement is compiled once per table,
columns and dialect; each row becomes a tuple in the compiled order with only the columns
whose type converts values (datetimes, JSON) passed through the type's own bind processor,
the same function SQLAlchemy would call, so the stored values are identical. Timestamps
(``UTCDateTime``) are the exception: rows of a write share a few instants (the write's
``now``, a purchase's expiry), so each distinct instant is converted once (``_utc_bind``),
to the very value SQLAlchemy's processor gives; on SQLite that is its text, which the
processor built field by field (about a twentieth of a purchase's CPU on SQLite).

On SQLite the rows go to the driver as one ``executemany`` of the one-row statement, through
``Connection.exec_driver_sql`` (so errors are wrapped and retried exactly as any other
statement's); the sqlite3 module loops over them in C.

On PostgreSQL they go as multi-row ``INSERT ... VALUES ($1, ...), (...)`` statements of fixed
sizes (``ROWS_PER_STATEMENT``: the powers of two from 64 down to 1; 30 rows are 16 + 8 + 4 + 2,
at most one statement of each size below 64), in one pipeline, through a raw psycopg cursor. The
text of each size is built once per table and columns, with PostgreSQL's own placeholders, so
psycopg neither parses it nor keeps anything per row but the values, and it prepares each text
once per connection, so the server does not plan it again. (Before: one ``executemany`` of the
one-row statement, which psycopg also pipelines and prepares, but through about 10 us of its own
Python a row: in process, groups of 32 purchases took 10-15% less CPU without it, and earn over
HTTP at 32 clients went 13% faster. Before that, multi-row statements whose text changed with
the number of rows: psycopg parsed each in Python and the server planned each again.) A database
error is raised wrapped as SQLAlchemy wraps any statement's, so the transaction's retries see it
as before. Inside ``pipelined``, PostgreSQL gets every such statement without the engine waiting
for each answer: one round trip for all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

import psycopg
from sqlalchemy import Connection, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from loyalty.adapters.db.tables import UTCDateTime

ROWS_PER_STATEMENT = (64, 32, 16, 8, 4, 2, 1)
"""The sizes of PostgreSQL's multi-row inserts, largest first (a size whose parameters would
pass ``PG_PARAMETERS_PER_STATEMENT_MAX`` is skipped). Until 2026-12-08 64, 16, 4 and 1: a
group of 8 purchases sent its 8 events as 4 + 4 and its 30-odd lines in 5 to 7 statements;
each statement costs psycopg's Python and PostgreSQL's executor a fixed share whatever its
rows (``docs/performance.md``, "Reads sent together"). Each size is one more text prepared
per table and connection (``PG_PREPARED_STATEMENTS_MAX``)."""
PG_PARAMETERS_PER_STATEMENT_MAX = 1_000
NEW_ROWS_PER_STATEMENT_MAX = 64
"""Rows in one statement of ``insert_new_rows`` (fewer where their parameters would pass
``PG_PARAMETERS_PER_STATEMENT_MAX``)."""


@contextmanager
def pipelined(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, the statements of the block are sent in pipeline mode: each goes without
    waiting for the answer to the one before, and the block ends when all are answered. Only
    statements whose answer nobody reads (inserts without ``RETURNING``) belong inside: a row
    count reads -1 and reading rows fails. An error of any of them is raised when the block
    ends, wrapped as SQLAlchemy wraps any statement's, so the transaction's retries see it as
    before; the statements after it were not applied. On SQLite, a plain block."""
    if conn.dialect.name != "postgresql":
        yield
        return
    with driver_pipeline(conn):
        yield


@contextmanager
def driver_pipeline(conn: Connection) -> Iterator[Any]:
    """psycopg's pipeline on ``conn``'s driver connection (which the block gets), its errors
    wrapped as SQLAlchemy wraps a statement's. Inside a pipeline already, the block joins it:
    psycopg ends a nested pipeline with a Sync and waits for every answer so far, a round trip
    per block, and the outer pipeline's end raises the block's errors."""
    driver: Any = conn.connection.driver_connection
    if driver.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
        yield driver
        return
    with driver_errors(conn), driver.pipeline():
        yield driver


@contextmanager
def driver_errors(conn: Connection, statement: str | None = None) -> Iterator[None]:
    """The driver's errors raised in the block (by statements sent past SQLAlchemy), wrapped as
    SQLAlchemy wraps a statement's, so the transaction's retries see them as any other."""
    try:
        yield
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(
            statement, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
        ) from exc


def execute_raw(conn: Connection, sql: str, params: Sequence[Any]) -> Any:
    """PostgreSQL only: ``sql`` (with ``$n`` placeholders) through a raw psycopg cursor,
    prepared once per connection, which is returned. Inside ``pipelined`` it is answered when
    the block ends (its row count is read after that); elsewhere at once. Errors arrive
    wrapped as SQLAlchemy wraps a statement's."""
    assert conn.dialect.name == "postgresql"
    with driver_pipeline(conn) as driver:
        cursor = psycopg.RawCursor(driver)
        cursor.execute(sql, params, prepare=True)
    return cursor


@dataclass(frozen=True, slots=True)
class _Plan:
    columns: tuple[str, ...]
    sql: str
    """``INSERT INTO t (a, b) VALUES (?, ?)`` in the dialect's placeholders."""
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]


@functools.cache
def _plan(table: Table, keys: tuple[str, ...], dialect_name: str, dialect: Dialect) -> _Plan:
    # A positional copy of the dialect, so the compiled order of the placeholders is known.
    dialect_class: Any = type(dialect)
    positional = dialect_class(paramstyle="qmark" if dialect_name == "sqlite" else "format")
    compiled = insert(table).compile(dialect=positional, column_keys=list(keys))
    order = tuple(compiled.positiontup or ())
    assert sorted(order) == sorted(keys), (order, keys)
    processors: list[tuple[int, Callable[[Any], Any]]] = []
    for index, name in enumerate(order):
        column_type = table.c[name].type
        processor: Callable[[Any], Any] | None
        if isinstance(column_type, UTCDateTime):
            processor = _utc_text if dialect_name == "sqlite" else _utc_bind
        else:
            processor = column_type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors.append((index, processor))
    return _Plan(order, compiled.string, tuple(processors))


@functools.lru_cache(maxsize=4_096)
def _utc_bind(value: datetime | None) -> datetime | None:
    """``UTCDateTime``'s value for PostgreSQL, cached by instant: equal instants in any zone
    give the same UTC value."""
    return None if value is None else UTCDateTime.to_utc(value)


@functools.lru_cache(maxsize=4_096)
def _utc_text(value: datetime | None) -> str | None:
    """``UTCDateTime``'s text on SQLite, as SQLAlchemy's processor writes it: naive UTC,
    ``YYYY-MM-DD HH:MM:SS.ffffff`` with the microseconds always there."""
    utc = _utc_bind(value)
    return None if utc is None else utc.replace(tzinfo=None).isoformat(" ", "microseconds")


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (mappings with the same keys) into ``table``, in order."""
    if not rows:
        return
    dialect = conn.dialect
    plan = _plan(table, tuple(rows[0]), dialect.name, dialect)
    values = _values(plan, rows)
    if dialect.name != "postgresql":
        conn.exec_driver_sql(plan.sql, values)
        return
    width = len(plan.columns)
    done = 0
    with driver_pipeline(conn) as driver:
        cursor = psycopg.RawCursor(driver)
        for size in ROWS_PER_STATEMENT:
            if size * width > PG_PARAMETERS_PER_STATEMENT_MAX and size > 1:
                continue
            sql = _pg_rows_sql(table, plan.columns, size, dialect)
            while len(values) - done >= size:
                params = [value for row in values[done : done + size] for value in row]
                cursor.execute(sql, params, prepare=True)
                done += size


def insert_new_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    unique: tuple[str, ...],
    returning: str,
) -> set[Any]:
    """Insert those of ``rows`` (mappings with the same keys) whose ``unique`` columns match no
    row yet, in order, and return their ``returning`` column: ``INSERT ... VALUES (...), (...)
    ON CONFLICT (unique) DO NOTHING RETURNING ...``, which both databases spell the same
    (SQLite 3.35 and later). SQLAlchemy compiles its own construct of that statement for every
    execution (it cannot cache one with ``ON CONFLICT``): about 0.1 ms each, more than the
    insert. Here the text is built once per table, columns, number of rows (one statement for
    up to ``NEW_ROWS_PER_STATEMENT_MAX`` rows, so at most that many texts a table) and
    dialect, and the values converted as ``insert_rows`` converts them; it runs through
    ``Connection.exec_driver_sql``, so its errors are wrapped and retried as any statement's.
    On PostgreSQL a row that conflicts with one another transaction is inserting waits for
    that transaction, as the construct did."""
    if not rows:
        return set()
    dialect = conn.dialect
    plan = _plan(table, tuple(rows[0]), dialect.name, dialect)
    values = _values(plan, rows)
    per_statement = max(
        1, min(NEW_ROWS_PER_STATEMENT_MAX, PG_PARAMETERS_PER_STATEMENT_MAX // len(plan.columns))
    )
    inserted: set[Any] = set()
    for start in range(0, len(values), per_statement):
        chunk = values[start : start + per_statement]
        sql = _new_rows_sql(table, plan.columns, len(chunk), unique, returning, dialect)
        params = tuple(value for row in chunk for value in row)
        inserted.update(row[0] for row in conn.exec_driver_sql(sql, params))
    return inserted


@functools.cache
def _new_rows_sql(
    table: Table,
    columns: tuple[str, ...],
    rows: int,
    unique: tuple[str, ...],
    returning: str,
    dialect: Dialect,
) -> str:
    """``INSERT INTO t (a, b) VALUES (?, ?), (?, ?) ON CONFLICT (a) DO NOTHING RETURNING c``,
    with the placeholders the driver takes through ``exec_driver_sql``."""
    quote = dialect.identifier_preparer
    mark = "?" if dialect.name == "sqlite" else "%s"
    row = "(" + ", ".join([mark] * len(columns)) + ")"
    keys = ", ".join(quote.quote(name) for name in unique)
    return (
        f"{_insert_into(table, columns, dialect)} VALUES {', '.join([row] * rows)} "
        f"ON CONFLICT ({keys}) DO NOTHING RETURNING {quote.quote(returning)}"
    )


@functools.cache
def _pg_rows_sql(table: Table, columns: tuple[str, ...], rows: int, dialect: Dialect) -> str:
    """``INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)`` for ``rows`` rows."""
    width = len(columns)
    values = ", ".join(
        "(" + ", ".join(f"${row * width + n}" for n in range(1, width + 1)) + ")"
        for row in range(rows)
    )
    return f"{_insert_into(table, columns, dialect)} VALUES {values}"


def _insert_into(table: Table, columns: tuple[str, ...], dialect: Dialect) -> str:
    """``INSERT INTO t (a, b)``: identifiers of our own tables, quoted; every value the
    statements add is a parameter."""
    quote = dialect.identifier_preparer
    names = ", ".join(quote.quote(name) for name in columns)
    return f"INSERT INTO {quote.format_table(table)} ({names})"


def _values(plan: _Plan, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    get = itemgetter(*plan.columns)
    if len(plan.columns) == 1:
        raw: list[Any] = [(get(row),) for row in rows]
    else:
        raw = [get(row) for row in rows]
    if not plan.processors:
        return raw
    return [tuple(processed(row, plan.processors)) for row in raw]


def processed(
    row: Sequence[Any], processors: Sequence[tuple[int, Callable[[Any], Any]]]
) -> list[Any]:
    """``row``'s values, those at the processors' indexes passed through them."""
    values = list(row)
    for index, process in processors:
        values[index] = process(values[index])
    return values
