"""The ``loyalty`` command line, driven in-process with Typer's runner against a real database
(SQLite in a temp file and PostgreSQL through the ``engine`` fixture).

Setup that the CLI cannot do (creating a program, back-dating purchases) goes through the
application layer; everything under test goes through the command line."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, event, func, inspect, select, text
from typer.testing import CliRunner

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.schema import head_revision
from loyalty.adapters.db.tables import (
    api_keys,
    events,
    journal_entries,
    lots,
    members,
    metadata,
    postings,
    programs,
    tenants,
)
from loyalty.application.access import (
    Principal,
    Scope,
    Unauthenticated,
    authenticate,
    create_api_key,
    expand_scopes,
)
from loyalty.application.batch import record_events_batch
from loyalty.application.demo import DEMO_KEY_ID, DEMO_KEY_SECRET, DEMO_TENANT, DEMO_TOKEN
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.members import MemberProfile, enroll_member
from loyalty.application.program_document import ProgramDocument
from loyalty.application.programs import create_program
from loyalty.domain.ledger import POINTS
from loyalty.entrypoints.cli.main import app

DATA = Path(__file__).parent / "data"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RUNNER = CliRunner()


def _plain(value: str) -> str:
    return ANSI.sub("", value)


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _invoke(args: list[str], **env: str) -> tuple[Result, list[Engine]]:
    """Invoke the app and return the engines it created (recorded as they first connect)."""
    created: list[Engine] = []

    def record(conn: Any) -> None:
        if all(conn.engine is not e for e in created):
            created.append(conn.engine)

    event.listen(Engine, "engine_connect", record)
    try:
        result = RUNNER.invoke(app, args, env={"COLUMNS": "200", **env}, color=False)
    finally:
        event.remove(Engine, "engine_connect", record)
    return result, created


@dataclass
class Cli:
    """Runs ``loyalty <args> --database-url <url>`` and returns the result. An uncaught exception
    is re-raised rather than read as exit code 1.

    The commands never dispose the engine they build (see
    ``test_a_command_closes_its_database_connections``), so the pooled connections would stay
    open until garbage collection and then raise ``ResourceWarning`` in an unrelated test. The
    runner disposes them after each command so the other tests check only their own behaviour.
    """

    url: str

    def __call__(self, *args: str) -> Result:
        result, created = _invoke([*args, "--database-url", self.url])
        for engine in created:
            engine.dispose()
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    def out(self, result: Result) -> str:
        return _plain(result.stdout)

    def err(self, result: Result) -> str:
        return _plain(result.stderr)


@pytest.fixture
def cli(engine: Engine) -> Cli:
    return Cli(url_of(engine))


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


# --- setup through the application layer --------------------------------------------------


@dataclass
class Shop:
    program_id: str
    principal: Principal


def make_shop(engine: Engine, *, expiry_days: int | None = None) -> Shop:
    """A EUR program earning 1 point per 100 minor units (floor), no auto-enrolment, with
    members C1, C2 and C3."""
    issued = create_api_key(
        engine, tenant_name="shop", name="setup", scopes=[Scope.ADMIN], program_id=None, now=T0
    )
    principal = Principal(issued.tenant_id, issued.key_id, expand_scopes([Scope.ADMIN]), None)
    expiry: dict[str, Any] = (
        {"policy": "never"}
        if expiry_days is None
        else {"policy": "after_days", "days": expiry_days}
    )
    document = ProgramDocument.model_validate(
        {
            "name": "Shop",
            "currency": "EUR",
            "points": {
                "earn": {"points": 1, "per_spend_minor": 100, "rounding": "floor"},
                "expiry": expiry,
            },
            "enrollment": {"auto_enroll_on_purchase": False},
        }
    )
    program_id = str(create_program(engine, principal, document, now=T0).body["id"])
    for external_id in ("C1", "C2", "C3"):
        enroll_member(
            engine,
            principal,
            program_id,
            external_id=external_id,
            profile=MemberProfile(first_name=f"Name{external_id}"),
            now=T0,
        )
    return Shop(program_id, principal)


def purchase_at(shop: Shop, engine: Engine, order_id: str, member: str, total: int, at: datetime):
    purchase = PurchaseEvent.model_validate(
        {
            "type": "purchase",
            "id": order_id,
            "member": {"external_id": member},
            "occurred_at": at.isoformat(),
            "currency": "EUR",
            "total_minor": total,
        }
    )
    [item] = record_events_batch(engine, shop.principal, shop.program_id, [purchase], now=at)
    assert item.accepted, item.body


def show(cli: Cli, program_id: str, ref: str) -> dict[str, Any]:
    result = cli("members", "show", ref, "--program", program_id)
    assert result.exit_code == 0, result.output
    return dict(json.loads(cli.out(result)))


def balance(cli: Cli, program_id: str, ref: str) -> int:
    return int(show(cli, program_id, ref)["balance"]["balance"])


def balances(cli: Cli, program_id: str) -> dict[str, int]:
    return {ext: balance(cli, program_id, f"ext:{ext}") for ext in ("C1", "C2", "C3")}


def demo_program(cli: Cli) -> str:
    result = cli("demo")
    assert result.exit_code == 0, result.output
    match = re.search(r"the demo program (prg_[0-9A-Z]+)", cli.out(result))
    assert match is not None, result.output
    return match.group(1)


# --- init ----------------------------------------------------------------------------------


def test_init_creates_the_schema_on_an_empty_sqlite_file_then_reports_it_up_to_date(tmp_path):
    cli = Cli(f"sqlite:///{tmp_path / 'fresh.db'}")
    first = cli("init")
    assert first.exit_code == 0, first.output
    assert f"Database migrated from empty to {head_revision()}." in cli.out(first)
    engine = make_engine(cli.url)
    try:
        names = set(inspect(engine).get_table_names())
        assert {t.name for t in metadata.sorted_tables} <= names
        assert "alembic_version" in names
    finally:
        engine.dispose()

    second = cli("init")
    assert second.exit_code == 0, second.output
    assert f"Database is up to date (revision {head_revision()})." in cli.out(second)
    assert "migrated" not in cli.out(second)


def test_init_on_a_migrated_database_changes_nothing_and_keeps_data(engine, cli):
    shop = make_shop(engine)
    result = cli("init")
    assert result.exit_code == 0, result.output
    assert f"Database is up to date (revision {head_revision()})." in cli.out(result)
    assert count(engine, members, members.c.program_id == shop.program_id) == 3


@pytest.mark.postgresql
def test_init_creates_the_schema_in_an_empty_postgresql_schema(postgres_engine):
    schema = f"cli_init_{uuid.uuid4().hex[:10]}"
    with postgres_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = postgres_engine.url.update_query_dict({"options": f"-csearch_path={schema}"})
        cli = Cli(url.render_as_string(hide_password=False))
        first = cli("init")
        assert first.exit_code == 0, first.output
        assert f"Database migrated from empty to {head_revision()}." in cli.out(first)
        names = set(inspect(postgres_engine).get_table_names(schema=schema))
        assert {t.name for t in metadata.sorted_tables} | {"alembic_version"} <= names
        second = cli("init")
        assert second.exit_code == 0, second.output
        assert f"Database is up to date (revision {head_revision()})." in cli.out(second)
    finally:
        with postgres_engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


# --- demo ----------------------------------------------------------------------------------


def _demo_counts(engine: Engine) -> dict[str, int]:
    return {
        "tenants": count(engine, tenants),
        "api_keys": count(engine, api_keys),
        "programs": count(engine, programs),
        "members": count(engine, members),
        "events": count(engine, events),
        "entries": count(engine, journal_entries),
    }


def test_demo_loads_one_program_with_twelve_members_and_their_purchases(engine, cli):
    result = cli("demo")
    assert result.exit_code == 0, result.output
    out = cli.out(result)
    assert "Loaded the demo program prg_" in out
    assert f"Demo API key (admin): {DEMO_TOKEN}" in out
    assert DEMO_TOKEN == "key_demo.loyalty-demo-secret"

    program_id = re.search(r"(prg_[0-9A-Z]+)", out).group(1)  # type: ignore[union-attr]
    counts = _demo_counts(engine)
    assert counts["tenants"] == 1
    assert counts["api_keys"] == 1
    assert counts["programs"] == 1
    assert counts["members"] == 12
    with engine.connect() as conn:
        per_member = dict(
            conn.execute(
                select(members.c.external_id, func.count(events.c.id))
                .join(events, events.c.member_id == members.c.id)
                .where(events.c.type == "purchase", events.c.program_id == program_id)
                .group_by(members.c.external_id)
            ).all()
        )
        returns = conn.execute(
            select(func.count()).select_from(events).where(events.c.type == "return")
        ).scalar_one()
    assert sorted(per_member) == [f"C{1000 + i}" for i in range(1, 13)]
    assert all(2 <= n <= 9 for n in per_member.values()), per_member
    assert returns == 1

    # The demo key works and is an admin key of the demo tenant.
    principal = authenticate(engine, DEMO_TOKEN)
    assert principal.scopes == frozenset({Scope.ADMIN, Scope.WRITE, Scope.READ})

    audit = cli("ledger", "audit")
    assert audit.exit_code == 0, audit.output


def test_demo_a_second_time_finds_the_same_program_and_adds_nothing(engine, cli):
    first = demo_program(cli)
    before = _demo_counts(engine)
    again = cli("demo")
    assert again.exit_code == 0, again.output
    assert f"Found the demo program {first}." in cli.out(again)
    assert f"Demo API key (admin): {DEMO_TOKEN}" in cli.out(again)
    assert _demo_counts(engine) == before


def test_demo_after_an_interrupted_first_run_completes(engine, cli):
    """``load_demo`` commits in many transactions; the first creates the demo key. A run stopped
    right after it (Ctrl-C during "Loading demo data...") leaves the key without a program."""
    create_api_key(
        engine,
        tenant_name=DEMO_TENANT,
        name="demo admin key",
        scopes=[Scope.ADMIN],
        program_id=None,
        now=T0,
        key_id=DEMO_KEY_ID,
        secret=DEMO_KEY_SECRET,
    )
    result = cli("demo")
    assert result.exit_code == 0, result.output
    assert f"Demo API key (admin): {DEMO_TOKEN}" in cli.out(result)
    assert count(engine, programs) == 1
    assert count(engine, members) == 12


def test_demo_migrates_an_empty_database_itself(tmp_path):
    cli = Cli(f"sqlite:///{tmp_path / 'empty.db'}")
    program_id = demo_program(cli)
    assert program_id.startswith("prg_")
    assert cli("init").stdout.startswith("Database is up to date")


# --- apikey create -------------------------------------------------------------------------


def _token(cli: Cli, result: Result) -> str:
    lines = [line for line in cli.out(result).splitlines() if line.strip()]
    assert lines[-2] == "The key (shown once):", lines
    return lines[-1]


def test_apikey_create_read_prints_a_token_with_exactly_the_read_scope(engine, cli):
    result = cli("apikey", "create", "--tenant", "acme", "--scope", "read")
    assert result.exit_code == 0, result.output
    token = _token(cli, result)
    key_id, _, secret = token.partition(".")
    assert key_id.startswith("key_")
    assert len(secret) >= 32
    assert f"key {key_id}, scopes read" in cli.out(result)

    principal = authenticate(engine, token)
    assert principal.scopes == frozenset({Scope.READ})
    assert principal.key_id == key_id
    assert principal.program_id is None
    with engine.connect() as conn:
        tenant = conn.execute(select(tenants).where(tenants.c.name == "acme")).one()
        row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one()
    assert principal.tenant_id == tenant.id
    assert f"Tenant {tenant.id}," in cli.out(result)
    # Only the hash of the secret is stored, never the secret or the token.
    assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert row.scopes == "read"
    stored = " ".join(str(v) for v in row._mapping.values())
    assert secret not in stored
    assert token not in stored
    # A wrong secret for the same key does not authenticate.
    with pytest.raises(Unauthenticated):
        authenticate(engine, f"{key_id}.{secret[:-1]}x")


def test_apikey_create_reuses_the_tenant_and_defaults_to_admin(engine, cli):
    first = _token(cli, cli("apikey", "create", "--tenant", "acme", "--scope", "read"))
    second_result = cli("apikey", "create", "--tenant", "acme", "--name", "ops")
    assert second_result.exit_code == 0, second_result.output
    second = _token(cli, second_result)
    assert first != second
    a, b = authenticate(engine, first), authenticate(engine, second)
    assert a.tenant_id == b.tenant_id
    assert b.scopes == frozenset({Scope.ADMIN, Scope.WRITE, Scope.READ})
    assert count(engine, tenants) == 1
    assert count(engine, api_keys) == 2

    both = cli("apikey", "create", "--tenant", "acme", "--scope", "write", "--scope", "read")
    assert authenticate(engine, _token(cli, both)).scopes == frozenset({Scope.WRITE, Scope.READ})


def test_apikey_create_rejects_an_unknown_scope(engine, cli):
    result = cli("apikey", "create", "--tenant", "acme", "--scope", "superuser")
    assert result.exit_code == 2
    assert count(engine, api_keys) == 0


# --- members -------------------------------------------------------------------------------


def test_members_list_and_show_on_the_demo(cli):
    program_id = demo_program(cli)
    result = cli("members", "list", "--program", program_id)
    assert result.exit_code == 0, result.output
    out = cli.out(result)
    assert re.findall(r"C10\d\d", out) == [f"C{1000 + i}" for i in range(1, 13)]
    assert "Ada Lovelace" in out
    assert "ada.lovelace@example.com" in out
    assert len(re.findall(r"mbr_[0-9A-Z]+", out)) == 12

    limited = cli.out(cli("members", "list", "--program", program_id, "--limit", "5"))
    assert len(re.findall(r"mbr_[0-9A-Z]+", limited)) == 5
    assert re.findall(r"C10\d\d", limited) == [f"C{1000 + i}" for i in range(1, 6)]

    by_email = cli(
        "members", "list", "--program", program_id, "--email", "GRACE.Hopper@example.com"
    )
    assert by_email.exit_code == 0, by_email.output
    assert re.findall(r"C10\d\d", cli.out(by_email)) == ["C1003"]

    view = show(cli, program_id, "ext:C1001")
    assert (view["first_name"], view["last_name"]) == ("Ada", "Lovelace")
    assert view["email"] == "ada.lovelace@example.com"
    # The demo data is deterministic (a seeded generator), so C1001's balance is known.
    assert view["balance"]["balance"] == 99
    assert sum(b["points"] for b in view["balance"]["expiring"]) == 99


def test_members_list_for_an_unknown_program_exits_2(cli):
    result = cli("members", "list", "--program", "prg_DOESNOTEXIST")
    assert result.exit_code == 2
    assert "program prg_DOESNOTEXIST does not exist" in cli.err(result)


def test_members_show_prints_the_member_and_balance(engine, cli):
    shop = make_shop(engine)
    purchase_at(shop, engine, "O-1", "C1", 4250, T0)
    view = show(cli, shop.program_id, "ext:C1")
    assert view["external_id"] == "C1"
    assert view["first_name"] == "NameC1"
    assert view["program_id"] == shop.program_id
    assert view["balance"]["balance"] == 42
    assert view["balance"]["available"] == 42
    assert view["balance"]["debt"] == 0
    # The engine's own id finds the same member.
    by_id = show(cli, shop.program_id, view["id"])
    assert by_id["external_id"] == "C1"
    assert by_id["balance"]["balance"] == 42
    assert balance(cli, shop.program_id, "ext:C2") == 0


def test_members_show_an_unknown_member_exits_non_zero(engine, cli):
    shop = make_shop(engine)
    result = cli("members", "show", "ext:NOBODY", "--program", shop.program_id)
    assert result.exit_code == 1
    assert "member_not_found" in cli.err(result)
    assert cli.out(result) == ""


# --- ledger audit --------------------------------------------------------------------------


def test_ledger_audit_passes_on_an_empty_and_on_a_demo_database(cli):
    empty = cli("ledger", "audit")
    assert empty.exit_code == 0, empty.output
    demo_program(cli)
    result = cli("ledger", "audit")
    assert result.exit_code == 0, result.output
    assert "Ledger audit passed" in cli.out(result)


CORRUPTIONS = {
    "wallets_match_postings": [
        "UPDATE wallets SET balance = balance + 1 WHERE member_id = "
        "(SELECT id FROM members WHERE external_id = 'C1001')"
    ],
    "entries_balance": [
        "INSERT INTO postings (entry_id, leg, program_id, member_id, account, asset, amount) "
        "SELECT id, 99, program_id, NULL, 'program:corrupt', :asset, 7 FROM journal_entries "
        "WHERE id = (SELECT MIN(id) FROM journal_entries)"
    ],
    "lots_match_movements": [
        "UPDATE lots SET remaining = remaining - 1 WHERE id = "
        "(SELECT MIN(id) FROM lots WHERE remaining > 1)"
    ],
    # lot_movements has no foreign keys; the audit refuses what they would have, and more.
    "movements_have_lots_and_entries": [
        "INSERT INTO lot_movements (entry_id, lot_id, program_id, member_id, kind, amount) "
        "SELECT entry_id, 'lot_missing', program_id, member_id, kind, amount FROM lot_movements "
        "WHERE entry_id = (SELECT MIN(entry_id) FROM lot_movements) "
        "AND lot_id = (SELECT MIN(lot_id) FROM lot_movements "
        "WHERE entry_id = (SELECT MIN(entry_id) FROM lot_movements))"
    ],
}


@pytest.mark.parametrize("invariant", sorted(CORRUPTIONS))
def test_ledger_audit_exits_1_naming_the_invariant_a_corruption_breaks(engine, cli, invariant):
    demo_program(cli)
    with engine.begin() as conn:
        for sql in CORRUPTIONS[invariant]:
            changed = conn.execute(text(sql), {"asset": POINTS} if ":asset" in sql else {})
            assert changed.rowcount == 1
    result = cli("ledger", "audit")
    assert result.exit_code == 1
    first_line = cli.err(result).splitlines()[0]
    assert first_line.startswith(f"Ledger audit FAILED: {invariant} (")
    assert "Ledger audit passed" not in cli.out(result)


# --- jobs run expire -----------------------------------------------------------------------


@pytest.fixture
def expiring_shop(engine: Engine) -> Shop:
    """Lots earned at T0 expire on 2026-01-31T00:00Z; C1's second lot on 2026-03-17T00:00Z."""
    shop = make_shop(engine, expiry_days=30)
    purchase_at(shop, engine, "E-1", "C1", 2000, T0)  # 20 points
    purchase_at(shop, engine, "E-2", "C2", 950, T0)  # 9 points
    purchase_at(shop, engine, "E-3", "C1", 500, datetime(2026, 2, 15, tzinfo=UTC))  # 5 points
    return shop


