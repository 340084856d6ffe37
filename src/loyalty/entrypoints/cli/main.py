"""``loyalty``: set up, run and operate the engine from a shell."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine, select

from loyalty.adapters.clock import utc_now
from loyalty.adapters.db.engine import background_checkpoints
from loyalty.adapters.db.schema import UpgradeBlocked, current_revision, head_revision, migrate
from loyalty.adapters.db.tables import programs as programs_table
from loyalty.application import access, holds, members, tiers
from loyalty.application.access import Principal, Scope
from loyalty.application.audit import audit_ledger
from loyalty.application.batch import record_events_batch
from loyalty.application.demo import load_demo
from loyalty.application.events import AnyEvent
from loyalty.application.expiry import (
    EXPIRY_BATCH_DEFAULT,
    EXPIRY_BATCH_MAX,
    EXPIRY_WORKERS_DEFAULT,
    EXPIRY_WORKERS_MAX,
    expire_due_lots,
)
from loyalty.application.limits import IMPORT_BATCH_DEFAULT, IMPORT_BATCH_MAX
from loyalty.bootstrap import Settings, build_engine
from loyalty.domain.errors import DomainError
from loyalty.entrypoints.cli.importing import ParsedRow, read_events
from loyalty.entrypoints.cli.program import program_commands
from loyalty.entrypoints.cli.simulate import register as register_simulate
from loyalty.entrypoints.runtime import settle_heap

app = typer.Typer(
    help="Loyalty Engine: an API-first engine for loyalty programs.",
    no_args_is_help=True,
    add_completion=False,
)
apikey_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
members_app = typer.Typer(help="Look at members.", no_args_is_help=True)
events_app = typer.Typer(help="Load events.", no_args_is_help=True)
ledger_app = typer.Typer(help="Check the ledger.", no_args_is_help=True)
jobs_app = typer.Typer(help="Run scheduled jobs by hand.", no_args_is_help=True)
tiers_app = typer.Typer(help="Tiers: recalculate after changing thresholds.", no_args_is_help=True)
jobs_run_app = typer.Typer(help="Run one job now.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")
app.add_typer(members_app, name="members")
app.add_typer(events_app, name="events")
app.add_typer(ledger_app, name="ledger")
app.add_typer(jobs_app, name="jobs")
app.add_typer(tiers_app, name="tiers")
jobs_app.add_typer(jobs_run_app, name="run")

console = Console()


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Loyalty Engine: an API-first engine for loyalty programs."""
    # Runs however the command ends (success, typer.Exit, or an error).
    ctx.call_on_close(dispose_engines)


err = Console(stderr=True)

DatabaseUrl = Annotated[
    Optional[str],  # noqa: UP045 - Typer reads the annotation at runtime
    typer.Option(
        "--database-url",
        envvar="LOYALTY_DATABASE_URL",
        help="SQLAlchemy URL; default sqlite:///loyalty.db",
    ),
]


_open_engines: list[Engine] = []


def _engine(database_url: str | None) -> Engine:
    """An engine for this command; ``main``'s callback disposes it when the command ends."""
    settings = Settings.from_env()
    if database_url:
        settings = Settings(database_url=database_url, pool_size=settings.pool_size)
    engine = build_engine(settings)
    _open_engines.append(engine)
    return engine


def dispose_engines() -> None:
    while _open_engines:
        _open_engines.pop().dispose()


def _principal_for_program(engine: Engine, program_id: str) -> Principal:
    """The CLI runs with the operator's authority over the database: admin for the program's
    tenant, recorded as the actor ``cli``."""
    with engine.connect() as conn:
        row = conn.execute(
            select(programs_table.c.tenant_id).where(programs_table.c.id == program_id)
        ).first()
    if row is None:
        err.print(f"[red]program {program_id} does not exist[/red]")
        raise typer.Exit(2)
    return Principal(row.tenant_id, "cli", access.expand_scopes([Scope.ADMIN]), None)


app.add_typer(program_commands(_engine, _principal_for_program), name="program")
register_simulate(app, _engine, _principal_for_program)


def _parse_when(value: str | None) -> datetime:
    if value is None:
        return utc_now()
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        err.print(f"[red]--now must be an ISO 8601 time, got {value!r}[/red]")
        raise typer.Exit(2) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def init(database_url: DatabaseUrl = None) -> None:
    """Create the database schema, or migrate it to the latest version."""
    engine = _engine(database_url)
    before = current_revision(engine)
    try:
        migrate(engine)
    except UpgradeBlocked as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    after = current_revision(engine)
    if before == after:
        console.print(f"Database is up to date (revision {after}).")
    else:
        console.print(f"Database migrated from {before or 'empty'} to {after}.")


