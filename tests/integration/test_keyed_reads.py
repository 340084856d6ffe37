"""The reads a group of purchases makes by key (its idempotency keys, members, wallets, live
lots, tiers and tier history) look up only those keys' rows, however many rows the program
has and whatever the database's planner knows about them: a read that passed over the whole
program made every group slower than the one before."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, event

from loyalty.adapters.db.locking import lock_wallets
from loyalty.adapters.db.tables import metadata
from loyalty.application import idempotency
from loyalty.application.access import Scope, authenticate
from loyalty.application.balances import running_balances
from loyalty.application.batch_tiers import RunTiers
from loyalty.application.members import find_members
from loyalty.application.programs import load_program
from tests.e2e.test_api_tier_sets import VISITS

AT = datetime(2026, 5, 4, 12, tzinfo=UTC)
MEMBERS = 150
PURCHASES = 600
TABLES = ("idempotency_keys", "members", "wallets", "lots", "member_tiers", "member_activity")
TIERS = {
    "metric": "spend",
    "window": {"type": "rolling_months", "months": 12},
    "levels": [
        {"id": "bronze", "name": "Bronze", "threshold": 0},
        {"id": "silver", "name": "Silver", "threshold": 5_000},
    ],
}


def _purchase(n: int) -> dict[str, Any]:
    return {
        "type": "purchase",
        "id": f"O{n}",
        "member": {"external_id": f"C{n % MEMBERS}"},
        "occurred_at": AT.isoformat(),
        "currency": "EUR",
        "total_minor": 1_000 + n,
    }


def _program_with_history(api: Any) -> str:
    program = api.create_program(
        enrollment={"auto_enroll_on_purchase": True},
        points={"expiry": {"policy": "after_days", "days": 365}},
        tiers=TIERS,
        tier_sets=[VISITS],
    )
    if api.engine.dialect.name == "postgresql":
        # Statistics taken before the program had a row: what the planner knows of a program
        # launched since the tables were last analysed (or of any in a new database).
        with api.engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {', '.join(TABLES)}")
    url = f"/v1/programs/{program}/events:batch"
    for start in range(0, PURCHASES, 200):
        body = {"events": [_purchase(n) for n in range(start, start + 200)]}
        response = api.request("POST", url, json=body)
        assert response.status_code == 200, response.text
        assert all(r["status"] == 201 for r in response.json()["results"]), response.text
    return program


def _reads(conn: Connection, api: Any, program: str, numbers: list[int]) -> list[tuple[str, Any]]:
    """Run a group's reads by key for the members and orders ``numbers`` names, and return
    their statements."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    refs = {f"ext:C{n}" for n in numbers}
    keys = {f"event:purchase:O{n}" for n in numbers}
    event.listen(conn, "before_cursor_execute", record)
    try:
        stored = idempotency.find_many(conn, tenant_id=api.tenant_id, scope=program, keys=keys)
        found = find_members(conn, program, refs)
        locked = lock_wallets(conn, program, (row.id for row in found.values()))
        balances = running_balances(
            conn, program, {m: (w.balance, w.debt) for m, w in locked.items()}, now=AT
        )
        ctx = load_program(conn, authenticate(api.engine, api.token), program, Scope.WRITE)
        tiers = RunTiers(ctx, now=AT, actor="test")
        ids = sorted(row.id for row in found.values())
        # Two moments, so the windows start on different days and the rows between are read.
        tiers.load(
            conn,
            {row.id: row.enrolled_at for row in found.values()},
            set(),
            [(ids[0], AT), (ids[-1], AT + timedelta(days=3))],
        )
    finally:
        event.remove(conn, "before_cursor_execute", record)
    assert set(stored) == keys
    assert set(found) == refs
    assert len(locked) == len(numbers)
    assert all(b.expiring for b in balances.values())  # each member's lots were read
    assert "silver" in {tiers.held(member_id)["status"] for member_id in ids}  # rows were read
    # Keys, members, wallets, lots; the program; tiers held; visits; spend totals and the rows
    # between the windows' starts.
    assert len(seen) == 9, [statement for statement, _ in seen]
    return seen


def _pg_plan(conn: Connection, statement: str, parameters: Any, *, analyze: bool) -> Any:
    """PostgreSQL's plan of ``statement`` (its top node), run as well with ``analyze``."""
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    explained = conn.exec_driver_sql(f"EXPLAIN ({options}) {statement}", parameters).scalar_one()
    return (json.loads(explained) if isinstance(explained, str) else explained)[0]["Plan"]


def _rows_passed_over(plan: dict[str, Any]) -> int:
    """Rows the plan's nodes read and dropped, and rows of whole-table scans."""
    passed = plan.get("Rows Removed by Filter", 0) + plan.get("Rows Removed by Index Recheck", 0)
    if plan["Node Type"] == "Seq Scan":
        passed += plan["Actual Rows"] * plan["Actual Loops"]
    return int(passed) + sum(_rows_passed_over(p) for p in plan.get("Plans", []))


@pytest.mark.parametrize("numbers", [[3, 77, 140], [77]], ids=["three", "one"])
def test_a_groups_reads_by_key_look_up_only_their_keys(api, numbers):
    """Three keys: on PostgreSQL, each looked up on its own; one key: an equality."""
    program = _program_with_history(api)
    with api.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Tables this small are cheapest read whole; a program's tables are not. Without
            # that way out the plans show which index path a large table gets.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        statements = _reads(conn, api, program, numbers)
        for statement, parameters in statements:
            if conn.dialect.name == "postgresql":
                plan = _pg_plan(conn, statement, parameters, analyze=True)
                assert _rows_passed_over(plan) == 0, (statement, plan)
            else:
                steps = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
                details = [str(row[-1]) for row in steps]
                # A scan of a table; scanning a subquery's own few rows is how SQLite reads it.
                scans = [
                    d for d in details if d.startswith("SCAN ") and d.split()[1] in metadata.tables
                ]
                assert not scans, (statement, details)


def _table_reads(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(relation, node type) of every read of a table in the plan."""
    found = [(plan["Relation Name"], plan["Node Type"])] if "Relation Name" in plan else []
    return found + [pair for p in plan.get("Plans", []) for pair in _table_reads(p)]


def test_a_groups_reads_of_lots_and_activity_need_no_table_row(api):
    """A member's lots and activity rows lie spread over their tables by when they were made:
    the group's reads of them (balances, tier metrics) are answered by the index alone."""
    program = _program_with_history(api)
    if api.engine.dialect.name == "postgresql":
        # What autovacuum does to tables that only grow: marks their pages all-visible, which
        # an index-only read needs to skip the table.
        with api.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("VACUUM ANALYZE lots, member_activity")
    with api.engine.begin() as conn:
        statements = _reads(conn, api, program, [3, 77, 140])
        checked = 0
        for statement, parameters in statements:
            tables = {t for t in ("lots", "member_activity") if f" {t}" in statement}
            if not tables:
                continue
            checked += 1
            if conn.dialect.name == "postgresql":
                plan = _pg_plan(conn, statement, parameters, analyze=False)
                reads = [r for r in _table_reads(plan) if r[0] in tables]
                assert reads, (statement, plan)
                assert all(node == "Index Only Scan" for _, node in reads), (statement, reads)
            else:
                steps = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
                details = [str(row[-1]) for row in steps]
                reads = [d for d in details if any(f" {t} " in f"{d} " for t in tables)]
                assert reads, (statement, details)
                assert all("USING COVERING INDEX" in d for d in reads), (statement, details)
        assert checked == 4  # lots; spend totals, the rows between, visits