def test_jobs_run_expire_expires_due_lots_once(engine, cli, expiring_shop):
    shop = expiring_shop
    assert balances(cli, shop.program_id) == {"C1": 25, "C2": 9, "C3": 0}

    early = cli("jobs", "run", "expire", "--now", "2026-01-30T23:59:59Z")
    assert early.exit_code == 0, early.output
    assert "Expired 0 lots (0 points) as of 2026-01-30T23:59:59+00:00." in cli.out(early)
    assert balances(cli, shop.program_id) == {"C1": 25, "C2": 9, "C3": 0}

    # A lot expiring exactly at --now is due; the offset is honoured (01:00+01:00 is 00:00Z).
    due = cli("jobs", "run", "expire", "--now", "2026-01-31T01:00:00+01:00")
    assert due.exit_code == 0, due.output
    assert "Expired 2 lots (29 points) as of 2026-01-31T01:00:00+01:00." in cli.out(due)
    assert balances(cli, shop.program_id) == {"C1": 5, "C2": 0, "C3": 0}
    with engine.connect() as conn:
        remaining = dict(conn.execute(select(lots.c.amount, lots.c.remaining)).all())
    assert remaining == {20: 0, 9: 0, 5: 5}
    assert cli("ledger", "audit").exit_code == 0

    again = cli("jobs", "run", "expire", "--now", "2026-02-20T00:00:00Z")
    assert again.exit_code == 0, again.output
    assert "Expired 0 lots (0 points)" in cli.out(again)
    assert balances(cli, shop.program_id) == {"C1": 5, "C2": 0, "C3": 0}
    assert count(engine, journal_entries, journal_entries.c.kind == "expire") == 2

    # A naive time is read as UTC.
    later = cli("jobs", "run", "expire", "--now", "2026-03-17T00:00:00", "--batch-size", "1")
    assert later.exit_code == 0, later.output
    assert "Expired 1 lots (5 points) as of 2026-03-17T00:00:00+00:00." in cli.out(later)
    assert balances(cli, shop.program_id) == {"C1": 0, "C2": 0, "C3": 0}
    audit = cli("ledger", "audit")
    assert audit.exit_code == 0, audit.output