@app.command()
def demo(database_url: DatabaseUrl = None) -> None:
    """Load the demo tenant, program and members (once; later runs print the key again)."""
    engine = _engine(database_url)
    if current_revision(engine) != head_revision():
        migrate(engine)
    with console.status("Loading demo data..."):
        info = load_demo(engine, now=utc_now())
    state = "Loaded" if info.created else "Found"
    console.print(f"{state} the demo program [bold]{info.program_id}[/bold].")
    console.print(f"Demo API key (admin): [bold green]{info.token}[/bold green]")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    database_url: DatabaseUrl = None,
) -> None:
    """Serve the HTTP API (docs at /docs)."""
    import os

    import uvicorn

    if database_url:
        os.environ["LOYALTY_DATABASE_URL"] = database_url

    from loyalty.entrypoints.api.http_protocol import PROTOCOL

    console.print(f"Serving on http://{host}:{port} (API docs at http://{host}:{port}/docs)")
    uvicorn.run(
        "loyalty.entrypoints.api.asgi:app",
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        http=PROTOCOL,
    )


@apikey_app.command("create")
def apikey_create(
    tenant: Annotated[str, typer.Option(help="Tenant name; created if new.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "cli",
    scope: Annotated[list[Scope], typer.Option(help="admin, write or read; repeatable.")] = [  # noqa: B006
        Scope.ADMIN
    ],
    program: Annotated[Optional[str], typer.Option(help="Limit the key to one program.")] = None,  # noqa: UP045
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    engine = _engine(database_url)
    try:
        issued = access.create_api_key(
            engine,
            tenant_name=tenant,
            name=name,
            scopes=list(scope),
            program_id=program,
            now=utc_now(),
        )
    except DomainError as exc:
        err.print(f"[red]{exc.code}: {exc.detail}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"Tenant {issued.tenant_id}, key {issued.key_id}, scopes {','.join(issued.scopes)}"
    )
    console.print("The key (shown once):")
    print(issued.token)


@members_app.command("list")
def members_list(
    program: Annotated[str, typer.Option(help="Program id.")],
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    email: Annotated[Optional[str], typer.Option()] = None,  # noqa: UP045
    database_url: DatabaseUrl = None,
) -> None:
    """List members of a program."""
    engine = _engine(database_url)
    principal = _principal_for_program(engine, program)
    page = members.list_members(engine, principal, program, limit=limit, email=email)
    table = Table("id", "external id", "name", "email", "enrolled")
    for m in page["items"]:
        table.add_row(
            m["id"],
            m["external_id"],
            " ".join(x for x in (m["first_name"], m["last_name"]) if x),
            m["email"] or "",
            m["enrolled_at"][:10],
        )
    console.print(table)


@members_app.command("show")
def members_show(
    member: Annotated[str, typer.Argument(help="mbr_... or ext:<external id>")],
    program: Annotated[str, typer.Option(help="Program id.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Show one member with their balance."""
    from loyalty.application.balances import get_balance

    engine = _engine(database_url)
    principal = _principal_for_program(engine, program)
    try:
        view = members.get_member(engine, principal, program, member)
        view["balance"] = get_balance(engine, principal, program, member, now=utc_now())
    except DomainError as exc:
        err.print(f"[red]{exc.code}: {exc.detail}[/red]")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(view))


@events_app.command("import")
def events_import(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help=".csv, .parquet or .jsonl")
    ],
    program: Annotated[str, typer.Option(help="Program id.")],
    batch_size: Annotated[int, typer.Option(min=1, max=IMPORT_BATCH_MAX)] = IMPORT_BATCH_DEFAULT,
    errors_file: Annotated[
        Path | None, typer.Option(help="Write rejected rows here (JSON Lines).")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Import events in batches; each is idempotent on its id, so a rerun is safe."""
    engine = _engine(database_url)
    principal = _principal_for_program(engine, program)
    settle_heap()
    accepted = replayed = rejected = 0
    rejections: list[dict[str, str | None]] = []
    size = file.stat().st_size
    pending: list[ParsedRow] = []

    def flush() -> None:
        nonlocal accepted, replayed, rejected
        ready: list[AnyEvent] = [row.event for row in pending if row.event is not None]
        rows = [row for row in pending if row.event is not None]
        for row in pending:
            if row.event is None:
                rejected += 1
                rejections.append({"at": row.location, "id": row.source_id, "error": row.error})
        if ready:
            for row, item in zip(
                rows,
                record_events_batch(engine, principal, program, ready, now=utc_now()),
                strict=True,
            ):
                if item.accepted:
                    accepted += 1
                    replayed += int(item.replayed)
                else:
                    rejected += 1
                    rejections.append(
                        {
                            "at": row.location,
                            "id": row.source_id,
                            "error": f"{item.body['code']}: {item.body['detail']}",
                        }
                    )
        pending.clear()

    with (
        background_checkpoints(engine),
        Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as progress,
    ):
        task = progress.add_task(f"Importing {file.name}", total=size)
        for row in read_events(file):
            pending.append(row)
            if len(pending) >= batch_size:
                flush()
                progress.update(
                    task,
                    description=f"Importing {file.name} ({accepted} accepted, {rejected} rejected)",
                )
        flush()
        progress.update(task, completed=size)
    console.print(f"Accepted {accepted} events ({replayed} already imported), rejected {rejected}.")
    for r in rejections[:20]:
        console.print(f"  [red]rejected[/red] {r['at']} id={r['id']}: {r['error']}")
    if len(rejections) > 20:
        console.print(f"  ... and {len(rejections) - 20} more")
    if errors_file is not None:
        with errors_file.open("w", encoding="utf-8") as fh:
            for r in rejections:
                fh.write(json.dumps(r) + "\n")
    if rejected:
        raise typer.Exit(1)


@ledger_app.command("audit")
def ledger_audit(database_url: DatabaseUrl = None) -> None:
    """Verify every ledger invariant; exit 1 naming the first one broken."""
    engine = _engine(database_url)
    findings = audit_ledger(engine)
    if not findings:
        console.print("[green]Ledger audit passed: every invariant holds.[/green]")
        return
    first = findings[0]
    err.print(f"[red]Ledger audit FAILED: {first.invariant} ({first.description})[/red]")
    for f in findings:
        err.print(f"  {f.invariant}: e.g. {f.examples[:3]}")
    raise typer.Exit(1)


@jobs_run_app.command("expire")
def jobs_run_expire(
    now: Annotated[str | None, typer.Option(help="Run as of this ISO time (default: now).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=EXPIRY_BATCH_MAX)] = EXPIRY_BATCH_DEFAULT,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=EXPIRY_WORKERS_MAX,
            help="Batches expired at once on PostgreSQL (SQLite: always one).",
        ),
    ] = EXPIRY_WORKERS_DEFAULT,
    database_url: DatabaseUrl = None,
) -> None:
    """Expire every lot that is due; safe to run twice or concurrently."""
    engine = _engine(database_url)
    when = _parse_when(now)
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task("Expiring lots", total=None)

        def on_batch(lots: int, points: int) -> None:
            progress.update(task, description=f"Expiring lots: {lots} more ({points} points)")

        report = expire_due_lots(
            engine, now=when, batch_size=batch_size, on_batch=on_batch, workers=workers
        )
    console.print(
        f"Expired {report.lots_expired} lots ({report.points_expired} points) as of "
        f"{when.isoformat()}."
    )


@jobs_run_app.command("release-holds")
def jobs_run_release_holds(
    now: Annotated[str | None, typer.Option(help="Run as of this ISO time (default: now).")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Release every checkout hold past its time-to-live; safe to run twice or concurrently."""
    engine = _engine(database_url)
    when = _parse_when(now)
    released = holds.release_expired(engine, now=when)
    console.print(f"Released {released} expired holds as of {when.isoformat()}.")


@jobs_run_app.command("tier-review")
def jobs_run_tier_review(
    now: Annotated[str | None, typer.Option(help="Run as of this ISO time (default: now).")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Review every member whose tier is due (review date plus grace days): keep it, or move
    down by at most the set's max_levels_down. Safe to run twice."""
    engine = _engine(database_url)
    when = _parse_when(now)
    results = tiers.review_all(engine, now=when)
    if not results:
        console.print("No program has tiers.")
    for program_id, totals in results.items():
        console.print(
            f"{program_id}: reviewed {totals.get('reviewed', 0)}, kept {totals.get('kept', 0)}, "
            f"downgraded {totals.get('downgraded', 0)}, upgraded {totals.get('upgraded', 0)} "
            f"as of {when.isoformat()}."
        )


@tiers_app.command("recalculate")
def tiers_recalculate(
    program: Annotated[str, typer.Option(help="Program id.")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Make the moves (default: only show them).")
    ] = False,
    tier_set: Annotated[
        str | None, typer.Option("--tier-set", help="Tier set id (default: the main one).")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """After changing thresholds: show which members the current thresholds of a tier set
    would move, by from and to tier; with --apply, move them (recorded as 'recalculated')."""
    engine = _engine(database_url)
    principal = _principal_for_program(engine, program)
    try:
        report = tiers.recalculate_tiers(
            engine, principal, program, now=_parse_when(None), apply=apply, set_id=tier_set
        )
    except DomainError as exc:
        err.print(f"[red]{exc.code}: {exc.detail}[/red]")
        raise typer.Exit(2) from None
    table = Table(
        title=f"Tier moves in {report['tier_set']} ({'applied' if apply else 'not applied'})"
    )
    for column in ("from", "to", "members"):
        table.add_column(column)
    for move in report["changes"]:
        table.add_row(move["from"], move["to"], f"{move['members']:,}")
    console.print(table)
    console.print(
        f"{report['members_moving']:,} of {report['members']:,} members "
        + ("moved." if apply else "would move; run again with --apply to move them.")
    )


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="loyalty")
    sys.exit(0)
