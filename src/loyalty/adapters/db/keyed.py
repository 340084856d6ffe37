"""Reading the rows of a list of keys with one index lookup per key, whatever PostgreSQL's
statistics say.

``WHERE program_id = :p AND member_id IN (...)`` leaves PostgreSQL's planner a choice: one
index descent per key, or one pass over all the program's rows, dropping those whose key is
not in the list. It chooses by its statistics, and they lag behind a program that grows: in a
new database, or for a program launched since the table was last analysed, the program is
estimated at a handful of rows, and the planner takes the pass. Every group of purchases then
read all the idempotency keys, members, wallets and lots its program had so far, so each
group took longer than the one before (28 purchases: 7 ms for the keys alone at 5,600 stored,
against 0.2 ms looked up one by one; ``docs/performance.md``, "Lookups by key").

``each_key`` reads the list with ``unnest(:keys) CROSS JOIN LATERAL (<the read of one key>)``:
the inner read names its one key, which an index answers with one descent, and a ``LIMIT``,
``OFFSET 0``, ``GROUP BY`` or ``FOR UPDATE`` in it keeps the planner from turning it back into
a join it could again run as a pass. Rows come out in the order of the keys, so ``FOR UPDATE``
locks in that order. SQLite's planner already looks each value of an ``IN`` list up through
the index, and gets the ``IN`` list.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, String, bindparam, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement


def each_key(one: Callable[[ColumnElement[Any]], Select[Any]], *, keys: str) -> Select[Any]:
    """``one(key)`` for each key of the list bound as ``keys``, in the list's order; ``one``
    must not be flattened into a join (give it a ``LIMIT``, ``OFFSET 0``, a ``GROUP BY`` or a
    ``FOR UPDATE``). PostgreSQL only."""
    listed = (
        func.unnest(bindparam(keys, type_=ARRAY(String)))
        .table_valued("key", with_ordinality="n")
        .render_derived(name="listed")
    )
    per_key = one(listed.c.key).lateral("per_key")
    return select(per_key).select_from(listed).join(per_key, true()).order_by(listed.c.n)


@dataclass(frozen=True, slots=True)
class KeyedRead:
    """One read of the rows of a list of keys, in each dialect's best form: ``in_list`` (an
    expanding ``IN``) on SQLite, ``each_key`` on PostgreSQL. Both bind the list under the same
    name and return the same columns."""

    in_list: Any
    each_key: Any

    def on(self, conn: Connection, keys: Sized) -> Any:
        """The form for ``keys`` on ``conn`` (see ``looks_up_each``)."""
        return self.each_key if looks_up_each(conn, keys) else self.in_list

    def together(self, conn: Connection) -> Any:
        """The form for ``reads.read_together``, which takes no expanding list: ``each_key`` on
        PostgreSQL whatever the number of keys, ``in_list`` on SQLite."""
        return self.each_key if conn.dialect.name == "postgresql" else self.in_list


def looks_up_each(conn: Connection, keys: Sized) -> bool:
    """Whether ``keys`` are read with ``each_key`` on ``conn``: on PostgreSQL, more than one.
    A single key takes the ``IN`` list everywhere: PostgreSQL reads ``IN ($1)`` as ``= $1``,
    which its indexes answer directly, and plans it faster than the lateral join (a quote
    reads one member)."""
    return conn.dialect.name == "postgresql" and len(keys) > 1