def test_jobs_run_expire_with_batch_size_1_expires_every_member(engine, cli, expiring_shop):
    result = cli("jobs", "run", "expire", "--now", "2027-01-01T00:00:00Z", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert "Expired 3 lots (34 points)" in cli.out(result)
    assert balances(cli, expiring_shop.program_id) == {"C1": 0, "C2": 0, "C3": 0}
    assert count(engine, journal_entries, journal_entries.c.kind == "expire") == 2
    assert cli("ledger", "audit").exit_code == 0


def test_jobs_run_expire_with_an_invalid_now_exits_2_and_expires_nothing(
    engine, cli, expiring_shop
):
    for value in ("yesterday", "2026-13-01T00:00:00Z", ""):
        result = cli("jobs", "run", "expire", "--now", value)
        assert result.exit_code == 2, value
        assert "--now must be an ISO 8601 time" in cli.err(result)
    assert count(engine, journal_entries, journal_entries.c.kind == "expire") == 0
    assert balances(cli, expiring_shop.program_id) == {"C1": 25, "C2": 9, "C3": 0}


def test_jobs_run_expire_on_the_demo_a_year_later_empties_every_wallet(engine, cli):
    program_id = demo_program(cli)
    before = balance(cli, program_id, "ext:C1001")
    assert before == 99
    result = cli("jobs", "run", "expire", "--now", "2099-01-01T00:00:00Z")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        left = conn.execute(select(func.coalesce(func.sum(lots.c.remaining), 0))).scalar_one()
        member_postings = conn.execute(
            select(func.coalesce(func.sum(postings.c.amount), 0)).where(
                postings.c.member_id.is_not(None)
            )
        ).scalar_one()
    assert left == 0
    assert member_postings == 0
    assert balance(cli, program_id, "ext:C1001") == 0
    assert cli("ledger", "audit").exit_code == 0
    again = cli("jobs", "run", "expire", "--now", "2099-01-01T00:00:00Z")
    assert "Expired 0 lots (0 points)" in cli.out(again)


# --- events import -------------------------------------------------------------------------

# events.jsonl and events.csv hold the same five events: O-1 (C1, two lines, 25 points),
# O-2 (C2, 9 points), O-3 (C1, no lines, 5 points), A-1 (an action by C3) and R-1 (returns one
# of O-1's two units of SKU A, taking back 10 points).
EXPECTED = {"C1": 20, "C2": 9, "C3": 0}


@pytest.fixture
def shop(engine: Engine) -> Shop:
    return make_shop(engine)


def _import(cli: Cli, shop: Shop, path: Path, *extra: str) -> Result:
    return cli("events", "import", str(path), "--program", shop.program_id, *extra)


def _summary(cli: Cli, result: Result) -> str:
    lines = [line for line in cli.out(result).splitlines() if line.startswith("Accepted")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("name", ["events.jsonl", "events.csv"])
def test_events_import_accepts_every_good_event(engine, cli, shop, name):
    result = _import(cli, shop, DATA / name)
    assert result.exit_code == 0, result.output
    assert _summary(cli, result) == "Accepted 5 events (0 already imported), rejected 0."
    assert balances(cli, shop.program_id) == EXPECTED
    with engine.connect() as conn:
        kinds = sorted(
            conn.execute(
                select(events.c.type, events.c.source_id).where(
                    events.c.program_id == shop.program_id
                )
            ).all()
        )
        o1 = conn.execute(select(events.c.payload).where(events.c.source_id == "O-1")).scalar_one()
    assert kinds == [
        ("action", "A-1"),
        ("purchase", "O-1"),
        ("purchase", "O-2"),
        ("purchase", "O-3"),
        ("return", "R-1"),
    ]
    # The two CSV rows of O-1 became one event with two lines.
    assert [(li["sku"], li["quantity"]) for li in o1["lines"]] == [("A", 2), ("B", 1)]
    assert o1["lines"][1]["discount_minor"] == 50
    assert o1["channel"] == "store"
    assert cli("ledger", "audit").exit_code == 0


@pytest.mark.parametrize("name", ["events.jsonl", "events.csv"])
def test_events_import_twice_imports_nothing_twice(engine, cli, shop, name):
    assert _import(cli, shop, DATA / name).exit_code == 0
    entries = count(engine, journal_entries)
    stored = count(engine, events)
    again = _import(cli, shop, DATA / name)
    assert again.exit_code == 0, again.output
    assert _summary(cli, again) == "Accepted 5 events (5 already imported), rejected 0."
    assert balances(cli, shop.program_id) == EXPECTED
    assert count(engine, journal_entries) == entries
    assert count(engine, events) == stored


def test_events_import_csv_after_the_same_events_as_jsonl_is_a_replay(engine, cli, shop):
    assert _import(cli, shop, DATA / "events.jsonl").exit_code == 0
    again = _import(cli, shop, DATA / "events.csv")
    assert again.exit_code == 0, again.output
    assert _summary(cli, again) == "Accepted 5 events (5 already imported), rejected 0."
    assert balances(cli, shop.program_id) == EXPECTED


@pytest.mark.parametrize("name", ["events.jsonl", "events.csv"])
@pytest.mark.parametrize("size", ["1", "2"])
def test_events_import_batch_size_does_not_change_the_result(engine, cli, shop, name, size):
    result = _import(cli, shop, DATA / name, "--batch-size", size)
    assert result.exit_code == 0, result.output
    assert _summary(cli, result) == "Accepted 5 events (0 already imported), rejected 0."
    assert balances(cli, shop.program_id) == EXPECTED
    assert count(engine, events) == 5


MIXED_JSONL_REJECTIONS = [
    ("line 2", None, "invalid JSON"),
    ("line 3", "BAD-FIELDS", "currency: Field required"),
    ("line 4", "BAD-MEMBER", "member_not_found"),
    ("line 5", "BAD-CURRENCY", "currency_mismatch"),
]
MIXED_CSV_REJECTIONS = [
    ("rows 3-3", "BAD-TOTAL", "total_minor"),
    ("rows 4-5", "BAD-MEMBER", "member_not_found"),
    ("rows 6-6", "BAD-CURRENCY", "currency_mismatch"),
    ("rows 7-7", "BAD-NOMEMBER", "member: Field required"),
]


def _rejections(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: r["at"])


def _check_rejections(found: list[dict[str, Any]], expected: list[tuple[str, Any, str]]) -> None:
    assert [(r["at"], r["id"]) for r in found] == [(at, id_) for at, id_, _ in expected]
    for r, (_, _, message) in zip(found, expected, strict=True):
        assert message in r["error"], r


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mixed.jsonl", MIXED_JSONL_REJECTIONS), ("mixed.csv", MIXED_CSV_REJECTIONS)],
)
@pytest.mark.parametrize("size", ["500", "2"])
def test_events_import_rejects_bad_rows_and_keeps_good_ones(
    engine, cli, shop, tmp_path, name, expected, size
):
    errors = tmp_path / "errors.jsonl"
    result = _import(cli, shop, DATA / name, "--errors-file", str(errors), "--batch-size", size)
    assert result.exit_code == 1
    assert _summary(cli, result) == "Accepted 2 events (0 already imported), rejected 4."
    out = cli.out(result)
    for at, id_, _ in expected:
        assert f"rejected {at} id={id_}:" in out
    _check_rejections(_rejections(errors), expected)
    # G-1 (12 points for C1) and G-2 (7 points for C2) went in; nothing of the bad rows did.
    assert balances(cli, shop.program_id) == {"C1": 12, "C2": 7, "C3": 0}
    with engine.connect() as conn:
        ids = sorted(conn.execute(select(events.c.source_id)).scalars())
    assert ids == ["G-1", "G-2"]
    assert count(engine, members) == 3
    assert cli("ledger", "audit").exit_code == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mixed.jsonl", MIXED_JSONL_REJECTIONS), ("mixed.csv", MIXED_CSV_REJECTIONS)],
)
def test_events_import_rerun_of_a_file_with_bad_rows(engine, cli, shop, tmp_path, name, expected):
    assert _import(cli, shop, DATA / name).exit_code == 1
    errors = tmp_path / "again.jsonl"
    again = _import(cli, shop, DATA / name, "--errors-file", str(errors))
    assert again.exit_code == 1
    assert _summary(cli, again) == "Accepted 2 events (2 already imported), rejected 4."
    _check_rejections(_rejections(errors), expected)
    assert balances(cli, shop.program_id) == {"C1": 12, "C2": 7, "C3": 0}
    assert count(engine, events) == 2


