"""A migration that rebuilds an index of a table being written to lets the writes go on.

On PostgreSQL a plain ``CREATE INDEX`` (or ``DROP INDEX``) waits for a lock that conflicts
with every write, and while it waits behind an open transaction, every later write of the
table queues behind it: an upgrade on a busy ledger would stop every purchase until the
oldest transaction ended and the index was built. These tests hold a transaction open on
``lots`` while migration 0020 rebuilds ``ix_lots_member``, and check that another write of
the table goes through meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, inspect, text

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.migrations.online import BUILDING_SUFFIX
from loyalty.adapters.db.schema import current_revision, head_revision, migrate
from loyalty.adapters.db.tables import lots as lots_table
from tests.conftest import _PG

pytestmark = pytest.mark.postgresql

_LOT = (
    "INSERT INTO lots (id, program_id, member_id, entry_id, asset, amount, remaining,"
    " earned_at, expires_at) VALUES (%s, 'p', 'm', 'e', 'PTS', 10, 10,"
    " '2026-01-01', '2027-01-01')"
)


@pytest.fixture
def database() -> Iterator[tuple[Engine, str]]:
    """A new PostgreSQL database at migration 0019, with one journal entry to hang lots on."""
    server = _PG["server"]
    if server is None:
        pytest.skip(f"PostgreSQL unavailable: {_PG['why']}")
    url = server.create_database()
    engine = make_engine(url)
    migrate(engine, "0019")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO journal_entries (id, program_id, member_id, kind, program_version,"
                " created_at, details) VALUES ('e', 'p', 'm', 'earn', 1, '2026-01-01', '{}')"
            )
        )
    yield engine, url.replace("postgresql+psycopg://", "postgresql://")
    engine.dispose()


def _waiting_index_build(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query ILIKE '%INDEX%' AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] > 0


def test_writes_go_on_while_the_lots_index_is_rebuilt_behind_an_open_transaction(database):
    engine, dsn = database
    holder = psycopg.connect(dsn)
    holder.execute(_LOT, ("lot_open",))  # an open transaction that wrote to lots
    failure: list[BaseException] = []

    def upgrade() -> None:
        try:
            migrate(engine, "0020")
        except BaseException as exc:  # reported by the test's thread
            failure.append(exc)

    migration = threading.Thread(target=upgrade)
    migration.start()
    try:
        deadline = time.monotonic() + 30
        while not _waiting_index_build(dsn):
            assert migration.is_alive(), failure
            assert time.monotonic() < deadline, "the migration never waited for the open one"
            time.sleep(0.05)
        # The migration waits for the open transaction; a new write must not wait for it.
        with psycopg.connect(dsn) as writer:
            writer.execute("SET lock_timeout = '3s'")
            writer.execute(_LOT, ("lot_meanwhile",))
            writer.commit()
    finally:
        holder.commit()
        holder.close()
        migration.join(timeout=60)
    assert not migration.is_alive()
    assert failure == []
    assert current_revision(engine) == "0020"
    indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("lots")}
    defined = next(ix for ix in lots_table.indexes if ix.name == "ix_lots_member")
    assert indexes["ix_lots_member"]["column_names"] == [c.name for c in defined.columns]
    assert not any(name.endswith(BUILDING_SUFFIX) for name in indexes)
    with engine.connect() as conn:
        invalid = conn.execute(
            text("SELECT count(*) FROM pg_index WHERE NOT indisvalid OR NOT indisready")
        ).scalar_one()
        lots = conn.execute(text("SELECT count(*) FROM lots")).scalar_one()
    assert invalid == 0
    assert lots == 2


def test_an_index_left_half_built_by_an_interrupted_upgrade_is_built_again(database):
    engine, _ = database
    # What a build that failed halfway leaves: the new index under its temporary name.
    with engine.begin() as conn:
        conn.execute(text(f"CREATE INDEX ix_lots_member{BUILDING_SUFFIX} ON lots (program_id)"))
    migrate(engine)
    assert current_revision(engine) == head_revision()
    indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("lots")}
    assert indexes["ix_lots_member"]["column_names"][:3] == [
        "program_id",
        "member_id",
        "expires_at",
    ]
    assert not any(name.endswith(BUILDING_SUFFIX) for name in indexes)
