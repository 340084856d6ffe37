"""``loyalty program``: schema, validate, diff and apply, driven in-process with Typer's runner.

Checking files needs no database; publishing runs against SQLite and PostgreSQL through the
``engine`` fixture. What the published examples earn is checked with real purchases recorded
through the application layer."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from loyalty.adapters.db.tables import programs
from loyalty.application import holds
from loyalty.application.access import Principal, Scope, expand_scopes
from loyalty.application.batch import record_events_batch
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.members import MemberProfile, enroll_member
from loyalty.domain.errors import PaymentNotAllowed
from loyalty.domain.ledger import CASH
from loyalty.entrypoints.cli.main import app
from loyalty.entrypoints.cli.program import document_diff, format_path, parse_path
from tests.e2e.test_api_support import shares

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
RUNNER = CliRunner()


def run(*args: str) -> Result:
    result = RUNNER.invoke(app, list(args), env={"COLUMNS": "200"}, color=False)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, fragment: str) -> int:
    """1-based number of the only line containing ``fragment``."""
    found = [n for n, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(found) == 1, found
    return found[0]


# --- schema and validate ---------------------------------------------------------------------


def test_schema_is_the_program_documents_json_schema():
    result = run("program", "schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["title"] == "ProgramDocument"
    assert {"name", "currency", "points", "rules"} <= set(schema["properties"])
    # Aliases, as documents spell them: an hours window is written `from`, not `from_`.
    assert set(schema["$defs"]["HoursDocument"]["properties"]) == {"from", "until"}


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_worked_example_is_valid(example):
    result = run("program", "validate", str(example))
    assert (result.exit_code, result.stdout) == (0, "valid\n")


def test_the_worked_examples_exist():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == [
        "cafe-two-ladders.yaml",
        "cafe.yaml",
        "cashback-grocer.yaml",
        "coffee-stamps.yaml",
        "fashion-tiers.yaml",
        "fashion.yaml",
        "grocer.yaml",
    ]


def test_a_broken_example_reports_the_path_line_and_column(tmp_path):
    text = (EXAMPLES / "cafe.yaml").read_text().replace("      points: 20", "      points: -20")
    broken = write(tmp_path, "cafe.yaml", text)
    result = run("program", "validate", str(broken))
    assert result.exit_code == 1
    line = line_of(text, "points: -20")
    assert result.stdout == (
        f"{broken}:{line}:7 rules[0].effect.points: Input should be greater than or equal to 0\n"
    )


DOCUMENT = """\
name: Corner Cafe
currency: EUR
points:
  earn:
    per_spend_minr: 100
rules:
  - id: early
    name: Early bird
    trigger: purchase
    conditions:
      days_of_week: [mon, tues]
      hours: {from: "08:00", until: 11:00}
    effect:
      type: multiplier
  - id: early
    name: Again
    trigger: purchase
    effect: {type: fixed, points: 5}