def test_events_import_without_rejections_writes_an_empty_errors_file(cli, shop, tmp_path):
    errors = tmp_path / "errors.jsonl"
    result = _import(cli, shop, DATA / "events.jsonl", "--errors-file", str(errors))
    assert result.exit_code == 0, result.output
    assert errors.read_text(encoding="utf-8") == ""


def test_events_import_the_same_event_twice_in_one_file_counts_once(engine, cli, shop, tmp_path):
    line = (DATA / "events.jsonl").read_text(encoding="utf-8").splitlines()[0]
    path = tmp_path / "twice.jsonl"
    path.write_text(f"{line}\n{line}\n", encoding="utf-8")
    result = _import(cli, shop, path)
    assert result.exit_code == 0, result.output
    assert _summary(cli, result) == "Accepted 2 events (1 already imported), rejected 0."
    assert balance(cli, shop.program_id, "ext:C1") == 25
    assert count(engine, events) == 1


def test_events_import_a_changed_event_under_an_imported_id_is_rejected(
    engine, cli, shop, tmp_path
):
    assert _import(cli, shop, DATA / "events.jsonl").exit_code == 0
    changed = json.loads((DATA / "events.jsonl").read_text(encoding="utf-8").splitlines()[2])
    changed["total_minor"] = 99_900
    path = tmp_path / "changed.jsonl"
    path.write_text(json.dumps(changed) + "\n", encoding="utf-8")
    result = _import(cli, shop, path)
    assert result.exit_code == 1
    assert _summary(cli, result) == "Accepted 0 events (0 already imported), rejected 1."
    assert "rejected line 1 id=O-3:" in cli.out(result)
    assert balances(cli, shop.program_id) == EXPECTED


