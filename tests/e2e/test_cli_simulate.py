"""``loyalty simulate``: a candidate document replayed on history, compared with what is live."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from loyalty.application import programs
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.program_document import ProgramDocument
from loyalty.entrypoints.cli.main import app as cli

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def _history(tmp_path: Path) -> Path:
    rows = [
        {
            "type": "purchase",
            "id": "O1",
            "member": {"external_id": "A"},
            "occurred_at": "2026-03-07T10:00:00Z",
            "currency": "EUR",
            "total_minor": 3000,
            "lines": [
                {"brand": "Private", "unit_price_minor": 1000},
                {"brand": "Other", "unit_price_minor": 2000},
            ],
        },
        {
            "type": "purchase",
            "id": "O2",
            "member": {"external_id": "B"},
            "occurred_at": "2026-04-02T10:00:00Z",
            "currency": "EUR",
            "total_minor": 500,
            "lines": [{"brand": "Private", "unit_price_minor": 500}],
        },
        {"type": "return", "id": "R1", "order_id": "O1", "occurred_at": "2026-04-03T10:00:00Z"},
        {
            "type": "purchase",
            "id": "O3",
            "member": {"external_id": "B"},
            "occurred_at": "2026-04-04T10:00:00Z",
            "currency": "USD",
            "total_minor": 500,
        },
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n", encoding="utf-8")
    return path


def test_simulate_reports_a_candidate_and_its_difference_from_the_published_version(
    engine, tmp_path
):
    issued = create_api_key(
        engine, tenant_name="t", name="k", scopes=[Scope.ADMIN], program_id=None, now=NOW
    )
    principal = authenticate(engine, issued.token)
    live = ProgramDocument.model_validate({"name": "Live", "currency": "EUR"})
    program_id = programs.create_program(engine, principal, live, now=NOW).body["id"]
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        "name: Candidate\ncurrency: EUR\nrules:\n"
        "  - id: own-3x\n    name: 3x own brand\n    trigger: purchase\n"
        "    conditions: {include: {brands: [Private]}}\n"
        "    effect: {type: multiplier, factor_percent: 300}\n",
        encoding="utf-8",
    )
    url = engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--program",
            str(candidate),
            "--events",
            str(_history(tmp_path)),
            "--against",
            program_id,
            "--json",
            "--database-url",
            url,
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # O1: base 30 + own brand 10 x 2 more = 50; O2: base 5 + 10 = 15. The return and the USD
    # purchase are skipped; the unreadable row is counted apart.
    assert report["candidate"]["points_by_rule"] == {"base": 35, "own-3x": 30}
    assert report["candidate"]["points_by_month"] == {"2026-03": 50, "2026-04": 15}
    assert (report["candidate"]["skipped"], report["rejected_rows"]) == (2, 1)
    assert report["published"]["points"] == 35
    assert report["difference"] == {
        "points": 30,
        "cost_minor": 30,
        "points_by_rule": {"base": 0, "own-3x": 30},
        "points_by_month": {"2026-03": 20, "2026-04": 10},
    }
    # Nothing was written to the ledger.
    with engine.connect() as conn:
        from sqlalchemy import func, select

        from loyalty.adapters.db.tables import journal_entries

        assert conn.execute(select(func.count()).select_from(journal_entries)).scalar_one() == 0


def test_simulate_refuses_an_invalid_candidate_at_its_line(tmp_path):
    candidate = tmp_path / "bad.yaml"
    candidate.write_text(
        "name: Bad\ncurrency: EUR\npoints:\n  earn: {points: -1}\n", encoding="utf-8"
    )
    events = tmp_path / "e.jsonl"
    events.write_text("", encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["simulate", "--program", str(candidate), "--events", str(events)]
    )
    assert result.exit_code == 1
    assert "bad.yaml:4" in result.output


def _parquet_history(tmp_path: Path) -> Path:
    """Two baskets in the CSV layout, as Parquet with typed columns and a zone-less timestamp
    column (read as UTC)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        ("O1", "A", datetime(2026, 3, 7, 10), 3000, "Private", 1, 1000),
        ("O1", "A", datetime(2026, 3, 7, 10), 3000, "Other", 2, 1000),
        ("O2", "B", datetime(2026, 4, 30, 23, 30), 500, "Private", 1, 500),
    ]
    table = pa.table(
        {
            "type": ["purchase"] * len(rows),
            "id": [r[0] for r in rows],
            "member_external_id": [r[1] for r in rows],
            "occurred_at": pa.array([r[2] for r in rows], pa.timestamp("us")),
            "currency": ["EUR"] * len(rows),
            "total_minor": pa.array([r[3] for r in rows], pa.int64()),
            "brand": [r[4] for r in rows],
            "quantity": pa.array([r[5] for r in rows], pa.int32()),
            "unit_price_minor": pa.array([r[6] for r in rows], pa.int64()),
        }
    )
    path = tmp_path / "history.parquet"
    pq.write_table(table, path)
    return path


def test_simulate_reads_parquet_and_costs_points_at_the_programs_point_value(tmp_path):
    candidate = tmp_path / "candidate.yaml"
    # 200 points are worth 150 cents (0.75 cent a point).
    candidate.write_text(
        "name: Candidate\ncurrency: EUR\ntime_zone: Europe/Paris\n"
        "points:\n  value: {points: 200, money_minor: 150}\nrules:\n"
        "  - id: own-3x\n    name: 3x own brand\n    trigger: purchase\n"
        "    conditions: {include: {brands: [Private]}}\n"
        "    effect: {type: multiplier, factor_percent: 300}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--program",
            str(candidate),
            "--events",
            str(_parquet_history(tmp_path)),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["candidate"]
    # O1: base 30 + own brand 10 x 2 more = 50; O2: base 5 + 10 = 15, on 1 May in Paris.
    assert (report["purchases"], report["skipped"]) == (2, 0)
    assert report["points_by_rule"] == {"base": 35, "own-3x": 30}
    assert report["points_by_month"] == {"2026-03": 50, "2026-05": 15}
    assert report["point_value"] == {"points": 200, "money_minor": 150}
    # 65 points x 0.75 = 48.75 cents, rounded half to even: 49; per rule 26.25 and 22.5.
    assert report["cost_minor"] == 49
    assert report["cost_by_rule_minor"] == {"base": 26, "own-3x": 22}
    assert report["cost_by_month_minor"] == {"2026-03": 38, "2026-05": 11}
