"""Error format, request limits, routing errors and the API description."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tests.e2e.test_api_support import (
    adjust,
    assert_problem,
    error_fields,
    ledger,
    post_event,
    purchase_body,
    redeem,
)

MIB = 1_048_576


def _member(api: Any) -> str:
    program = api.create_program()
    api.enroll(program, "C1")
    return program


def _event_of_size(size: int) -> bytes:
    """A valid purchase event of exactly ``size`` bytes, padded inside its ``store`` string."""
    body = purchase_body("O-big", "C1", [{"unit_price_minor": 100}])
    body["store"] = "S1"
    raw = json.dumps(body).encode()
    padded = raw.replace(b'"S1"', b'"S1' + b" " * (size - len(raw)) + b'"')
    assert len(padded) == size
    return padded


def test_every_error_is_a_problem_document(api):
    program = _member(api)
    cases = [
        (api.client.get("/v1/programs"), 401, "unauthenticated"),
        (api.request("GET", "/v1/programs/prg_nope"), 404, "program_not_found"),
        (api.request("GET", f"/v1/programs/{program}/members/ext:x"), 404, "member_not_found"),
        (api.request("POST", "/v1/programs", json={"name": "x"}), 422, "validation_error"),
        (redeem(api, program, "ext:C1", 5), 422, "insufficient_points"),
        (
            api.request(
                "POST", f"/v1/programs/{program}/members/ext:C1/redemptions", json={"points": 1}
            ),
            400,
            "idempotency_key_required",
        ),
        (api.request("GET", "/v1/nowhere"), 404, "not_found"),
        (api.request("DELETE", "/v1/programs"), 405, "method_not_allowed"),
    ]
    for r, status, code in cases:
        body = assert_problem(r, status, code)
        assert set(body) >= {"type", "title", "status", "detail", "code"}


def test_body_over_one_mebibyte_is_413(api):
    program = _member(api)
    raw = _event_of_size(MIB + 1)
    assert len(raw) == MIB + 1
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    body = assert_problem(r, 413, "payload_too_large")
    assert body["max_bytes"] == MIB
    assert api.balance(program, "ext:C1")["balance"] == 0


def test_body_of_exactly_one_mebibyte_is_read(api):
    program = _member(api)
    raw = _event_of_size(MIB)
    assert len(raw) == MIB
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    # Read and validated: the padded store name is longer than 64 characters.
    body = assert_problem(r, 422, "validation_error")
    assert error_fields(body) == ["purchase.store"]


def test_chunked_body_over_one_mebibyte_is_413(api):
    program = _member(api)
    raw = _event_of_size(MIB + 1)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 64 * 1024):
            yield raw[start : start + 64 * 1024]

    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert "content-length" not in {k.lower() for k in r.request.headers}
    body = assert_problem(r, 413, "payload_too_large")
    assert body["max_bytes"] == MIB
    assert api.balance(program, "ext:C1")["balance"] == 0


def test_small_chunked_body_is_read_and_a_large_declared_length_is_not(api):
    program = _member(api)
    raw = json.dumps(purchase_body("O1", "C1", [{"unit_price_minor": 1234}])).encode()
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        content=iter([raw[:20], raw[20:]]),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["points_earned"] == 12

    # A Content-Length over the limit is refused before anything is read.
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        content=b"{}",
        headers={"Content-Type": "application/json", "Content-Length": str(MIB + 1)},
    )
    assert_problem(r, 413, "payload_too_large")


def test_500_lines_are_accepted_and_501_refused(api):
    program = _member(api)
    lines = [{"sku": f"S{i}", "unit_price_minor": 100} for i in range(500)]
    r = api.purchase(program, "O1", "C1", lines)
    assert r.status_code == 201, r.text
    assert r.json()["points_earned"] == 500
    assert len(r.json()["lines"]) == 500

    r = api.purchase(program, "O2", "C1", [*lines, {"sku": "S500", "unit_price_minor": 100}])
    body = assert_problem(r, 422, "validation_error")
    assert error_fields(body) == ["purchase.lines"]
    assert api.balance(program, "ext:C1")["balance"] == 500


def test_amounts_above_their_maximum_are_refused(api):
    program = _member(api)
    cases = [
        ({"quantity": 100_001, "unit_price_minor": 1}, "purchase.lines[0].quantity"),
        ({"quantity": 0, "unit_price_minor": 1}, "purchase.lines[0].quantity"),
        ({"unit_price_minor": 10**13 + 1}, "purchase.lines[0].unit_price_minor"),
        ({"unit_price_minor": -1}, "purchase.lines[0].unit_price_minor"),
        ({"quantity": 2, "unit_price_minor": 10**13 // 2 + 1}, "purchase.lines[0]"),
    ]
    for n, (line, field) in enumerate(cases):
        body = purchase_body(f"O{n}", "C1", [line])
        body["total_minor"] = 1
        r = post_event(api, program, body)
        assert error_fields(assert_problem(r, 422, "validation_error")) == [field], line

    body = purchase_body("OT", "C1", [])
    body["total_minor"] = 10**13 + 1
    r = post_event(api, program, body)
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["purchase.total_minor"]

    two_halves = [{"unit_price_minor": 10**13 // 2 + 1}] * 2
    body = purchase_body("OS", "C1", two_halves)
    body["total_minor"] = 1
    r = post_event(api, program, body)
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["purchase"]

    r = post_event(
        api, program, purchase_body("OX", "C1", [{"unit_price_minor": 100}], channel="x" * 65)
    )
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["purchase.channel"]
    assert ledger(api, program, "ext:C1") == []


def test_the_largest_purchase_is_exact(api):
    program = _member(api)
    r = api.purchase(program, "O1", "C1", [{"quantity": 1, "unit_price_minor": 10**13}])
    assert r.status_code == 201, r.text
    assert r.json()["points_earned"] == 10**11
    assert api.balance(program, "ext:C1")["balance"] == 10**11
    r = redeem(api, program, "ext:C1", 10**11 - 1)
    assert r.status_code == 201, r.text
    assert r.json()["balance"]["balance"] == 1


def test_points_above_their_maximum_are_refused(api):
    program = _member(api)
    for r in (
        redeem(api, program, "ext:C1", 10**12 + 1),
        redeem(api, program, "ext:C1", 0),
        redeem(api, program, "ext:C1", -5),
        adjust(api, program, "ext:C1", 10**12 + 1),
        adjust(api, program, "ext:C1", -(10**12) - 1),
        adjust(api, program, "ext:C1", 0),
    ):
        assert error_fields(assert_problem(r, 422, "validation_error")) == ["points"]
    r = adjust(api, program, "ext:C1", 1, reason="x" * 501)
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["reason"]
    r = api.request(
        "POST",
        f"/v1/programs/{program}/members/ext:C1/redemptions",
        json={"points": 1},
        headers={"Idempotency-Key": "k" * 256},
    )
    assert_problem(r, 422, "validation_error")
    assert ledger(api, program, "ext:C1") == []


def test_unknown_route_is_404_and_wrong_method_is_405(api):
    for url in ("/v1/nowhere", "/v2/programs", "/v1/programs/p/unknown-thing"):
        body = assert_problem(api.request("GET", url), 404, "not_found")
        assert body["instance"] == url
    program = api.create_program()
    for method, url in (
        ("DELETE", "/v1/programs"),
        ("PATCH", f"/v1/programs/{program}"),
        ("GET", f"/v1/programs/{program}/events"),
        ("PUT", "/v1/api-keys"),
    ):
        assert_problem(api.request(method, url), 405, "method_not_allowed")


def test_405_names_the_allowed_methods(api):
    """RFC 9110 section 15.5.6: a 405 response MUST carry an Allow header."""
    r = api.request("DELETE", "/v1/programs")
    assert_problem(r, 405, "method_not_allowed")
    assert sorted(m.strip() for m in r.headers["Allow"].split(",")) == ["GET", "POST"]


def test_malformed_json_is_422_validation_error(api):
    program = _member(api)
    for raw in (b'{"type": "purchase", ', b"not json", b"", b"[1, 2"):
        r = api.request(
            "POST",
            f"/v1/programs/{program}/events",
            content=raw,
            headers={"Content-Type": "application/json"},
        )
        body = assert_problem(r, 422, "validation_error")
        assert len(body["errors"]) == 1, body
    r = api.request(
        "POST",
        "/v1/programs",
        content=b'{"name": "x", "currency": "EUR"',
        headers={"Content-Type": "application/json"},
    )
    assert assert_problem(r, 422, "validation_error")["errors"][0]["type"] == "json_invalid"
    assert [p["id"] for p in api.request("GET", "/v1/programs").json()["items"]] == [program]


def test_wrong_json_types_are_422(api):
    program = _member(api)
    body = purchase_body("O1", "C1", [{"unit_price_minor": 1250}])
    body["lines"][0]["unit_price_minor"] = "12.50"
    r = post_event(api, program, body)
    assert error_fields(assert_problem(r, 422, "validation_error")) == [
        "purchase.lines[0].unit_price_minor"
    ]
    r = api.request("POST", f"/v1/programs/{program}/events", json=[1, 2])
    assert_problem(r, 422, "validation_error")
    r = api.request(
        "POST",
        f"/v1/programs/{program}/members",
        content=b"external_id=C9",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(r, 422, "validation_error")
    assert_problem(
        api.request("GET", f"/v1/programs/{program}/members/ext:C9"), 404, "member_not_found"
    )
    assert ledger(api, program, "ext:C1") == []


def test_unicode_and_injection_in_path_and_body_are_handled(api):
    program = _member(api)
    for ref in ("ext:' OR '1'='1", "ext:%27%3B--", "ext:日本", "mbr_' OR 1=1 --"):
        r = api.request("GET", f"/v1/programs/{program}/members/{ref}/balance")
        assert_problem(r, 404, "member_not_found")
    body = purchase_body("'; DROP TABLE events; --", "C1", [{"sku": "☕", "unit_price_minor": 300}])
    r = post_event(api, program, body)
    assert r.status_code == 201, r.text
    assert r.json()["order_id"] == "'; DROP TABLE events; --"
    assert r.json()["lines"][0]["sku"] == "☕"
    entry = ledger(api, program, "ext:C1")[0]
    assert entry["source"] == {"type": "purchase", "id": "'; DROP TABLE events; --"}
    r = redeem(api, program, "ext:C1", 1, reason="🎁 ' OR 1=1", key="' OR 1=1 --")
    assert r.status_code == 201, r.text
    assert ledger(api, program, "ext:C1")[0]["reason"] == "🎁 ' OR 1=1"
    assert api.balance(program, "ext:C1")["balance"] == 2


def test_openapi_lists_the_v1_routes_and_docs_are_served(api):
    r = api.client.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    spec = r.json()
    assert spec["info"]["title"] == "Loyalty Engine"
    paths = spec["paths"]
    expected = {
        "/v1/programs": {"get", "post"},
        "/v1/programs/{program_id}": {"get", "put"},
        "/v1/programs/{program_id}/versions/{version}": {"get"},
        "/v1/programs/{program_id}/drafts": {"get", "post"},
        "/v1/programs/{program_id}/drafts/{draft_id}": {"get", "delete"},
        "/v1/programs/{program_id}/drafts/{draft_id}/publish": {"post"},
        "/v1/programs/{program_id}/members": {"get", "post"},
        "/v1/programs/{program_id}/expiring-points": {"get"},
        "/v1/programs/{program_id}/members/{member}": {"get", "patch"},
        "/v1/programs/{program_id}/events": {"post"},
        "/v1/programs/{program_id}/events:batch": {"post"},
        "/v1/programs/{program_id}/quote": {"post"},
        "/v1/programs/{program_id}/backtests": {"post"},
        "/v1/programs/{program_id}/members/{member}/balance": {"get"},
        "/v1/programs/{program_id}/members/{member}/ledger": {"get"},
        "/v1/programs/{program_id}/members/{member}/redemptions": {"post"},
        "/v1/programs/{program_id}/redemptions/{redemption_id}": {"get"},
        "/v1/programs/{program_id}/redemptions/{redemption_id}/cancel": {"post"},
        "/v1/programs/{program_id}/members/{member}/adjustments": {"post"},
        "/v1/programs/{program_id}/members/{member}/tier": {"get", "put"},
        "/v1/programs/{program_id}/members/{member}/stamp-cards": {"get"},
        "/v1/programs/{program_id}/members/{member}/memberships": {"get", "post"},
        "/v1/programs/{program_id}/members/{member}/holds": {"post"},
        "/v1/programs/{program_id}/members/{member}/rewards": {"get"},
        "/v1/programs/{program_id}/members/{member}/transfers": {"post"},
        "/v1/programs/{program_id}/members/{member}/rewards/{reward_id}/redeem": {"post"},
        "/v1/programs/{program_id}/coupons/{code}/validate": {"post"},
        "/v1/programs/{program_id}/reward-issues/{issue_id}": {"get"},
        "/v1/programs/{program_id}/reward-issues/{issue_id}/fulfilment": {"post"},
        "/v1/programs/{program_id}/coupons/{code}/use": {"post"},
        "/v1/programs/{program_id}/coupons/{code}/cancel": {"post"},
        "/v1/programs/{program_id}/coupons/{code}/cancel-use": {"post"},
        "/v1/programs/{program_id}/holds/{hold_id}": {"get"},
        "/v1/programs/{program_id}/holds/{hold_id}/capture": {"post"},
        "/v1/programs/{program_id}/holds/{hold_id}/release": {"post"},
        "/v1/programs/{program_id}/memberships/{membership_id}/payments": {"post"},
        "/v1/programs/{program_id}/memberships/{membership_id}/cancel": {"post"},
        "/v1/programs/{program_id}/tiers/recalculate": {"post"},
        "/v1/api-keys": {"get", "post"},
        "/v1/api-keys/{key_id}": {"delete"},
    }
    v1 = {path: set(ops) for path, ops in paths.items() if path.startswith("/v1/")}
    assert v1 == expected

    r = api.client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text