def test_events_import_lists_twenty_rejections_and_counts_the_rest(engine, cli, shop, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(f'{{"type": "purchase", "id": "X-{i}"}}\n' for i in range(25)))
    errors = tmp_path / "errors.jsonl"
    result = _import(cli, shop, path, "--errors-file", str(errors))
    assert result.exit_code == 1
    assert _summary(cli, result) == "Accepted 0 events (0 already imported), rejected 25."
    out = cli.out(result)
    assert len(re.findall(r"^  rejected line \d+ id=X-\d+:", out, re.MULTILINE)) == 20
    assert "  ... and 5 more" in out
    found = [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in found] == [f"X-{i}" for i in range(25)]
    assert count(engine, events) == 0


def test_events_import_csv_with_a_byte_order_mark(cli, shop, tmp_path):
    """Spreadsheets save "CSV UTF-8" with a byte-order mark before the header."""
    path = tmp_path / "excel.csv"
    path.write_text("\ufeff" + (DATA / "events.csv").read_text(encoding="utf-8"), encoding="utf-8")
    result = _import(cli, shop, path)
    assert result.exit_code == 0, result.output
    assert _summary(cli, result) == "Accepted 5 events (0 already imported), rejected 0."
    assert balances(cli, shop.program_id) == EXPECTED


