"""Authentication, scopes, program-limited keys, tenant isolation and the API-keys endpoints."""

from __future__ import annotations

from typing import Any

from tests.e2e.test_api_support import (
    assert_problem,
    credit,
    key_id_of,
    ledger,
    new_key,
    other_tenant_token,
    purchase_body,
    redeem,
    return_body,
)

DOCUMENT = {"name": "Test program", "currency": "EUR"}


def _issue(api: Any, scopes: list[str], program_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"{'+'.join(scopes)} key", "scopes": scopes}
    if program_id is not None:
        body["program_id"] = program_id
    r = api.request("POST", "/v1/api-keys", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _world(api: Any) -> dict[str, str]:
    """A program with a member who earned 50, redeemed 10 and has a purchase to return."""
    program = api.create_program()
    member = api.enroll(program, "C1", email="c1@example.com")
    assert api.purchase(program, "O1", "C1", [{"unit_price_minor": 5000}]).status_code == 201
    red = redeem(api, program, member, 10)
    assert red.status_code == 201, red.text
    return {"program": program, "member": member, "redemption": red.json()["id"]}


def _program_scoped_requests(w: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every program-scoped endpoint, with a body that would succeed for the owner."""
    p, m, red = w["program"], w["member"], w["redemption"]
    key = {"headers": {"Idempotency-Key": new_key()}}
    return [
        ("GET", f"/v1/programs/{p}", {}),
        ("GET", f"/v1/programs/{p}/versions/1", {}),
        ("PUT", f"/v1/programs/{p}", {"json": {**DOCUMENT, "name": "stolen"}}),
        ("GET", f"/v1/programs/{p}/members", {}),
        ("GET", f"/v1/programs/{p}/members", {"params": {"external_id": "C1"}}),
        ("POST", f"/v1/programs/{p}/members", {"json": {"external_id": "C2"}}),
        ("GET", f"/v1/programs/{p}/members/{m}", {}),
        ("GET", f"/v1/programs/{p}/members/ext:C1", {}),
        ("PATCH", f"/v1/programs/{p}/members/{m}", {"json": {"first_name": "Mallory"}}),
        (
            "POST",
            f"/v1/programs/{p}/events",
            {"json": purchase_body("O2", "C1", [{"unit_price_minor": 9900}])},
        ),
        ("POST", f"/v1/programs/{p}/events", {"json": return_body("R1", "O1")}),
        ("GET", f"/v1/programs/{p}/members/{m}/balance", {}),
        ("GET", f"/v1/programs/{p}/members/{m}/ledger", {}),
        ("POST", f"/v1/programs/{p}/members/{m}/redemptions", {"json": {"points": 5}, **key}),
        ("GET", f"/v1/programs/{p}/redemptions/{red}", {}),
        ("POST", f"/v1/programs/{p}/redemptions/{red}/cancel", {}),
        (
            "POST",
            f"/v1/programs/{p}/members/{m}/adjustments",
            {"json": {"points": 500, "reason": "x"}, **key},
        ),
    ]


def _state(api: Any, w: dict[str, str]) -> tuple[Any, ...]:
    p, m = w["program"], w["member"]
    program = api.request("GET", f"/v1/programs/{p}").json()
    member = api.request("GET", f"/v1/programs/{p}/members/{m}").json()
    members = api.request("GET", f"/v1/programs/{p}/members").json()
    red = api.request("GET", f"/v1/programs/{p}/redemptions/{w['redemption']}").json()
    balance = api.balance(p, m)
    return (
        program["version"],
        program["document"]["name"],
        member,
        [x["id"] for x in members["items"]],
        red["status"],
        balance["balance"],
        [e["id"] for e in ledger(api, p, m)],
    )


# --- authentication ---------------------------------------------------------------------


def test_no_key_is_401_with_a_bearer_challenge(api):
    for method, url in (("GET", "/v1/programs"), ("POST", "/v1/programs")):
        r = api.client.request(method, url, json=DOCUMENT)
        body = assert_problem(r, 401, "unauthenticated")
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert body["instance"] == "/v1/programs"
    assert api.request("GET", "/v1/programs").json()["items"] == []


def test_wrong_or_malformed_keys_are_401(api):
    key_id = key_id_of(api.token)
    bad = [
        f"{key_id}.wrong-secret",
        f"{key_id}.",
        "key_unknown.secret",
        "no-dot-at-all",
        f"{api.token}x",
        "x" * 300,
    ]
    for token in bad:
        r = api.client.get("/v1/programs", headers={"Authorization": f"Bearer {token}"})
        assert_problem(r, 401, "unauthenticated")
        assert r.headers["WWW-Authenticate"] == "Bearer"
    for header in (f"Basic {api.token}", api.token, "Bearer"):
        r = api.client.get("/v1/programs", headers={"Authorization": header})
        assert_problem(r, 401, "unauthenticated")


# --- tenant isolation -------------------------------------------------------------------


def test_another_tenant_gets_404_on_every_program_scoped_endpoint(api):
    w = _world(api)
    before = _state(api, w)
    intruder = other_tenant_token(api)
    outcomes = []
    for method, url, kwargs in _program_scoped_requests(w):
        r = api.request(method, url, token=intruder, **kwargs)
        code = r.json().get("code") if r.status_code >= 400 else None
        outcomes.append((method, url, r.status_code, code))
        if r.status_code == 404:
            assert_problem(r, 404, "program_not_found")
    assert outcomes == [
        (method, url, 404, "program_not_found") for method, url, _ in _program_scoped_requests(w)
    ]
    assert _state(api, w) == before


def test_another_tenant_lists_no_programs_and_sees_no_members(api):
    w = _world(api)
    intruder = other_tenant_token(api)
    assert api.request("GET", "/v1/programs", token=intruder).json()["items"] == []
    r = api.request("POST", "/v1/programs", token=intruder, json=DOCUMENT)
    assert r.status_code == 201, r.text
    own = r.json()["id"]
    url = f"/v1/programs/{own}/members"
    assert api.request("GET", url, token=intruder).json()["items"] == []
    for params in ({"external_id": "C1"}, {"email": "c1@example.com"}):
        r = api.request("GET", url, token=intruder, params=params)
        assert r.status_code == 200, r.text
        assert r.json()["items"] == []
    r = api.request("GET", f"{url}/{w['member']}", token=intruder)
    assert_problem(r, 404, "member_not_found")
    r = api.request("GET", f"/v1/programs/{own}/redemptions/{w['redemption']}", token=intruder)
    assert_problem(r, 404, "redemption_not_found")
    r = api.request(
        "POST", f"/v1/programs/{own}/events", token=intruder, json=return_body("R1", "O1")
    )
    assert_problem(r, 404, "order_not_found")
    # And the first tenant does not see the intruder's program.
    assert [p["id"] for p in api.request("GET", "/v1/programs").json()["items"]] == [w["program"]]


def test_another_tenant_cannot_see_or_revoke_our_keys(api):
    intruder = other_tenant_token(api)
    ours = {k["id"] for k in api.request("GET", "/v1/api-keys").json()["items"]}
    theirs = {k["id"] for k in api.request("GET", "/v1/api-keys", token=intruder).json()["items"]}
    assert ours == {key_id_of(api.token)}
    assert theirs == {key_id_of(intruder)}
    r = api.request("DELETE", f"/v1/api-keys/{key_id_of(api.token)}", token=intruder)
    assert_problem(r, 404, "api_key_not_found")
    assert api.request("GET", "/v1/programs").status_code == 200


def test_a_key_cannot_be_issued_for_another_tenants_program(api):
    program = api.create_program()
    intruder = other_tenant_token(api)
    r = api.request(
        "POST",
        "/v1/api-keys",
        token=intruder,
        json={"name": "sneaky", "scopes": ["read"], "program_id": program},
    )
    assert_problem(r, 404, "program_not_found")


# --- scopes -----------------------------------------------------------------------------


def test_read_key_reads_but_gets_403_on_every_write(api):
    w = _world(api)
    before = _state(api, w)
    reader = _issue(api, ["read"])["token"]
    p, m = w["program"], w["member"]
    for method, url, kwargs in _program_scoped_requests(w):
        r = api.request(method, url, token=reader, **kwargs)
        if method == "GET":
            assert r.status_code == 200, (url, r.text)
        else:
            body = assert_problem(r, 403, "forbidden")
            assert body["required_scope"] in ("write", "admin"), (url, body)
    for method, url, kwargs in (
        ("POST", "/v1/programs", {"json": DOCUMENT}),
        ("POST", "/v1/api-keys", {"json": {"name": "x", "scopes": ["read"]}}),
        ("GET", "/v1/api-keys", {}),
        ("DELETE", f"/v1/api-keys/{key_id_of(api.token)}", {}),
    ):
        assert_problem(api.request(method, url, token=reader, **kwargs), 403, "forbidden")
    assert _state(api, w) == before
    assert api.balance(p, m)["balance"] == 40


def test_write_key_moves_points_but_cannot_administer(api):
    w = _world(api)
    writer = _issue(api, ["write"])["token"]
    p, m = w["program"], w["member"]
    r = api.request(
        "POST",
        f"/v1/programs/{p}/events",
        token=writer,
        json=purchase_body("O2", "C1", [{"unit_price_minor": 1000}]),
    )
    assert r.status_code == 201, r.text
    assert credit(api, p, m, 5, token=writer)["actor"] == key_id_of(writer)
    assert api.balance(p, m)["balance"] == 55
    r = api.request("PUT", f"/v1/programs/{p}", token=writer, json={**DOCUMENT, "name": "x"})
    assert assert_problem(r, 403, "forbidden")["required_scope"] == "admin"
    assert_problem(
        api.request("POST", "/v1/programs", token=writer, json=DOCUMENT), 403, "forbidden"
    )
    assert api.request("GET", f"/v1/programs/{p}").json()["version"] == 1


def test_key_limited_to_one_program_sees_other_programs_as_absent(api):
    a = api.create_program(name="A")
    b = api.create_program(name="B")
    api.enroll(a, "C1")
    api.enroll(b, "C1")
    limited = _issue(api, ["write"], program_id=a)
    assert limited["program_id"] == a
    token = limited["token"]

    r = api.request(
        "POST",
        f"/v1/programs/{a}/events",
        token=token,
        json=purchase_body("O1", "C1", [{"unit_price_minor": 1000}]),
    )
    assert r.status_code == 201, r.text
    assert api.request("GET", f"/v1/programs/{a}/members/ext:C1", token=token).status_code == 200
    assert [p["id"] for p in api.request("GET", "/v1/programs", token=token).json()["items"]] == [a]

    for method, url, kwargs in (
        ("GET", f"/v1/programs/{b}", {}),
        ("GET", f"/v1/programs/{b}/members", {}),
        ("GET", f"/v1/programs/{b}/members/ext:C1/balance", {}),
        (
            "POST",
            f"/v1/programs/{b}/events",
            {"json": purchase_body("O1", "C1", [{"unit_price_minor": 1000}])},
        ),
    ):
        r = api.request(method, url, token=token, **kwargs)
        assert assert_problem(r, 404, "program_not_found")["program_id"] == b
    assert api.balance(b, "ext:C1")["balance"] == 0
    assert api.balance(a, "ext:C1")["balance"] == 10

    # Even with the admin scope, a program-limited key cannot manage keys or make programs.
    admin_of_a = _issue(api, ["admin"], program_id=a)["token"]
    r = api.request("POST", "/v1/programs", token=admin_of_a, json=DOCUMENT)
    assert_problem(r, 403, "forbidden")
    assert len(api.request("GET", "/v1/programs").json()["items"]) == 2
    r = api.request(
        "POST", "/v1/api-keys", token=admin_of_a, json={"name": "x", "scopes": ["read"]}
    )
    assert_problem(r, 403, "forbidden")
    r = api.request("DELETE", f"/v1/api-keys/{key_id_of(api.token)}", token=admin_of_a)
    assert_problem(r, 403, "forbidden")
    assert api.request("GET", "/v1/programs").status_code == 200


# --- API keys endpoints -----------------------------------------------------------------


def test_created_key_is_shown_once_and_works(api):
    r = api.request("POST", "/v1/api-keys", json={"name": "till 4", "scopes": ["write", "read"]})
    assert r.status_code == 201, r.text
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert body["id"].startswith("key_")
    assert body["token"].startswith(body["id"] + ".")
    assert len(body["token"]) > len(body["id"]) + 20
    assert body["scopes"] == ["read", "write"]
    assert body["program_id"] is None
    assert api.request("GET", "/v1/programs", token=body["token"]).status_code == 200


def test_list_shows_keys_without_secrets(api):
    issued = _issue(api, ["read"])
    secret = issued["token"].partition(".")[2]
    r = api.request("GET", "/v1/api-keys")
    assert r.status_code == 200, r.text
    assert secret not in r.text
    assert api.token.partition(".")[2] not in r.text
    items = {k["id"]: k for k in r.json()["items"]}
    assert set(items) == {key_id_of(api.token), issued["id"]}
    listed = items[issued["id"]]
    assert set(listed) == {"id", "name", "scopes", "program_id", "created_at", "revoked_at"}
    assert (listed["name"], listed["scopes"], listed["revoked_at"]) == ("read key", ["read"], None)


def test_revoked_key_is_401(api):
    issued = _issue(api, ["write"])
    token = issued["token"]
    assert api.request("GET", "/v1/programs", token=token).status_code == 200
    r = api.request("DELETE", f"/v1/api-keys/{issued['id']}")
    assert r.status_code == 204, r.text
    assert r.content == b""
    r = api.request("GET", "/v1/programs", token=token)
    assert_problem(r, 401, "unauthenticated")
    listed = {k["id"]: k for k in api.request("GET", "/v1/api-keys").json()["items"]}
    assert listed[issued["id"]]["revoked_at"] is not None
    assert api.request("GET", "/v1/programs").status_code == 200
    assert_problem(api.request("DELETE", "/v1/api-keys/key_nope"), 404, "api_key_not_found")


def test_api_key_body_is_validated(api):
    for body in (
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["superuser"]},
        {"name": "", "scopes": ["read"]},
        {"name": "x", "scopes": ["read"], "expires": "never"},
    ):
        assert_problem(api.request("POST", "/v1/api-keys", json=body), 422, "validation_error")
    assert len(api.request("GET", "/v1/api-keys").json()["items"]) == 1
