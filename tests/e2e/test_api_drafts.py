"""Drafts of a program's document over HTTP: saved and checked like a published document,
without effect on earning until published as the next version."""

from __future__ import annotations

import copy
from typing import Any

from loyalty.entrypoints.api import responses as bodies
from tests.e2e.test_api_support import assert_problem, error_fields, other_tenant_token

DOCUMENT: dict[str, Any] = {
    "name": "Coffee Club",
    "currency": "EUR",
    "points": {
        "earn": {"points": 1, "per_spend_minor": 100, "rounding": "floor"},
        "expiry": {"policy": "after_days", "days": 365},
    },
    "enrollment": {"auto_enroll_on_purchase": True},
}

BONUS_RULE = {
    "id": "big-basket",
    "name": "Big basket bonus",
    "trigger": "purchase",
    "conditions": {"expression": "purchase.total_minor >= 5000"},
    "effect": {"type": "fixed", "points": 100},
}

LINE = [{"sku": "A", "unit_price_minor": 1000}]


def _program(api: Any) -> str:
    r = api.request("POST", "/v1/programs", json=DOCUMENT)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _with(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    document.update(changes)
    return document


def _double_points() -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    document["points"]["earn"]["points"] = 2
    return document


def _draft(api: Any, program: str, document: dict[str, Any]) -> dict[str, Any]:
    r = api.request("POST", f"/v1/programs/{program}/drafts", json=document)
    assert r.status_code == 201, r.text
    return bodies.DraftOut.model_validate(r.json()).model_dump()


def _drafts(api: Any, program: str) -> list[dict[str, Any]]:
    r = api.request("GET", f"/v1/programs/{program}/drafts")
    assert r.status_code == 200, r.text
    return bodies.DraftList.model_validate(r.json()).model_dump()["items"]


def test_a_draft_is_validated_like_a_published_document_and_nothing_invalid_is_saved(api):
    program = _program(api)
    url = f"/v1/programs/{program}/drafts"

    document = copy.deepcopy(DOCUMENT)
    document["points"]["expiry"]["grace_days"] = 7
    document["points"]["earn"]["rounding"] = "bankers"
    body = assert_problem(api.request("POST", url, json=document), 422, "validation_error")
    assert sorted(error_fields(body)) == ["points.earn.rounding", "points.expiry.grace_days"]

    bad_cel = _with(rules=[{**BONUS_RULE, "conditions": {"expression": "purchase.totl >= 1"}}])
    body = assert_problem(api.request("POST", url, json=bad_cel), 422, "invalid_program_document")
    assert body["errors"][0]["field"] == "rules[0].conditions.expression"

    body = assert_problem(
        api.request("POST", url, json=_with(currency="GBP")), 422, "invalid_program_document"
    )
    assert body["errors"] == [{"field": "currency", "message": "must stay EUR"}]

    assert _drafts(api, program) == []


def test_a_draft_changes_nothing_until_it_is_published_as_the_next_version(api):
    program = _program(api)
    assert api.purchase(program, "O1", "C1", LINE).json()["points_earned"] == 10

    draft = _draft(api, program, _with(rules=[BONUS_RULE]) | {"points": _double_points()["points"]})
    assert draft["id"].startswith("drf_")
    assert draft["program_id"] == program
    assert draft["base_version"] == 1
    assert draft["created_by"] == api.token.partition(".")[0]
    assert (draft["published_version"], draft["published_at"]) == (None, None)
    assert draft["diff"] == ["points.earn.points", "rules"]
    # Normalized like a published document: defaults filled in, aliases used.
    assert draft["document"]["schema_version"] == 1
    assert draft["document"]["points"]["pending_days"] == 0
    assert draft["document"]["rules"][0]["id"] == "big-basket"

    earned = api.purchase(program, "O2", "C1", LINE).json()
    assert (earned["points_earned"], earned["program_version"]) == (10, 1)
    assert api.request("GET", f"/v1/programs/{program}").json()["version"] == 1

    r = api.request("POST", f"/v1/programs/{program}/drafts/{draft['id']}/publish")
    assert r.status_code == 200, r.text
    published = bodies.ProgramOut.model_validate(r.json())
    assert published.version == 2
    assert published.document == draft["document"]
    assert api.request("GET", f"/v1/programs/{program}").json()["version"] == 2

    earned = api.purchase(program, "O3", "C1", LINE).json()
    assert (earned["points_earned"], earned["program_version"]) == (20, 2)
    big = api.purchase(program, "O4", "C1", [{"sku": "B", "unit_price_minor": 5000}]).json()
    assert big["points_earned"] == 200

    r = api.request("GET", f"/v1/programs/{program}/drafts/{draft['id']}")
    assert r.status_code == 200, r.text
    after = bodies.DraftOut.model_validate(r.json()).model_dump()
    assert after["published_version"] == 2
    assert after["published_at"] is not None
    # The diff stays the one against the version it was based on.
    assert after["diff"] == draft["diff"]
    assert {k: v for k, v in after.items() if not k.startswith("published")} == {
        k: v for k, v in draft.items() if not k.startswith("published")
    }

    r = api.request("POST", f"/v1/programs/{program}/drafts/{draft['id']}/publish")
    body = assert_problem(r, 409, "draft_already_published")
    assert (body["draft_id"], body["published_version"]) == (draft["id"], 2)
    r = api.request("DELETE", f"/v1/programs/{program}/drafts/{draft['id']}")
    assert_problem(r, 409, "draft_already_published")
    assert api.request("GET", f"/v1/programs/{program}").json()["version"] == 2


def test_a_draft_based_on_an_older_version_is_not_published(api):
    program = _program(api)
    draft = _draft(api, program, _double_points())
    r = api.request("PUT", f"/v1/programs/{program}", json=_with(name="Renamed"))
    assert r.status_code == 200 and r.json()["version"] == 2, r.text

    r = api.request("POST", f"/v1/programs/{program}/drafts/{draft['id']}/publish")
    body = assert_problem(r, 409, "program_version_conflict")
    assert (body["expected_version"], body["current_version"]) == (1, 2)
    current = api.request("GET", f"/v1/programs/{program}").json()
    assert (current["version"], current["document"]["name"]) == (2, "Renamed")
    assert _drafts(api, program)[0]["published_version"] is None

    # A new draft on the current version goes through.
    fresh = _draft(api, program, _double_points() | {"name": "Renamed"})
    assert (fresh["base_version"], fresh["diff"]) == (2, ["points.earn.points"])
    r = api.request("POST", f"/v1/programs/{program}/drafts/{fresh['id']}/publish")
    assert r.status_code == 200 and r.json()["version"] == 3, r.text


def test_the_diff_lists_exactly_the_changed_paths(api):
    program = _program(api)
    same = _draft(api, program, DOCUMENT)
    assert same["diff"] == []

    document = copy.deepcopy(DOCUMENT)
    document["name"] = "Tea Club"
    document["time_zone"] = "UTC"  # the default: not a change
    document["points"]["earn"]["points"] = 3
    document["points"]["expiry"]["days"] = 30
    document["points"]["pending_days"] = 14
    document["enrollment"]["auto_enroll_on_purchase"] = False
    document["rules"] = [BONUS_RULE]
    changed = _draft(api, program, document)
    assert changed["diff"] == [
        "enrollment.auto_enroll_on_purchase",
        "name",
        "points.earn.points",
        "points.expiry.days",
        "points.pending_days",
        "rules",
    ]
    assert [d["id"] for d in _drafts(api, program)] == [changed["id"], same["id"]]

    # Publishing a draft equal to the current version adds no version (like a PUT of it).
    r = api.request("POST", f"/v1/programs/{program}/drafts/{same['id']}/publish")
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    r = api.request("GET", f"/v1/programs/{program}/drafts/{same['id']}")
    assert r.json()["published_version"] == 1


def test_an_unpublished_draft_can_be_deleted(api):
    program = _program(api)
    kept = _draft(api, program, _double_points())
    gone = _draft(api, program, _with(name="Gone"))
    url = f"/v1/programs/{program}/drafts/{gone['id']}"
    r = api.request("DELETE", url)
    assert r.status_code == 204 and r.content == b"", r.text
    assert_problem(api.request("GET", url), 404, "not_found")
    assert_problem(api.request("DELETE", url), 404, "not_found")
    assert_problem(api.request("POST", f"{url}/publish"), 404, "not_found")
    assert [d["id"] for d in _drafts(api, program)] == [kept["id"]]


def test_the_list_is_newest_first_and_capped_at_50(api):
    program = _program(api)
    ids = [_draft(api, program, _with(name=f"Draft {i}"))["id"] for i in range(51)]
    listed = [d["id"] for d in _drafts(api, program)]
    assert listed == list(reversed(ids))[:50]


def test_drafts_belong_to_their_program_and_tenant(api):
    program = _program(api)
    other_program = _program(api)
    draft = _draft(api, program, _double_points())
    base = f"/v1/programs/{program}/drafts"
    calls = [
        ("POST", base, {"json": _double_points()}),
        ("GET", base, {}),
        ("GET", f"{base}/{draft['id']}", {}),
        ("POST", f"{base}/{draft['id']}/publish", {}),
        ("DELETE", f"{base}/{draft['id']}", {}),
    ]
    stranger = other_tenant_token(api)
    for method, url, kwargs in calls:
        r = api.request(method, url, token=stranger, **kwargs)
        assert_problem(r, 404, "program_not_found")

    # A draft is only reachable under its own program.
    r = api.request("GET", f"/v1/programs/{other_program}/drafts/{draft['id']}")
    assert_problem(r, 404, "not_found")

    def key(scopes: list[str], program_id: str) -> str:
        r = api.request(
            "POST",
            "/v1/api-keys",
            json={"name": "limited", "scopes": scopes, "program_id": program_id},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    # A key limited to another program sees this one as absent, like another tenant's.
    elsewhere = key(["admin"], other_program)
    for method, url, kwargs in calls:
        r = api.request(method, url, token=elsewhere, **kwargs)
        assert_problem(r, 404, "program_not_found")
    reader = key(["read"], program)
    assert_problem(api.request("GET", base, token=reader), 403, "forbidden")

    own = key(["admin"], program)
    r = api.request("GET", base, token=own)
    assert [d["id"] for d in r.json()["items"]] == [draft["id"]]
    r = api.request("POST", f"{base}/{draft['id']}/publish", token=own)
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    assert api.request("GET", f"/v1/programs/{program}").json()["version"] == 2
