"""Index changes a migration makes on a table that is being written to.

On PostgreSQL a plain ``CREATE INDEX`` holds a lock that refuses every insert, update and
delete of the table until the index is built: on a ledger of millions of lots, minutes in
which no purchase can be recorded. Worse, while it waits for that lock behind a transaction
still open, every write that comes after it queues behind it too. ``replace_index`` builds
the new index ``CONCURRENTLY`` under a temporary name (writes go on meanwhile), drops the old
one ``CONCURRENTLY`` and renames the new one into its place, so readers always have one of
the two. Each statement runs outside a transaction, as PostgreSQL requires; a build that
failed halfway leaves an invalid index under the temporary name, which the next run of the
migration drops first. ``replace_unique_constraint`` builds the constraint's new index the
same way and then swaps the constraints in one short transaction, which gives up after
``SWAP_LOCK_TIMEOUT`` rather than hold every reader of the table behind it while it waits
for the table's lock.

On SQLite an index is built in the migration's transaction, as before: the database has one
writer at a time whatever the statement.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

BUILDING_SUFFIX = "_building"
"""The temporary name of an index being built to replace another: ``<name>_building``."""
SWAP_LOCK_TIMEOUT = "2s"
"""How long swapping a unique constraint waits for its table's lock before the migration
fails (nothing changed; run it again)."""


def replace_index(
    name: str,
    table: str,
    columns: Sequence[str],
    *,
    where: str | None = None,
) -> None:
    """Replace index ``name`` of ``table`` by one on ``columns`` (partial where ``where``),
    keeping its name."""
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(name, table_name=table)
        predicate = sa.text(where) if where is not None else None
        op.create_index(name, table, list(columns), sqlite_where=predicate)
        return
    building = f"{name}{BUILDING_SUFFIX}"
    with op.get_context().autocommit_block():
        _build_concurrently(building, table, columns, where=where)
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
        op.execute(sa.text(f'ALTER INDEX "{building}" RENAME TO "{name}"'))


def _build_concurrently(
    building: str,
    table: str,
    columns: Sequence[str],
    *,
    unique: bool = False,
    where: str | None = None,
) -> None:
    """Index ``building`` built ``CONCURRENTLY``, after dropping what a failed build left."""
    op.drop_index(building, table_name=table, postgresql_concurrently=True, if_exists=True)
    op.create_index(
        building,
        table,
        list(columns),
        unique=unique,
        postgresql_concurrently=True,
        postgresql_where=sa.text(where) if where is not None else None,
    )


def replace_unique_constraint(name: str, table: str, columns: Sequence[str]) -> None:
    """On PostgreSQL, replace unique constraint ``name`` of ``table`` by one on ``columns``,
    keeping its name. The new index is built concurrently and enforces uniqueness from the
    moment it is ready, so the table is never without it; only the swap takes the table's
    lock, for an instant once granted."""
    assert op.get_bind().dialect.name == "postgresql"
    building = f"{name}{BUILDING_SUFFIX}"
    with op.get_context().autocommit_block():
        _build_concurrently(building, table, columns, unique=True)
    op.execute(sa.text(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
    op.drop_constraint(name, table, type_="unique")
    op.execute(
        sa.text(f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" UNIQUE USING INDEX "{building}"')
    )