def test_events_import_purchase_whose_unnamed_line_takes_a_named_lines_id(
    engine, cli, shop, tmp_path
):
    """Lines without ``line_id`` are named by position, so a purchase naming its first line "2"
    and leaving the second unnamed has two lines called "2". That one event must be answered on
    its own (rejected), not abort the batch with the good events around it."""
    clash = {
        "type": "purchase",
        "id": "CLASH",
        "member": {"external_id": "C1"},
        "occurred_at": "2026-01-10T09:00:00Z",
        "currency": "EUR",
        "total_minor": 300,
        "lines": [{"line_id": "2", "unit_price_minor": 100}, {"unit_price_minor": 200}],
    }
    good = dict(clash, id="GOOD-1", lines=[], member={"external_id": "C2"})
    after = dict(good, id="GOOD-2", total_minor=500)
    path = tmp_path / "clash.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in (good, clash, after)))
    errors = tmp_path / "errors.jsonl"
    result = _import(cli, shop, path, "--errors-file", str(errors))
    assert result.exit_code == 1
    assert _summary(cli, result) == "Accepted 2 events (0 already imported), rejected 1."
    assert [(r["at"], r["id"]) for r in _rejections(errors)] == [("line 2", "CLASH")]
    assert balances(cli, shop.program_id) == {"C1": 0, "C2": 8, "C3": 0}


