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
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import Engine, inspect, text
from typer.testing import CliRunner

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.migrations.online import BUILDING_SUFFIX
from loyalty.adapters.db.schema import current_revision, head_revision, migrate
from loyalty.adapters.db.tables import lots as lots_table
from loyalty.entrypoints.cli.main import app as cli
from tests.conftest import _PG

pytestmark = pytest.mark.postgresql

_LOT = (
    "INSERT INTO lots (id, program_id, member_id, entry_id, asset, amount, remaining,"
    " earned_at, expires_at) VALUES (%s, 'p', 'm', 'e', 'PTS', 10, 10,"
    " '2026-01-01', '2027-01-01')"
)
_MEMBER = (
    "INSERT INTO members (id, program_id, external_id, attributes, enrolled_at, updated_at,"
    " enrollment_source, marketing_consent)"
    " VALUES (%s, 'p', %s, '{}', '2026-01-01', '2026-01-01', 'api', false)"
)


def _at(revision: str) -> tuple[Engine, str]:
    """A new PostgreSQL database at ``revision``, with a program and one journal entry to hang
    lots on."""
    server = _PG["server"]
    if server is None:
        pytest.skip(f"PostgreSQL unavailable: {_PG['why']}")
    url = server.create_database()
    engine = make_engine(url)
    migrate(engine, revision)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', now())"))
        conn.execute(
            text(
                "INSERT INTO programs (id, tenant_id, name, current_version, created_at,"
                " updated_at) VALUES ('p', 't', 'p', 1, now(), now())"
            )
        )
        conn.execute(
            text(
                "INSERT INTO journal_entries (id, program_id, member_id, kind, program_version,"
                " created_at, details) VALUES ('e', 'p', 'm', 'earn', 1, '2026-01-01', '{}')"
            )
        )
    return engine, url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def databases() -> Iterator[Callable[[str], tuple[Engine, str]]]:
    made: list[Engine] = []

    def make(revision: str) -> tuple[Engine, str]:
        engine, dsn = _at(revision)
        made.append(engine)
        return engine, dsn

    yield make
    for engine in made:
        engine.dispose()


def _migration_waits(dsn: str) -> bool:
    """Whether a session of the database waits for a lock (only the migration's can: the
    open transaction is idle)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and row[0] > 0


def _write_while_migrating(
    engine: Engine,
    dsn: str,
    revision: str,
    statement: str,
    first: tuple[str, ...],
    meanwhile: tuple[str, ...],
) -> None:
    """Upgrade to ``revision`` while a transaction that ran ``statement`` with ``first`` is
    open, and run it with ``meanwhile`` in another session once the upgrade waits for that
    one: the second write must not wait behind the upgrade."""
    holder = psycopg.connect(dsn)
    holder.execute(statement, first)
    failure: list[BaseException] = []

    def upgrade() -> None:
        try:
            migrate(engine, revision)
        except BaseException as exc:  # reported by the test's thread
            failure.append(exc)

    migration = threading.Thread(target=upgrade)
    migration.start()
    try:
        deadline = time.monotonic() + 30
        while not _migration_waits(dsn):
            assert migration.is_alive(), failure
            assert time.monotonic() < deadline, "the migration never waited for the open one"
            time.sleep(0.05)
        with psycopg.connect(dsn) as writer:
            writer.execute("SET lock_timeout = '3s'")
            writer.execute(statement, meanwhile)
            writer.commit()
    finally:
        holder.commit()
        holder.close()
        migration.join(timeout=60)
    assert not migration.is_alive()
    assert failure == []
    assert current_revision(engine) == revision
    with engine.connect() as conn:
        invalid = conn.execute(
            text("SELECT count(*) FROM pg_index WHERE NOT indisvalid OR NOT indisready")
        ).scalar_one()
        leftovers = conn.execute(
            text("SELECT count(*) FROM pg_class WHERE relname LIKE :name"),
            {"name": f"%{BUILDING_SUFFIX}"},
        ).scalar_one()
    assert invalid == 0
    assert leftovers == 0


def test_writes_go_on_while_the_lots_index_is_rebuilt_behind_an_open_transaction(databases):
    engine, dsn = databases("0019")
    _write_while_migrating(engine, dsn, "0020", _LOT, ("lot_open",), ("lot_meanwhile",))
    indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("lots")}
    defined = next(ix for ix in lots_table.indexes if ix.name == "ix_lots_member")
    assert indexes["ix_lots_member"]["column_names"] == [c.name for c in defined.columns]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM lots")).scalar_one() == 2


def test_enrolments_go_on_while_the_members_unique_key_is_rebuilt(databases):
    engine, dsn = databases("0017")
    _write_while_migrating(engine, dsn, "0018", _MEMBER, ("m1", "C-1"), ("m2", "C-2"))
    unique = {
        c["name"]: c["column_names"] for c in inspect(engine).get_unique_constraints("members")
    }
    assert unique["uq_members_program_external"] == ["external_id", "program_id"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM members")).scalar_one() == 2
    # Still a constraint that refuses a second member with the same external id.
    with pytest.raises(psycopg.errors.UniqueViolation), psycopg.connect(dsn) as conn:
        conn.execute(_MEMBER, ("m3", "C-1"))


def test_an_index_left_half_built_by_an_interrupted_upgrade_is_built_again(databases):
    engine, _ = databases("0019")
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


def test_a_swap_that_cannot_get_the_table_gives_up_and_the_next_upgrade_completes(databases):
    engine, dsn = databases("0017")
    reader = psycopg.connect(dsn)
    reader.execute("SELECT count(*) FROM members")  # an open transaction that read the table
    try:
        # Without a lock timeout it would wait for the reader, which ends only below, and
        # hold every other reader of members behind it meanwhile.
        # `loyalty init`, which says what `migrate` raised (``UpgradeBlocked``).
        result = CliRunner().invoke(cli, ["init", "--database-url", str(engine.url)])
        assert result.exit_code == 1, result.output
        said = " ".join(result.output.split())  # as the console wrapped it
        assert "database is at revision 0017: run the upgrade again" in said
    finally:
        reader.commit()
        reader.close()
    assert current_revision(engine) == "0017"
    migrate(engine, "0018")
    assert current_revision(engine) == "0018"
    unique = {
        c["name"]: c["column_names"] for c in inspect(engine).get_unique_constraints("members")
    }
    assert unique["uq_members_program_external"] == ["external_id", "program_id"]
    assert not any(
        ix["name"].endswith(BUILDING_SUFFIX) for ix in inspect(engine).get_indexes("members")
    )
