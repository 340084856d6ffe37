"""``loyalty simulate``: backtest a candidate program document on past events before it goes
live, and compare it with the published version."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from loyalty.application import programs
from loyalty.application.access import Principal
from loyalty.application.events import AnyEvent
from loyalty.application.program_document import ProgramDocument, settings_from_document
from loyalty.application.simulation import SimulationReport, compare, simulate
from loyalty.domain.errors import DomainError
from loyalty.entrypoints.cli.importing import read_events
from loyalty.entrypoints.cli.program import DatabaseUrl, _load

EngineFor = Callable[[str | None], Engine]
PrincipalFor = Callable[[Engine, str], Principal]


def _history(path: Path) -> tuple[list[AnyEvent], int]:
    events: list[AnyEvent] = []
    rejected = 0
    for row in read_events(path):
        if row.event is None:
            rejected += 1
        else:
            events.append(row.event)
    events.sort(key=lambda e: e.occurred_at)
    return events, rejected


def _table(title: str, rows: dict[str, Any], *, other: dict[str, Any] | None = None) -> Table:
    table = Table(title=title)
    table.add_column("")
    table.add_column("candidate", justify="right")
    if other is not None:
        table.add_column("published", justify="right")
        table.add_column("change", justify="right")
    for key in sorted(set(rows) | set(other or {})):
        new = rows.get(key, 0)
        if other is None:
            table.add_row(key, f"{new:,}")
        else:
            old = other.get(key, 0)
            table.add_row(key, f"{new:,}", f"{old:,}", f"{new - old:+,}")
    return table


def register(app: typer.Typer, engine_for: EngineFor, principal_for: PrincipalFor) -> None:
    @app.command("simulate")
    def simulate_command(
        program: Annotated[
            Path, typer.Option("--program", help="Candidate document (.yaml/.json).")
        ],
        events: Annotated[
            Path,
            typer.Option(
                "--events", exists=True, dir_okay=False, help="History: .csv, .parquet or .jsonl."
            ),
        ],
        against: Annotated[
            Optional[str],  # noqa: UP045 - Typer reads the annotation at runtime
            typer.Option("--against", help="Compare with this program's published version."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Replay past events against a candidate program document, without touching the
        ledger: points per rule and per month, members affected, caps and budgets hit, and the
        difference from the published version."""
        candidate, _ = _load(program, exit_invalid=1)
        started = time.perf_counter()
        history, rejected = _history(events)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        report = simulate(settings_from_document(candidate, version=0), history)
        replay_s = time.perf_counter() - started
        baseline: SimulationReport | None = None
        if against is not None:
            engine = engine_for(database_url)
            principal = principal_for(engine, against)
            try:
                published = programs.get_program(engine, principal, against)
            except DomainError as exc:
                typer.echo(f"{exc.code}: {exc.detail}", err=True)
                raise typer.Exit(1) from None
            current = ProgramDocument.model_validate(published["document"])
            baseline = simulate(
                settings_from_document(current, version=int(published["version"])), history
            )
        if as_json:
            out: dict[str, Any] = {"candidate": report.as_dict(), "rejected_rows": rejected}
            if baseline is not None:
                out["published"] = baseline.as_dict()
                out["difference"] = compare(report, baseline)
            typer.echo(json.dumps(out, indent=2))
            return
        console = Console()
        console.print(
            f"Replayed {report.events:,} events ({report.purchases:,} purchases, "
            f"{report.actions:,} actions, {report.returns:,} returns paid by rules, "
            f"{report.skipped:,} skipped, {rejected:,} unreadable)."
        )
        console.print(
            f"Read and checked the file in {read_s:.1f} s; replayed in {replay_s:.1f} s "
            f"({report.events / max(replay_s, 1e-9):,.0f} events/s)."
        )
        old = baseline.as_dict() if baseline else None
        new = report.as_dict()
        console.print(
            _table(
                "Points by rule",
                new["points_by_rule"],
                other=old["points_by_rule"] if old else None,
            )
        )
        console.print(
            _table(
                "Points by month",
                new["points_by_month"],
                other=old["points_by_month"] if old else None,
            )
        )
        console.print(
            f"Points: {report.points:,}"
            + (
                f" (published: {baseline.points:,}, {report.points - baseline.points:+,})"
                if baseline
                else ""
            )
            + f"; members earning: {len(report.members_earning):,}"
        )
        value = report.point_value
        cost = new["cost_minor"]
        console.print(
            f"Cost at {value.points:,} points = {value.money_minor:,} minor units of "
            f"{candidate.currency}: {cost:,}"
            + (f" (published: {old['cost_minor']:,}, {cost - old['cost_minor']:+,})" if old else "")
        )
        if report.caps_hit or report.budgets_exhausted:
            console.print(
                f"Caps hit: {dict(report.caps_hit)}; budgets exhausted: "
                f"{dict(report.budgets_exhausted)}"
            )