"""


def test_every_problem_is_reported_with_its_line_and_a_suggestion_for_unknown_fields(tmp_path):
    path = write(tmp_path, "cafe.yaml", DOCUMENT)
    result = run("program", "validate", str(path))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{path}:5:5 points.earn.per_spend_minr: unknown field 'per_spend_minr' "
        "(did you mean 'per_spend_minor'?)",
        f"{path}:11:27 rules[0].conditions.days_of_week[1]: "
        "Input should be 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'",
        f"{path}:13:5 rules[0].effect: a multiplier needs 'factor_percent' (200 doubles)",
    ]


def test_an_unquoted_time_is_a_time_not_a_base_60_number(tmp_path):
    # YAML 1.1 reads `11:00` as 660, which a time field would take as 00:11.
    path = write(
        tmp_path,
        "cafe.yaml",
        "name: Cafe\ncurrency: EUR\nrules:\n"
        "  - {id: m, name: M, trigger: purchase, conditions: {hours: {from: 08:00, until: 11:00}},"
        " effect: {type: fixed, points: 5}}\n",
    )
    result = run("program", "validate", str(path))
    assert (result.exit_code, result.stdout) == (0, "valid\n")


def test_a_field_without_a_close_match_lists_what_is_allowed(tmp_path):
    path = write(tmp_path, "p.yaml", "name: X\ncurrency: EUR\nenrollment:\n  auto: true\n")
    result = run("program", "validate", str(path))
    assert result.stdout == (
        f"{path}:4:3 enrollment.auto: unknown field 'auto' "
        "(expected one of: auto_enroll_on_purchase)\n"
    )


def test_a_missing_field_is_placed_at_the_section_that_lacks_it(tmp_path):
    path = write(
        tmp_path,
        "p.yaml",
        "name: X\ncurrency: EUR\nrules:\n  - id: r\n    trigger: purchase\n"
        "    effect: {type: fixed, points: 1}\n",
    )
    result = run("program", "validate", str(path))
    assert result.stdout == f"{path}:4:5 rules[0].name: Field required\n"


def test_json_documents_are_placed_too(tmp_path):
    text = (
        "{\n"
        '  "name": "Shop",\n'
        '  "currency": "euro",\n'
        '  "rules": [\n'
        '    {"id": "a", "name": "A", "trigger": "purchase",\n'
        '     "effect": {"type": "fixed", "points": 5}, "prority": 3}\n'
        "  ]\n"
        "}\n"
    )
    path = write(tmp_path, "shop.json", text)
    result = run("program", "validate", str(path))
    assert result.exit_code == 1
    column = text.splitlines()[5].index('"prority"') + 1
    assert result.stdout.splitlines() == [
        f"{path}:3:3 currency: String should match pattern '^[A-Z]{{3}}$'",
        f"{path}:6:{column} rules[0].prority: unknown field 'prority' (did you mean 'priority'?)",
    ]


def test_a_yaml_syntax_error_exits_2_with_its_line(tmp_path):
    path = write(tmp_path, "p.yaml", "name: X\ncurrency: EUR\nrules: [\n  {id: a\n")
    result = run("program", "validate", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"{path}:5:1: expected ',' or '}}', but got '<stream end>' "
        "(while parsing a flow mapping at line 4, column 3)\n"
    )


def test_a_json_syntax_error_exits_2_with_its_line(tmp_path):
    path = write(tmp_path, "p.json", '{"name": "X",\n "currency": }\n')
    result = run("program", "validate", str(path))
    assert (result.exit_code, result.stderr) == (2, f"{path}:2:14: Expecting value\n")


def test_a_key_given_twice_is_refused_rather_than_silently_overwritten(tmp_path):
    path = write(tmp_path, "p.yaml", "name: X\ncurrency: EUR\nname: Y\n")
    result = run("program", "validate", str(path))
    assert (result.exit_code, result.stderr) == (
        2,
        f"{path}:3:1: duplicate key 'name' (first at line 1)\n",
    )


def test_a_missing_file_or_unknown_extension_exits_2(tmp_path):
    missing = run("program", "validate", str(tmp_path / "nope.yaml"))
    assert (missing.exit_code, missing.stderr) == (
        2,
        f"{tmp_path / 'nope.yaml'}: No such file or directory\n",
    )
    text = write(tmp_path, "p.toml", "name = 'X'\n")
    other = run("program", "validate", str(text))
    assert (other.exit_code, other.stderr) == (
        2,
        f"{text}: expected a .yaml, .yml or .json file, not '.toml'\n",
    )


# --- apply and diff ------------------------------------------------------------------------


CREATED = re.compile(r"^created program (prg_[0-9A-Z]+) \(version 1\)\n$")


def apply_new(engine: Engine, example: Path, tenant: str = "acme") -> str:
    result = run(
        "program", "apply", str(example), "--tenant", tenant, "--database-url", url_of(engine)
    )
    assert result.exit_code == 0, result.output
    match = CREATED.match(result.stdout)
    assert match is not None, result.stdout
    return match.group(1)


def operator(engine: Engine, program_id: str) -> Principal:
    with engine.connect() as conn:
        tenant_id = conn.execute(
            select(programs.c.tenant_id).where(programs.c.id == program_id)
        ).scalar_one()
    return Principal(tenant_id, "test", expand_scopes([Scope.ADMIN]), None)


def purchase(
    engine: Engine, program_id: str, order_id: str, at: datetime, lines: list[dict[str, Any]]
) -> dict[str, Any]:
    event = PurchaseEvent.model_validate(
        {
            "type": "purchase",
            "id": order_id,
            "member": {"external_id": "C1"},
            "occurred_at": at.isoformat(),
            "currency": "EUR",
            "total_minor": sum(li.get("quantity", 1) * li["unit_price_minor"] for li in lines),
            "lines": lines,
        }
    )
    [item] = record_events_batch(engine, operator(engine, program_id), program_id, [event], now=at)
    assert item.accepted, item.body
    return item.body


def by_line(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {line["line_id"]: line["rules"] for line in body["lines"]}


def test_the_grocer_earns_double_on_its_own_brand_and_nothing_on_gift_cards(engine):
    program = apply_new(engine, EXAMPLES / "grocer.yaml")
    body = purchase(
        engine,
        program,
        "G-1",
        datetime(2026, 3, 4, 10, tzinfo=UTC),
        [
            {"line_id": "milk", "brand": "Private", "quantity": 4, "unit_price_minor": 250},
            {"line_id": "bread", "brand": "Bakkerij", "unit_price_minor": 299},
            {"line_id": "card", "category": "gift-cards", "unit_price_minor": 5000},
        ],
    )
    # spend: 12.99 EUR x 2 = 25.98 -> 26 (milk 20, bread 6); 2x on Private: +20 on milk;
    # the 62.99 EUR total reaches the EUR 50 basket bonus (25, spread by base: 19 and 6) but
    # not the EUR 100 one. The gift card earns nothing.
    assert body["points_earned"] == 71
    assert shares(body["rules"]) == [
        {"rule": "spend", "points": 26},
        {"rule": "basket-50", "points": 25},
        {"rule": "private-label-2x", "points": 20},
    ]
    assert by_line(body) == {
        "milk": [
            {"rule": "spend", "points": 20},
            {"rule": "basket-50", "points": 19},
            {"rule": "private-label-2x", "points": 20},
        ],
        "bread": [{"rule": "spend", "points": 6}, {"rule": "basket-50", "points": 6}],
        "card": [],
    }
    # Only the larger basket bonus of the exclusive group pays.
    big = purchase(
        engine,
        program,
        "G-2",
        datetime(2026, 3, 5, 10, tzinfo=UTC),
        [{"line_id": "wine", "brand": "Chateau", "unit_price_minor": 12000}],
    )
    assert shares(big["rules"]) == [
        {"rule": "spend", "points": 240},
        {"rule": "basket-100", "points": 75},
    ]


def test_the_fashion_weekend_and_black_friday_boosts_do_not_stack(engine):
    program = apply_new(engine, EXAMPLES / "fashion.yaml")
    enroll_member(
        engine,
        operator(engine, program),
        program,
        external_id="C1",
        profile=MemberProfile(),
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    coat = [{"line_id": "coat", "unit_price_minor": 10000}]
    # Wednesday; a Saturday; Black Friday itself; the Saturday after it (both boosts apply,
    # only the larger pays); 23:30 on Cyber Monday in Paris, the campaign's last half hour.
    wednesday = purchase(engine, program, "F-1", datetime(2026, 11, 18, 12, tzinfo=UTC), coat)
    saturday = purchase(engine, program, "F-2", datetime(2026, 11, 21, 12, tzinfo=UTC), coat)
    friday = purchase(engine, program, "F-3", datetime(2026, 11, 27, 12, tzinfo=UTC), coat)
    bf_saturday = purchase(engine, program, "F-4", datetime(2026, 11, 28, 12, tzinfo=UTC), coat)
    last = purchase(engine, program, "F-5", datetime(2026, 11, 30, 22, 30, tzinfo=UTC), coat)
    after = purchase(engine, program, "F-6", datetime(2026, 11, 30, 23, 0, tzinfo=UTC), coat)
    assert [
        b["points_earned"] for b in (wednesday, saturday, friday, bf_saturday, last, after)
    ] == [100, 200, 300, 300, 300, 100]
    assert shares(bf_saturday["rules"]) == [
        {"rule": "base", "points": 100},
        {"rule": "black-friday", "points": 200},
    ]


def test_the_cafe_morning_bonus_follows_paris_time(engine):
    program = apply_new(engine, EXAMPLES / "cafe.yaml")
    coffee = [{"line_id": "1", "unit_price_minor": 490}]
    # 09:30 UTC in January is 10:30 in Paris: inside [08:00, 11:00). 10:00 UTC is 11:00.
    inside = purchase(engine, program, "C-1", datetime(2026, 1, 7, 9, 30, tzinfo=UTC), coffee)
    outside = purchase(engine, program, "C-2", datetime(2026, 1, 7, 10, 0, tzinfo=UTC), coffee)
    assert shares(inside["rules"]) == [
        {"rule": "base", "points": 4},
        {"rule": "morning", "points": 4},
    ]
    assert shares(outside["rules"]) == [{"rule": "base", "points": 4}]


def test_apply_again_diff_and_publish_a_change(engine, tmp_path):
    url = url_of(engine)
    example = EXAMPLES / "grocer.yaml"
    program = apply_new(engine, example)

    again = run("program", "apply", str(example), "--program", program, "--database-url", url)
    assert (again.exit_code, again.stdout) == (0, "no changes (version 1)\n")
    same = run("program", "diff", str(example), "--program", program, "--database-url", url)
    assert (same.exit_code, same.stdout) == (0, "no changes\n")

    changed = write(
        tmp_path,
        "grocer.yaml",
        example.read_text().replace("factor_percent: 200", "factor_percent: 300"),
    )
    diff = run("program", "diff", str(changed), "--program", program, "--database-url", url)
    assert diff.exit_code == 1
    lines = diff.stdout.splitlines()
    assert lines[:2] == [f"--- {program} (version 1)", f"+++ {changed}"]
    # The hunk header names the changed field: with sorted keys the rule's id may be far off.
    assert re.fullmatch(r"@@ -\d+,7 \+\d+,7 @@ rules\[1\]\.effect\.factor_percent", lines[2])
    assert [li for li in lines[2:] if li[:1] in "+-"] == [
        "-    factor_percent: 200",
        "+    factor_percent: 300",
    ]

    published = run(
        "program", "apply", str(changed), "--program", program, "--expect-version", "1",
        "--database-url", url,
    )  # fmt: skip
    assert (published.exit_code, published.stdout) == (0, "published version 2\n")
    stale = run(
        "program", "apply", str(example), "--program", program, "--expect-version", "1",
        "--database-url", url,
    )  # fmt: skip
    assert stale.exit_code == 1
    assert stale.stderr == (
        "program_version_conflict: The program is at version 2, not 1; reload it and retry.\n"
    )
    after = run("program", "diff", str(changed), "--program", program, "--database-url", url)
    assert (after.exit_code, after.stdout) == (0, "no changes\n")


def test_apply_refuses_an_invalid_document_and_a_domain_error(engine, tmp_path):
    url = url_of(engine)
    program = apply_new(engine, EXAMPLES / "cafe.yaml")
    invalid = write(tmp_path, "p.yaml", "name: X\ncurrency: EUR\ntime_zone: Mars/Base\n")
    result = run("program", "apply", str(invalid), "--program", program, "--database-url", url)
    assert (result.exit_code, result.stderr) == (
        1,
        f"{invalid}:3:1 time_zone: unknown time zone 'Mars/Base'\n",
    )
    dollars = write(
        tmp_path, "usd.yaml", (EXAMPLES / "cafe.yaml").read_text().replace("EUR", "USD")
    )
    result = run("program", "apply", str(dollars), "--program", program, "--database-url", url)
    # The engine's refusal names the field; the command places it in the file.
    assert (result.exit_code, result.stderr.splitlines()) == (
        1,
        [
            "invalid_program_document: A program's currency cannot change.",
            f"{dollars}:{line_of(dollars.read_text(), 'currency: USD')}:1 currency: must stay EUR",
        ],
    )


def test_apply_needs_a_program_or_a_tenant(engine):
    url = url_of(engine)
    cafe = str(EXAMPLES / "cafe.yaml")
    neither = run("program", "apply", cafe, "--database-url", url)
    assert (neither.exit_code, neither.stderr) == (
        2,
        "give --program to publish a new version, or --tenant to create\n",
    )
    version = run("program", "apply", cafe, "--tenant", "acme", "--expect-version", "1")
    assert (version.exit_code, version.stderr) == (2, "--expect-version needs --program\n")
    unknown = run("program", "apply", cafe, "--program", "prg_nope", "--database-url", url)
    assert (unknown.exit_code, unknown.stderr) == (2, "program prg_nope does not exist\n")


def test_two_tenants_each_get_their_own_program(engine):
    first = apply_new(engine, EXAMPLES / "cafe.yaml", tenant="north")
    second = apply_new(engine, EXAMPLES / "cafe.yaml", tenant="south")
    again = apply_new(engine, EXAMPLES / "grocer.yaml", tenant="north")
    tenants = {p: operator(engine, p).tenant_id for p in (first, second, again)}
    assert tenants[first] == tenants[again] != tenants[second]


def test_a_diff_hunk_is_named_by_its_first_change_on_either_side():
    published = "name: X\nrules:\n- id: a\n  points: 1\n- id: b\n  points: 2\nz: 1\n"
    proposed = "name: X\nrules:\n- id: a\n  points: 1\nz: 2\n"
    assert document_diff(published, proposed, fromfile="old", tofile="new") == [
        "--- old",
        "+++ new",
        "@@ -2,6 +2,4 @@ rules[1].id",
        " rules:",
        " - id: a",
        "   points: 1",
        "-- id: b",
        "-  points: 2",
        "-z: 1",
        "+z: 2",
    ]


def test_a_path_reads_back_as_written():
    for parts in (["rules", 2, "effect", "points"], ["member_attributes", 'odd."key']):
        assert parse_path(format_path(parts)) == parts
    assert format_path([]) == "(document)"
    assert parse_path("rules.2.conditions.expression") == ["rules", 2, "conditions", "expression"]


def test_validate_checks_expressions_and_points_at_their_line(tmp_path):
    from typer.testing import CliRunner as _Runner

    from loyalty.entrypoints.cli.main import app as _app

    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: Bad\ncurrency: EUR\nrules:\n  - id: big\n    name: Big basket\n"
        '    trigger: purchase\n    conditions:\n      expression: "purchase.totl >= 5000"\n'
        "    effect: {type: fixed, points: 10}\n",
        encoding="utf-8",
    )
    result = _Runner().invoke(_app, ["program", "validate", str(path)])
    assert result.exit_code == 1
    assert (
        f"{path}:8:7 rules[0].conditions.expression: unknown field 'purchase.totl' "
        "(did you mean 'purchase.total_minor'?)"
    ) in result.output


def test_csv_import_reads_the_line_kind(engine, tmp_path):
    from datetime import UTC, datetime

    from typer.testing import CliRunner as _Runner

    from loyalty.application import balances, programs
    from loyalty.application.access import Scope, authenticate, create_api_key
    from loyalty.application.program_document import ProgramDocument
    from loyalty.entrypoints.cli.main import app as _app

    now = datetime(2026, 5, 1, tzinfo=UTC)
    issued = create_api_key(
        engine, tenant_name="t", name="k", scopes=[Scope.ADMIN], program_id=None, now=now
    )
    principal = authenticate(engine, issued.token)
    document = ProgramDocument.model_validate(
        {"name": "K", "currency": "EUR", "enrollment": {"auto_enroll_on_purchase": True}}
    )
    program_id = programs.create_program(engine, principal, document, now=now).body["id"]
    csv_file = tmp_path / "kinds.csv"
    csv_file.write_text(
        "type,id,member_external_id,occurred_at,currency,total_minor,line_id,kind,unit_price_minor\n"
        "purchase,O1,C1,2026-04-01T10:00:00Z,EUR,6000,1,product,1000\n"
        "purchase,O1,C1,2026-04-01T10:00:00Z,EUR,6000,2,gift_card,5000\n",
        encoding="utf-8",
    )
    url = engine.url.render_as_string(hide_password=False)
    result = _Runner().invoke(
        _app, ["events", "import", str(csv_file), "--program", program_id, "--database-url", url]
    )
    assert result.exit_code == 0, result.output
    view = balances.get_balance(engine, principal, program_id, "ext:C1", now=now)
    assert view["balance"] == 10


def test_the_coffee_card_pays_the_tenth_coffee_and_caps_stamps_at_two_a_day(engine):
    program = apply_new(engine, EXAMPLES / "coffee-stamps.yaml")
    coffee = {"line_id": "c", "category": "coffee", "unit_price_minor": 350}
    day = datetime(2026, 3, 2, 8, tzinfo=UTC)
    office = purchase(engine, program, "K-1", day, [{**coffee, "quantity": 5}])
    assert (office["points_earned"], office["stamps"][0]["stamps"]) == (0, 2)
    stamped = [office["stamps"][0]["stamps"]]
    for n in range(1, 8):
        body = purchase(engine, program, f"K-{n + 1}", day.replace(day=2 + n), [coffee])
        stamped.append(body["stamps"][0]["stamps"])
    # 2 + 7 = 9 stamps: the card is full on the eighth visit and pays 350 points at once.
    assert stamped == [2, 1, 1, 1, 1, 1, 1, 1]
    assert body["stamps"][0]["cards_completed"] == 1
    assert body["stamps"][0]["on_card"] == 0
    assert body["balance"]["balance"] == 350


def test_the_fashion_tiers_upgrade_on_spend_and_offer_the_best_discount(engine):
    program = apply_new(engine, EXAMPLES / "fashion-tiers.yaml")
    jacket = [{"line_id": "j", "category": "outerwear", "unit_price_minor": 60000}]
    first = purchase(engine, program, "A-1", datetime(2026, 3, 2, 10, tzinfo=UTC), jacket)
    # EUR 600 this year: Silver (EUR 500) from this purchase on; it earned at the Member rate.
    assert first["tier_change"] == {"from": "member", "to": "silver", "metric": 60000}
    assert first["points_earned"] == 600
    second = purchase(engine, program, "A-2", datetime(2026, 3, 9, 10, tzinfo=UTC), jacket)
    assert second["tier"] == "silver"
    assert second["points_earned"] == 600 + 150  # the Silver multiplier: +25%
    # Points wait out the 30-day return window, and expire at the end of Q1 2027 + 1 year.
    assert second["lot"]["available_at"] == "2026-04-08T10:00:00+00:00"
    assert second["lot"]["expires_at"] == "2027-03-31T22:00:00+00:00"


def test_the_cashback_grocer_pays_by_tier_waits_out_returns_and_caps_what_cashback_pays(engine):
    program = apply_new(engine, EXAMPLES / "cashback-grocer.yaml")
    day = datetime(2026, 3, 2, 10, tzinfo=UTC)
    basket = [
        {"line_id": "f", "category": "fresh", "unit_price_minor": 40_000},
        {"line_id": "t", "category": "tobacco", "unit_price_minor": 9_000},
    ]
    first = purchase(engine, program, "B-1", day, basket)
    # 2% of EUR 400 (tobacco earns none): EUR 8.00, spendable after 14 days, until the end
    # of 2027 (the year in which falls the day 365 days later, Berlin time).
    assert (first["cashback"]["earned_minor"], first["cashback"]["rate_bp"]) == (800, 200)
    assert first["cashback"]["lot"]["available_at"] == "2026-03-16T10:00:00+00:00"
    assert first["cashback"]["lot"]["expires_at"] == "2027-12-31T23:00:00+00:00"
    assert first["balance"]["cashback"]["pending_minor"] == 800
    big = [{"line_id": "f", "category": "fresh", "unit_price_minor": 70_000}]
    second = purchase(engine, program, "B-2", day.replace(day=3), big)
    # EUR 1,100 in 12 months: Plus from this purchase on, but it earned at the Member rate.
    assert second["tier_change"]["to"] == "plus"
    assert second["cashback"]["earned_minor"] == 1_400
    third = purchase(engine, program, "B-3", day.replace(day=4), big[:1])
    assert (third["cashback"]["rate_bp"], third["cashback"]["earned_minor"]) == (300, 2_100)
    later = day + timedelta(days=30)
    principal = operator(engine, program)
    # Cashback pays at most half an order: EUR 20 of a EUR 40 order.
    with pytest.raises(PaymentNotAllowed) as refused:
        holds.reserve(
            engine,
            principal,
            program,
            "ext:C1",
            points=2_001,
            order_reference="B-4",
            ttl_seconds=600,
            idempotency_key="h1",
            now=later,
            asset=CASH,
            order_total_minor=4_000,
        )
    assert refused.value.context == {"wallet": "cashback", "reason": "over_limit", "limit": 2_000}
    held = holds.reserve(
        engine,
        principal,
        program,
        "ext:C1",
        points=2_000,
        order_reference="B-4",
        ttl_seconds=600,
        idempotency_key="h2",
        now=later,
        asset=CASH,
        order_total_minor=4_000,
    )
    assert held.body["balance"]["cashback"]["available_minor"] == 800 + 1_400 + 2_100 - 2_000
