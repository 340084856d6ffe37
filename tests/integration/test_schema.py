"""The schema comes only from migrations, and the migrations match the table definitions."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import and_, bindparam, inspect, select, text
from sqlalchemy.exc import IntegrityError

from loyalty.adapters.db.schema import current_revision, head_revision
from loyalty.adapters.db.tables import LOT_HAS_POINTS, lots, metadata


def test_the_migrated_schema_matches_the_table_definitions(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, metadata)
    assert diffs == []


def test_a_migrated_database_is_at_the_head_revision(engine):
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) >= {t.name for t in metadata.sorted_tables}


def test_the_database_refuses_a_lot_below_zero_or_a_wallet_with_negative_lots(engine):
    # The CHECK constraints repeat the ledger invariants in the database itself.
    with engine.connect() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', '2026-01-01')")
        )
        conn.execute(
            text(
                "INSERT INTO programs (id, tenant_id, name, current_version, created_at,"
                " updated_at) VALUES ('p', 't', 'p', 1, '2026-01-01', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO members (id, program_id, external_id, attributes, enrolled_at,"
                " updated_at, enrollment_source, marketing_consent)"
                " VALUES ('m', 'p', 'x', '{}', '2026-01-01', '2026-01-01', 'api', false)"
            )
        )
        conn.commit()
        for bad in (
            "INSERT INTO wallets (program_id, member_id, asset, balance, debt, updated_at)"
            " VALUES ('p', 'm', 'PTS', -5, 0, '2026-01-01')",
            "INSERT INTO wallets (program_id, member_id, asset, balance, debt, updated_at)"
            " VALUES ('p', 'm', 'PTS', 0, -1, '2026-01-01')",
        ):
            try:
                conn.execute(text(bad))
            except IntegrityError:
                conn.rollback()
            else:
                raise AssertionError(f"the database accepted: {bad}")


def test_a_members_live_lots_are_found_through_the_partial_member_index_by_a_generic_plan(
    engine,
):
    # ix_lots_member holds only lots with points left. A query reaches it only if it proves
    # the index's predicate, which a bound ``remaining > $1`` cannot in a prepared
    # statement's generic plan: LOT_HAS_POINTS writes the literal.
    stmt = select(lots.c.id).where(
        and_(
            lots.c.program_id == bindparam("program_id"),
            lots.c.member_id == bindparam("member_id"),
            LOT_HAS_POINTS,
        )
    )
    with engine.connect() as conn:
        compiled = stmt.compile(dialect=conn.dialect)
        values = compiled.construct_params({"program_id": "p", "member_id": "m"})
        if conn.dialect.name == "postgresql":
            # A named prepared statement, as psycopg makes of a query run often enough.
            sql = str(compiled)
            for number, name in enumerate(values, start=1):
                sql = sql.replace(f"%({name})s", f"${number}")
            conn.exec_driver_sql(f"PREPARE member_lots AS {sql}")
            conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = conn.exec_driver_sql("EXPLAIN EXECUTE member_lots('p', 'm')").all()
            conn.exec_driver_sql("DEALLOCATE member_lots")
        else:
            assert compiled.positiontup is not None
            params = tuple(values[name] for name in compiled.positiontup)
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
    assert "ix_lots_member" in " ".join(str(column) for row in plan for column in row)


def test_only_reversals_are_indexed_by_the_entry_they_reverse_and_a_lookup_finds_them(engine):
    # Every earn entry would otherwise add a key of NULL to the index, in each group's commit.
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            definition = conn.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                {"name": "ix_journal_entries_reverses"},
            ).scalar_one()
            conn.exec_driver_sql(
                "PREPARE reversals AS SELECT id FROM journal_entries WHERE reverses_entry_id = $1"
            )
            conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = conn.exec_driver_sql("EXPLAIN EXECUTE reversals('e')").all()
            conn.exec_driver_sql("DEALLOCATE reversals")
        else:
            definition = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name = :name"),
                {"name": "ix_journal_entries_reverses"},
            ).scalar_one()
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT id FROM journal_entries WHERE reverses_entry_id = ?",
                ("e",),
            ).all()
    unbracketed = definition.replace("(", "").replace(")", "")
    assert unbracketed.endswith("WHERE reverses_entry_id IS NOT NULL"), definition
    assert "ix_journal_entries_reverses" in " ".join(str(column) for row in plan for column in row)