def test_events_import_into_an_unknown_program_exits_2(engine, cli):
    result = cli("events", "import", str(DATA / "events.jsonl"), "--program", "prg_NOPE")
    assert result.exit_code == 2
    assert "program prg_NOPE does not exist" in cli.err(result)
    assert count(engine, events) == 0


def test_events_import_of_a_missing_file_exits_2(cli, shop, tmp_path):
    result = _import(cli, shop, tmp_path / "missing.jsonl")
    assert result.exit_code == 2


# --- database URL ------------------------------------------------------------------------


def test_the_database_url_can_come_from_the_environment(tmp_path):
    path = tmp_path / "from-env.db"
    result, created = _invoke(["init"], LOYALTY_DATABASE_URL=f"sqlite:///{path}")
    for engine in created:
        engine.dispose()
    assert result.exit_code == 0, result.output
    assert "Database migrated from empty" in result.stdout
    assert path.exists()


@pytest.mark.postgresql
def test_a_postgres_scheme_url_is_accepted(postgres_engine):
    url = postgres_engine.url.set(drivername="postgres").render_as_string(hide_password=False)
    assert url.startswith("postgres://")
    result = Cli(url)("ledger", "audit")
    assert result.exit_code == 0, result.output
    assert "Ledger audit passed" in result.stdout


# --- resources -----------------------------------------------------------------------------


@pytest.mark.postgresql
def test_a_command_closes_its_database_connections(postgres_engine):
    """A command that has returned holds no connection to the server: its engine is disposed.
    (In a short-lived process the OS closes them at exit; in-process, e.g. under this runner,
    they stay open until garbage collection and then warn.)"""

    def backends() -> int:
        with postgres_engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )

    before = backends()
    result, created = _invoke(["ledger", "audit", "--database-url", url_of(postgres_engine)])
    try:
        assert result.exit_code == 0, result.output
        assert len(created) == 1
        left_open = backends() - before
    finally:
        for engine in created:
            engine.dispose()
    assert left_open == 0, f"{left_open} connection(s) left open after the command returned"
