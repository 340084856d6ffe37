"""Reads that don't depend on each other's answers, sent together: one round trip for all of
them on PostgreSQL.

A group of purchases reads its program's row, its idempotency keys and its members before it
decides anything, then its members' wallets (locked) and their live lots. Each read through
``Connection.execute`` costs a round trip to PostgreSQL and about 0.2 ms of the server's CPU
in SQLAlchemy's and psycopg's per-statement machinery (building the execution context and the
result, psycopg converting the query text): in process, the five reads were half of what a
group of one purchase cost (``docs/performance.md``, "Reads sent together").

``read_together`` compiles each statement once per dialect into PostgreSQL's own ``$n``
placeholders, sends them all through raw psycopg cursors in one pipeline (each prepared once
per connection, as ``bulk`` does for inserts), and converts the rows' values with the column
types' own result processors, the functions SQLAlchemy would call, so a value reads the same
either way. Rows come back as named tuples with the statement's column names. PostgreSQL runs
the statements one after another in the transaction, each with its own snapshot as any
statement of a ``READ COMMITTED`` transaction: a read after a ``FOR UPDATE`` sees what the
lock holder last committed, as it would one round trip later. An error of any of them is
raised wrapped as SQLAlchemy wraps a statement's (``bulk.driver_pipeline``), so the
transaction's retries see it as before, and the statements after it were not run. A
transaction's first statements also carry its ``BEGIN``, which psycopg otherwise sends on
its own.

The reads are planned with PostgreSQL's generic plan (``plan_cache_mode`` set for them
alone, with ``SET LOCAL`` before and after, in the same round trip). A keyed read takes its
keys as an array, whose length PostgreSQL's generic plan can't know; guessing that a plan for
the actual keys would be cheaper, it planned the statement again at every execution (about
0.07 ms of its CPU for each of a group's keyed reads). The generic plan of a keyed read is
the plan wanted whatever the keys: one index descent per key (``keyed``).

On SQLite, where a statement is a call into the same process, they run one after another,
compiled the same way (with ``?``; an ``IN`` list gets as many as it has values, a text kept
per statement and length) and sent through the sqlite3 connection itself: SQLAlchemy's
per-statement machinery was a fifth of a group of 8 purchases' CPU there. Errors are wrapped
as SQLAlchemy wraps them (a locked database is retried as before).

On PostgreSQL, only statements without expanding parameters (``IN`` lists) belong here (the
lists of keys are arrays: ``keyed.KeyedRead.together``). Columns of SQLAlchemy's ``Numeric``
type don't either, whose conversion depends on the type the database answers with.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Select

from loyalty.adapters.db.bulk import driver_errors, driver_pipeline, processed

_NONE = object()
_GENERIC_PLANS = "SET LOCAL plan_cache_mode = force_generic_plan"
_CUSTOM_PLANS = "SET LOCAL plan_cache_mode TO DEFAULT"
Read = tuple[Any, Mapping[str, Any]]
"""A statement (a ``Select`` or a compound of them) and its parameters by name."""


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    sql: str
    """The statement in the driver's placeholders (``$n``, ``?``); on SQLite each expanding
    parameter is a marker, ``__[POSTCOMPILE_<name>]``, for as many ``?`` as it has values."""
    binds: tuple[tuple[str, Callable[[Any], Any] | None, Any, bool], ...]
    """Each placeholder's parameter name, bind processor (of each value, for a list), value
    where the statement holds one (a ``LIMIT``; the caller's value of that name, if given,
    wins, as in ``Connection.execute``), and whether it is an expanding list, in placeholder
    order."""
    row: Any
    """The named tuple of a row."""
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    """(column index, result processor) of the columns whose type converts values."""


@functools.cache
def _read_plan(statement: Select[Any], dialect: Dialect) -> _ReadPlan:
    dialect_class: Any = type(dialect)
    postgresql = dialect.name == "postgresql"
    positional = dialect_class(paramstyle="numeric_dollar" if postgresql else "qmark")
    compiled: Any = statement.compile(dialect=positional)
    names: list[str] = list(compiled.positiontup or ())
    if postgresql:
        names = list(dict.fromkeys(names))  # a name used twice is one placeholder
        assert "POSTCOMPILE" not in compiled.string, "expanding parameters are not supported"
    binds = tuple(
        (
            name,
            (bind := compiled.binds[name]).type.dialect_impl(dialect).bind_processor(dialect),
            _NONE if bind.required else bind.effective_value,
            bool(bind.expanding),
        )
        for name in names
    )
    columns = list(statement.selected_columns)
    processors: list[tuple[int, Callable[[Any], Any]]] = []
    for index, column in enumerate(columns):
        processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
        if processor is not None:
            processors.append((index, processor))
    row = namedtuple("Row", [column.key for column in columns], rename=True)  # type: ignore[misc]
    return _ReadPlan(compiled.string, binds, row, tuple(processors))


def _values(plan: _ReadPlan, params: Mapping[str, Any]) -> list[Any]:
    values: list[Any] = []
    for name, process, held, expanding in plan.binds:
        value = params[name] if held is _NONE or name in params else held
        if expanding:
            assert value, f"{name}: an empty list"
            values.extend(value if process is None else [process(v) for v in value])
        else:
            values.append(value if process is None else process(value))
    return values


@functools.lru_cache(maxsize=1_024)
def _sqlite_sql(plan: _ReadPlan, lengths: tuple[tuple[str, int], ...]) -> str:
    """``plan``'s text with each expanding parameter's marker replaced by its values' ``?``."""
    sql = plan.sql
    for name, length in lengths:
        sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * length))
    return sql


def read_together(conn: Connection, reads: Sequence[Read]) -> list[list[Any]]:
    """The rows of each of ``reads``, in order: on PostgreSQL in one round trip."""
    plans = [_read_plan(statement, conn.dialect) for statement, _ in reads]
    if conn.dialect.name != "postgresql":
        return [
            _sqlite_rows(conn, plan, params) for plan, (_, params) in zip(plans, reads, strict=True)
        ]
    cursors: list[Any] = []
    driver: Any = conn.connection.driver_connection
    if driver.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
        # Inside ``pipelined`` the rows would be fetched before that block's end, unwrapped.
        raise RuntimeError("read_together inside a pipelined block")
    with driver_pipeline(conn):
        psycopg.RawCursor(driver).execute(_GENERIC_PLANS)
        for plan, (_, params) in zip(plans, reads, strict=True):
            cursor = psycopg.RawCursor(driver)
            cursor.execute(plan.sql, _values(plan, params), prepare=True)
            cursors.append(cursor)
        psycopg.RawCursor(driver).execute(_CUSTOM_PLANS)
    return [_rows(plan, cursor.fetchall()) for plan, cursor in zip(plans, cursors, strict=True)]


def _sqlite_rows(conn: Connection, plan: _ReadPlan, params: Mapping[str, Any]) -> list[Any]:
    lengths = tuple((name, len(params[name])) for name, _, _, expanding in plan.binds if expanding)
    sql = _sqlite_sql(plan, lengths) if lengths else plan.sql
    driver: Any = conn.connection.driver_connection
    with driver_errors(conn, sql):
        fetched = driver.execute(sql, _values(plan, params)).fetchall()
    return _rows(plan, fetched)


def _rows(plan: _ReadPlan, fetched: list[tuple[Any, ...]]) -> list[Any]:
    make = plan.row._make
    if not plan.processors:
        return [make(row) for row in fetched]
    return [make(processed(row, plan.processors)) for row in fetched]
