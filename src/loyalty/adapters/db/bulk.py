"""Many rows into one table with one compiled statement and no per-row SQLAlchemy work.

``conn.execute(insert(table), rows)`` builds every row's parameters through SQLAlchemy's
compiled-statement machinery, about 10 us a row, which is most of what a bulk write of a few
thousand rows costs once the rules are done. Here the statement is compiled once per table,
columns and dialect; each row becomes a tuple in the compiled order with only the columns
whose type converts values (datetimes, JSON) passed through the type's own bind processor,
the same function SQLAlchemy would call, so the stored values are identical.

The rows then go to the driver as one ``executemany`` of the one-row statement, through
``Connection.exec_driver_sql`` (so errors are wrapped and retried exactly as any other
statement's). On PostgreSQL psycopg sends it in pipeline mode: the statement is prepared
once and every row follows as its parameters, in one round trip. (Multi-row ``INSERT ...
VALUES (...), (...)`` statements, used before, had a text that changed with the number of
rows and was longer than psycopg's cache of converted queries takes: psycopg parsed each in
Python and the server parsed and planned each again; batches of 1,000 went 25% faster in
process without them.) Inside ``pipelined``, PostgreSQL gets every such statement without
the engine waiting for each answer: one round trip for all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError


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
    driver: Any = conn.connection.driver_connection
    try:
        with driver.pipeline():
            yield
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(
            None, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
        ) from exc


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
        processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors.append((index, processor))
    return _Plan(order, compiled.string, tuple(processors))


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (mappings with the same keys) into ``table``, in order."""
    if not rows:
        return
    dialect = conn.dialect
    plan = _plan(table, tuple(rows[0]), dialect.name, dialect)
    conn.exec_driver_sql(plan.sql, _values(plan, rows))


def _values(plan: _Plan, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    get = itemgetter(*plan.columns)
    if len(plan.columns) == 1:
        raw: list[Any] = [(get(row),) for row in rows]
    else:
        raw = [get(row) for row in rows]
    if not plan.processors:
        return raw
    out: list[tuple[Any, ...]] = []
    for row in raw:
        converted = list(row)
        for index, process in plan.processors:
            converted[index] = process(converted[index])
        out.append(tuple(converted))
    return out
