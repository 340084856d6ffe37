"""POST /backtests: a candidate document replayed on the program's stored events."""

from __future__ import annotations

from sqlalchemy import func, select

from loyalty.adapters.db.tables import journal_entries
from loyalty.application.access import Scope, create_api_key
from tests.conftest import NOW

CANDIDATE = {
    "name": "Candidate",
    "currency": "EUR",
    "enrollment": {"auto_enroll_on_purchase": True},
    "rules": [
        {
            "id": "own-3x",
            "name": "3x own brand",
            "trigger": "purchase",
            "conditions": {"include": {"brands": ["Private"]}},
            "effect": {"type": "multiplier", "factor_percent": 300},
        },
        {
            "id": "vip",
            "name": "VIP bonus",
            "trigger": "purchase",
            "conditions": {"member_attributes": {"vip": True}},
            "effect": {"type": "fixed", "points": 7},
        },
    ],
}


def _entries(api):
    with api.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(journal_entries)).scalar_one()


def test_a_backtest_replays_stored_events_and_compares_with_the_published_version(api):
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    api.enroll(program, "VIP", attributes={"vip": True})
    api.purchase(
        program,
        "O1",
        "VIP",
        [
            {"brand": "Private", "unit_price_minor": 1000},
            {"brand": "Other", "unit_price_minor": 2000},
        ],
    )
    api.purchase(program, "O2", "C2", [{"brand": "Private", "unit_price_minor": 500}])
    before = _entries(api)
    r = api.request("POST", f"/v1/programs/{program}/backtests", json={"document": CANDIDATE})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["events"] == 2
    assert body["published"]["points_by_rule"] == {"base": 35}
    # O1: base 30 + own brand 10 x 2 more + VIP 7; O2: base 5 + 5 x 2 more.
    assert body["candidate"]["points_by_rule"] == {"base": 35, "own-3x": 30, "vip": 7}
    assert body["difference"]["points"] == 37
    assert body["candidate"]["members_earning"] == 2
    assert _entries(api) == before


def test_a_backtest_window_and_its_refusals(api):
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    api.purchase(program, "O1", "C1", [{"unit_price_minor": 1000}])
    empty = api.request(
        "POST",
        f"/v1/programs/{program}/backtests",
        json={"document": CANDIDATE, "until": "2000-01-01T00:00:00Z"},
    )
    assert empty.status_code == 200 and empty.json()["events"] == 0
    bad = {
        **CANDIDATE,
        "rules": [{**CANDIDATE["rules"][0], "conditions": {"expression": "purchase.totl > 1"}}],
    }
    r = api.request("POST", f"/v1/programs/{program}/backtests", json={"document": bad})
    assert r.status_code == 422 and r.json()["code"] == "invalid_program_document"
    other = create_api_key(
        api.engine, tenant_name="other", name="k", scopes=[Scope.ADMIN], program_id=None, now=NOW
    )
    r = api.request(
        "POST", f"/v1/programs/{program}/backtests", json={"document": CANDIDATE}, token=other.token
    )
    assert r.status_code == 404 and r.json()["code"] == "program_not_found"
