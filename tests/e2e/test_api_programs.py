"""Programs over HTTP: create, read, list, versioned updates, and what the ledger records."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from tests.e2e.test_api_support import assert_problem, error_fields, ledger

DOCUMENT: dict[str, Any] = {
    "name": "Coffee Club",
    "currency": "EUR",
    "time_zone": "Europe/Paris",
    "points": {
        "earn": {"points": 1, "per_spend_minor": 100, "rounding": "floor"},
        "expiry": {"policy": "after_days", "days": 365},
        "negative_balance": "take_available",
    },
    "enrollment": {"auto_enroll_on_purchase": True},
}

CHECKOUT_DEFAULTS = {
    "min_order_minor": 0,
    "points": {"enabled": True, "min_points": 0, "max_points": None, "max_share_percent": 100},
    "cashback": {"enabled": True, "min_minor": 0, "max_minor": None, "max_share_percent": 100},
}
NORMALISED = {
    "schema_version": 1,
    **DOCUMENT,
    "points": {
        **DOCUMENT["points"],
        "expiry": {**DOCUMENT["points"]["expiry"], "period": None},
        "pending_days": 0,
        "value": {"points": 100, "money_minor": 100},
    },
    "rules": [],
    "tiers": None,
    "tier_sets": [],
    "stamp_cards": [],
    "discounts": None,
    "plans": [],
    "rewards": [],
    "segments": [],
    "transfers": {"enabled": False, "max_points_per_transfer": None, "max_points_per_month": None},
    "cashback": None,
    "checkout": CHECKOUT_DEFAULTS,
}


def _create(api: Any, document: dict[str, Any]) -> dict[str, Any]:
    r = api.request("POST", "/v1/programs", json=document)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_create_read_and_list(api):
    created = _create(api, DOCUMENT)
    assert created["id"].startswith("prg_")
    assert created["version"] == 1
    assert created["document"] == NORMALISED
    assert created["created_at"] == created["updated_at"]

    r = api.request("GET", f"/v1/programs/{created['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == {**created, "current_version": 1}

    second = _create(api, {"name": "Second", "currency": "GBP"})
    r = api.request("GET", "/v1/programs")
    assert r.status_code == 200, r.text
    assert [(i["id"], i["name"], i["version"]) for i in r.json()["items"]] == sorted(
        [(created["id"], "Coffee Club", 1), (second["id"], "Second", 1)]
    )

    r = api.request("GET", "/v1/programs/prg_DOESNOTEXIST")
    assert assert_problem(r, 404, "program_not_found")["program_id"] == "prg_DOESNOTEXIST"


def test_create_fills_documented_defaults(api):
    body = _create(api, {"name": "Minimal", "currency": "USD"})
    assert body["document"] == {
        "schema_version": 1,
        "name": "Minimal",
        "currency": "USD",
        "time_zone": "UTC",
        "points": {
            "earn": {"points": 1, "per_spend_minor": 100, "rounding": "floor"},
            "expiry": {"policy": "never", "days": None, "period": None},
            "pending_days": 0,
            "value": {"points": 100, "money_minor": 100},
            "negative_balance": "allow_debt",
        },
        "enrollment": {"auto_enroll_on_purchase": False},
        "rules": [],
        "tiers": None,
        "tier_sets": [],
        "stamp_cards": [],
        "discounts": None,
        "plans": [],
        "rewards": [],
        "segments": [],
        "transfers": {
            "enabled": False,
            "max_points_per_transfer": None,
            "max_points_per_month": None,
        },
        "cashback": None,
        "checkout": CHECKOUT_DEFAULTS,
    }
    # Replaying a create with the same Idempotency-Key returns the same program.
    key = {"Idempotency-Key": "create-1"}
    first = api.request("POST", "/v1/programs", json=DOCUMENT, headers=key)
    again = api.request("POST", "/v1/programs", json=DOCUMENT, headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert len(api.request("GET", "/v1/programs").json()["items"]) == 2


def test_update_publishes_version_2_and_keeps_version_1_readable(api):
    program = _create(api, DOCUMENT)["id"]
    changed = copy.deepcopy(DOCUMENT)
    changed["name"] = "Coffee Club Plus"
    changed["points"]["earn"]["points"] = 3

    r = api.request("PUT", f"/v1/programs/{program}", json=changed)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    assert r.json()["document"] == {
        "schema_version": 1,
        **changed,
        "points": {
            **changed["points"],
            "expiry": {**changed["points"]["expiry"], "period": None},
            "pending_days": 0,
            "value": {"points": 100, "money_minor": 100},
        },
        "rules": [],
        "tiers": None,
        "tier_sets": [],
        "stamp_cards": [],
        "discounts": None,
        "plans": [],
        "rewards": [],
        "segments": [],
        "transfers": {
            "enabled": False,
            "max_points_per_transfer": None,
            "max_points_per_month": None,
        },
        "cashback": None,
        "checkout": CHECKOUT_DEFAULTS,
    }

    current = api.request("GET", f"/v1/programs/{program}").json()
    assert current["version"] == 2
    assert current["current_version"] == 2
    assert current["document"]["points"]["earn"]["points"] == 3

    old = api.request("GET", f"/v1/programs/{program}/versions/1")
    assert old.status_code == 200, old.text
    assert old.json()["version"] == 1
    assert old.json()["current_version"] == 2
    assert old.json()["document"] == NORMALISED

    v2 = api.request("GET", f"/v1/programs/{program}/versions/2").json()
    assert v2["document"] == current["document"]

    listed = api.request("GET", "/v1/programs").json()["items"]
    assert [(i["name"], i["version"]) for i in listed] == [("Coffee Club Plus", 2)]

    missing = api.request("GET", f"/v1/programs/{program}/versions/3")
    assert_problem(missing, 404, "program_not_found")


def test_resubmitting_the_current_document_does_not_make_a_version(api):
    program = _create(api, DOCUMENT)["id"]
    r = api.request("PUT", f"/v1/programs/{program}", json=DOCUMENT)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert api.request("GET", f"/v1/programs/{program}").json()["current_version"] == 1
    assert_problem(
        api.request("GET", f"/v1/programs/{program}/versions/2"), 404, "program_not_found"
    )


def test_if_match_on_a_stale_version_is_a_conflict(api):
    program = _create(api, DOCUMENT)["id"]
    v2 = {**DOCUMENT, "name": "v2"}
    v3 = {**DOCUMENT, "name": "v3"}

    r = api.request("PUT", f"/v1/programs/{program}", json=v2, headers={"If-Match": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2

    stale = api.request("PUT", f"/v1/programs/{program}", json=v3, headers={"If-Match": "1"})
    body = assert_problem(stale, 409, "program_version_conflict")
    assert body["expected_version"] == 1
    assert body["current_version"] == 2
    current = api.request("GET", f"/v1/programs/{program}").json()
    assert (current["version"], current["document"]["name"]) == (2, "v2")

    # An ETag-style quoted version is accepted too.
    r = api.request("PUT", f"/v1/programs/{program}", json=v3, headers={"If-Match": '"2"'})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 3

    r = api.request("PUT", f"/v1/programs/{program}", json=v2, headers={"If-Match": "*x"})
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["If-Match"]
    assert api.request("GET", f"/v1/programs/{program}").json()["version"] == 3


def test_currency_cannot_change(api):
    program = _create(api, DOCUMENT)["id"]
    r = api.request("PUT", f"/v1/programs/{program}", json={**DOCUMENT, "currency": "USD"})
    body = assert_problem(r, 422, "invalid_program_document")
    assert [e["field"] for e in body["errors"]] == ["currency"]
    current = api.request("GET", f"/v1/programs/{program}").json()
    assert current["version"] == 1
    assert current["document"]["currency"] == "EUR"


def test_unknown_document_fields_are_all_listed(api):
    document = copy.deepcopy(DOCUMENT)
    document["colour"] = "blue"
    document["points"]["earn"]["bonus"] = 5
    document["points"]["tiers"] = []
    document["enrollment"]["welcome_points"] = 100
    r = api.request("POST", "/v1/programs", json=document)
    body = assert_problem(r, 422, "validation_error")
    assert sorted(error_fields(body)) == [
        "colour",
        "enrollment.welcome_points",
        "points.earn.bonus",
        "points.tiers",
    ]
    assert {e["type"] for e in body["errors"]} == {"extra_forbidden"}
    assert body["detail"] == "4 field(s) are invalid."
    assert api.request("GET", "/v1/programs").json()["items"] == []

    program = _create(api, DOCUMENT)["id"]
    document = copy.deepcopy(DOCUMENT)
    document["points"]["expiry"]["grace_days"] = 7
    r = api.request("PUT", f"/v1/programs/{program}", json=document)
    body = assert_problem(r, 422, "validation_error")
    assert error_fields(body) == ["points.expiry.grace_days"]
    assert api.request("GET", f"/v1/programs/{program}").json()["version"] == 1


def test_invalid_document_values_are_refused(api):
    document = copy.deepcopy(DOCUMENT)
    document["time_zone"] = "Mars/Olympus_Mons"
    document["points"]["earn"]["rounding"] = "bankers"
    document["points"]["earn"]["per_spend_minor"] = 0
    document["currency"] = "eur"
    r = api.request("POST", "/v1/programs", json=document)
    body = assert_problem(r, 422, "validation_error")
    assert sorted(error_fields(body)) == [
        "currency",
        "points.earn.per_spend_minor",
        "points.earn.rounding",
        "time_zone",
    ]
    document = copy.deepcopy(DOCUMENT)
    document["points"]["expiry"] = {"policy": "after_days"}
    r = api.request("POST", "/v1/programs", json=document)
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["points.expiry"]
    document["points"]["expiry"] = {"policy": "never", "days": 30}
    r = api.request("POST", "/v1/programs", json=document)
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["points.expiry"]
    assert api.request("GET", "/v1/programs").json()["items"] == []


def test_every_ledger_entry_records_its_program_version(api):
    program = _create(api, {"name": "P", "currency": "EUR"})["id"]
    api.enroll(program, "C1")
    first = api.purchase(program, "O1", "C1", [{"sku": "A", "unit_price_minor": 1000}])
    assert first.status_code == 201, first.text
    assert (first.json()["points_earned"], first.json()["program_version"]) == (10, 1)

    r = api.request(
        "PUT",
        f"/v1/programs/{program}",
        json={"name": "P", "currency": "EUR", "points": {"earn": {"points": 2}}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2

    second = api.purchase(program, "O2", "C1", [{"sku": "A", "unit_price_minor": 1000}])
    assert second.status_code == 201, second.text
    assert (second.json()["points_earned"], second.json()["program_version"]) == (20, 2)

    # A return is priced by what the purchase recorded (10 points at version 1's rate), and
    # its entry records the version current when it was written.
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        json={
            "type": "return",
            "id": "R1",
            "order_id": "O1",
            "occurred_at": datetime.now(UTC).isoformat(),
        },
    )
    assert r.status_code == 201, r.text
    assert (r.json()["points_reversed"], r.json()["program_version"]) == (10, 2)

    entries = ledger(api, program, "ext:C1")
    assert [(e["source"]["id"], e["points"], e["program_version"]) for e in entries] == [
        ("R1", -10, 2),
        ("O2", 20, 2),
        ("O1", 10, 1),
    ]
    assert entries[1]["details"]["rate"] == {
        "points": 2,
        "per_spend_minor": 100,
        "rounding": "floor",
    }
    assert entries[2]["details"]["rate"] == {
        "points": 1,
        "per_spend_minor": 100,
        "rounding": "floor",
    }
    assert api.balance(program, "ext:C1")["balance"] == 20
