"""Members over HTTP: enrolment, lookup, profile updates, listing and search."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.e2e.test_api_support import assert_problem, error_fields, new_key, redeem


def _members(api: Any, program: str, **params: Any) -> dict[str, Any]:
    r = api.request("GET", f"/v1/programs/{program}/members", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_enroll_returns_the_member(api):
    program = api.create_program()
    r = api.request(
        "POST",
        f"/v1/programs/{program}/members",
        json={
            "external_id": "C-1",
            "email": "Ann.Lee@Example.COM",
            "first_name": "Ann",
            "birth_date": "1990-05-17",
            "attributes": {"tier": "gold"},
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("mbr_")
    assert body["program_id"] == program
    assert body["external_id"] == "C-1"
    assert body["email"] == "ann.lee@example.com"
    assert body["first_name"] == "Ann"
    assert body["last_name"] is None
    assert body["birth_date"] == "1990-05-17"
    assert body["marketing_consent"] is False
    assert body["attributes"] == {"tier": "gold"}
    assert body["enrollment_source"] == "api"
    assert api.balance(program, body["id"])["balance"] == 0


def test_duplicate_external_id_is_a_conflict(api):
    program = api.create_program()
    first = api.enroll(program, "C1")
    r = api.request("POST", f"/v1/programs/{program}/members", json={"external_id": "C1"})
    body = assert_problem(r, 409, "member_already_exists")
    assert body["external_id"] == "C1"
    assert body["member_id"] == first
    assert [m["id"] for m in _members(api, program)["items"]] == [first]

    # The same external id in another program is another member.
    other = api.create_program(name="Other")
    in_other = api.enroll(other, "C1")
    assert in_other != first
    r = api.request("GET", f"/v1/programs/{other}/members/{first}")
    assert_problem(r, 404, "member_not_found")


def test_enroll_with_an_idempotency_key_replays(api):
    program = api.create_program()
    key = new_key()
    url = f"/v1/programs/{program}/members"
    first = api.request("POST", url, json={"external_id": "C1"}, headers={"Idempotency-Key": key})
    again = api.request("POST", url, json={"external_id": "C1"}, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = api.request("POST", url, json={"external_id": "C2"}, headers={"Idempotency-Key": key})
    assert_problem(other, 409, "idempotency_conflict")
    assert len(_members(api, program)["items"]) == 1


def test_get_by_engine_id_and_by_external_id(api):
    program = api.create_program()
    member = api.enroll(program, "C1", email="c1@example.com")
    by_id = api.request("GET", f"/v1/programs/{program}/members/{member}")
    by_ext = api.request("GET", f"/v1/programs/{program}/members/ext:C1")
    assert by_id.status_code == by_ext.status_code == 200
    assert by_id.json() == by_ext.json()
    assert by_id.json()["id"] == member
    assert by_id.json()["email"] == "c1@example.com"


def test_unknown_member_is_404(api):
    program = api.create_program()
    api.enroll(program, "C1")
    for ref in ("ext:nobody", "mbr_01ZZZZZZZZZZZZZZZZZZZZZZZZ", "ext:c1", "C1"):
        r = api.request("GET", f"/v1/programs/{program}/members/{ref}")
        assert assert_problem(r, 404, "member_not_found")["member"] == ref


def test_patch_merges_attributes_and_null_removes_a_key(api):
    program = api.create_program()
    member = api.enroll(
        program,
        "C1",
        email="c1@example.com",
        first_name="Ann",
        attributes={"tier": "gold", "colour": "red", "visits": 3},
    )
    r = api.request(
        "PATCH",
        f"/v1/programs/{program}/members/ext:C1",
        json={"first_name": "Anna", "attributes": {"colour": None, "size": "M", "visits": 4}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == member
    assert body["first_name"] == "Anna"
    assert body["email"] == "c1@example.com"
    assert body["attributes"] == {"tier": "gold", "size": "M", "visits": 4}

    stored = api.request("GET", f"/v1/programs/{program}/members/{member}").json()
    assert stored["attributes"] == {"tier": "gold", "size": "M", "visits": 4}
    assert stored["first_name"] == "Anna"


def test_patch_sets_and_clears_profile_fields(api):
    program = api.create_program()
    member = api.enroll(program, "C1", email="c1@example.com", phone="+33 1 23 45 67 89")
    r = api.request(
        "PATCH",
        f"/v1/programs/{program}/members/{member}",
        json={"email": "New@Example.org", "phone": None, "marketing_consent": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["email"] == "new@example.org"
    assert body["phone"] is None
    assert body["marketing_consent"] is True
    assert body["external_id"] == "C1"


def test_patch_refuses_unknown_fields_and_unknown_members(api):
    program = api.create_program()
    member = api.enroll(program, "C1", first_name="Ann")
    r = api.request(
        "PATCH",
        f"/v1/programs/{program}/members/{member}",
        json={"first_name": "Bob", "external_id": "C2", "nickname": "B"},
    )
    body = assert_problem(r, 422, "validation_error")
    assert sorted(error_fields(body)) == ["external_id", "nickname"]
    stored = api.request("GET", f"/v1/programs/{program}/members/{member}").json()
    assert (stored["first_name"], stored["external_id"]) == ("Ann", "C1")
    r = api.request("PATCH", f"/v1/programs/{program}/members/ext:ghost", json={"first_name": "x"})
    assert_problem(r, 404, "member_not_found")


def test_attribute_limits_apply_to_each_request_and_to_the_merged_result(api):
    """At most 50 attributes (8 KiB) per member: a request over it is refused, and so is a
    PATCH whose merge would leave the member with more."""
    program = api.create_program()
    too_many = {f"a{i}": i for i in range(51)}
    r = api.request(
        "POST",
        f"/v1/programs/{program}/members",
        json={"external_id": "C1", "attributes": too_many},
    )
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["attributes"]
    member = api.enroll(program, "C1", attributes={f"a{i}": i for i in range(30)})
    url = f"/v1/programs/{program}/members/{member}"
    r = api.request("PATCH", url, json={"attributes": too_many})
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["attributes"]
    r = api.request("PATCH", url, json={"attributes": {"big": "x" * 8200}})
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["attributes"]

    r = api.request("PATCH", url, json={"attributes": {f"b{i}": i for i in range(30)}})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] in ("validation_error", "limit_exceeded")
    assert len(api.request("GET", url).json()["attributes"]) == 30
    # Removing keys in the same PATCH keeps the merge within the limit.
    drop = {f"a{i}": None for i in range(10)}
    r = api.request("PATCH", url, json={"attributes": {**drop, **{f"b{i}": i for i in range(30)}}})
    assert r.status_code == 200, r.text
    assert len(r.json()["attributes"]) == 50


def test_list_pages_through_every_member_exactly_once(api):
    program = api.create_program()
    enrolled = [api.enroll(program, f"C{i}") for i in range(7)]
    seen: list[str] = []
    page_sizes: list[int] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = _members(api, program, **params)
        page_sizes.append(len(page["items"]))
        seen.extend(m["id"] for m in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert page_sizes == [3, 3, 1]
    assert seen == enrolled
    assert len(set(seen)) == 7


def test_list_last_full_page_has_no_next_cursor(api):
    program = api.create_program()
    enrolled = [api.enroll(program, f"C{i}") for i in range(6)]
    first = _members(api, program, limit=3)
    assert first["next_cursor"] is not None
    second = _members(api, program, limit=3, cursor=first["next_cursor"])
    assert [m["id"] for m in first["items"] + second["items"]] == enrolled
    assert second["next_cursor"] is None
    whole = _members(api, program, limit=6)
    assert len(whole["items"]) == 6
    assert whole["next_cursor"] is None


def test_list_limit_bounds(api):
    program = api.create_program()
    for i in range(3):
        api.enroll(program, f"C{i}")
    assert len(_members(api, program)["items"]) == 3
    assert len(_members(api, program, limit=200)["items"]) == 3
    for limit in (201, 0, -1, "ten"):
        r = api.request("GET", f"/v1/programs/{program}/members", params={"limit": limit})
        body = assert_problem(r, 422, "validation_error")
        assert error_fields(body) == ["query.limit"]
    r = api.request("GET", f"/v1/programs/{program}/members/ext:x/ledger", params={"limit": 201})
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["query.limit"]


def _cursor_statuses(api: Any, cursors: list[str]) -> list[tuple[str, str, int, str]]:
    """Status and code of every listing asked for each cursor, as (listing, cursor, status,
    code)."""
    program = api.create_program()
    api.enroll(program, "C1")
    urls = {
        "members": f"/v1/programs/{program}/members",
        "ledger": f"/v1/programs/{program}/members/ext:C1/ledger",
    }
    seen = []
    for listing, url in urls.items():
        for cursor in cursors:
            r = api.request("GET", url, params={"cursor": cursor})
            code = r.json().get("code", "") if r.status_code != 200 else ""
            if r.status_code == 422:
                body = assert_problem(r, 422, "validation_error")
                assert [e["field"].removeprefix("query.") for e in body["errors"]] == ["cursor"]
            seen.append((listing, cursor, r.status_code, code))
    return seen


def test_undecodable_cursor_is_422(api):
    cursors = ["zzzz", "x" * 201]  # not base64 of UTF-8; longer than any cursor
    assert _cursor_statuses(api, cursors) == [
        (listing, c, 422, "validation_error") for listing in ("members", "ledger") for c in cursors
    ]


def test_cursor_that_is_not_base64_is_422(api):
    cursors = ["!!!", "%%%%", "not a cursor"]
    assert _cursor_statuses(api, cursors) == [
        (listing, c, 422, "validation_error") for listing in ("members", "ledger") for c in cursors
    ]


def test_cursor_decoding_to_nul_bytes_is_422(api):
    cursors = ["AAAA"]  # base64 of three NUL bytes
    assert _cursor_statuses(api, cursors) == [
        (listing, c, 422, "validation_error") for listing in ("members", "ledger") for c in cursors
    ]


def test_search_by_external_id_is_exact(api):
    program = api.create_program()
    api.enroll(program, "C1")
    c10 = api.enroll(program, "C10")
    api.enroll(program, "c10")
    assert [m["id"] for m in _members(api, program, external_id="C10")["items"]] == [c10]
    assert _members(api, program, external_id="C")["items"] == []
    assert _members(api, program, external_id="C%")["items"] == []


def test_search_by_email_ignores_case(api):
    program = api.create_program()
    ann = api.enroll(program, "C1", email="Ann@Example.com")
    api.enroll(program, "C2", email="bob@example.com")
    for query in ("ann@example.com", "ANN@EXAMPLE.COM", "Ann@Example.com"):
        assert [m["id"] for m in _members(api, program, email=query)["items"]] == [ann]
    assert _members(api, program, email="ann@example")["items"] == []
    assert _members(api, program, email="%@example.com")["items"] == []

    zoe = api.enroll(program, "C3", email="Zoë@Exämple.com")
    assert [m["id"] for m in _members(api, program, email="ZOË@exämple.com")["items"]] == [zoe]
    assert _members(api, program, email="zoe@example.com")["items"] == []


INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE members; --",
    '" OR ""="',
    "%",
    "_",
    "*",
    "\\",
    "C1' --",
]


def test_injection_strings_in_search_match_nothing(api):
    program = api.create_program()
    api.enroll(program, "C1", email="c1@example.com")
    for value in INJECTIONS:
        assert _members(api, program, external_id=value)["items"] == [], value
        assert _members(api, program, email=value)["items"] == [], value
    assert len(_members(api, program)["items"]) == 1


UNICODE_IDS = [
    "Zoë-日本-Ωμέγα",
    "emoji-😀-🛒",
    "' OR '1'='1",
    "O'Brien; DROP TABLE members",
    "a b+c&d=e?f#g",
    "résumé",
]


def test_unicode_and_quote_external_ids_round_trip(api):
    program = api.create_program()
    members = {external_id: api.enroll(program, external_id) for external_id in UNICODE_IDS}
    for n, (external_id, member) in enumerate(members.items(), start=1):
        found = _members(api, program, external_id=external_id)["items"]
        assert [m["id"] for m in found] == [member], external_id
        assert found[0]["external_id"] == external_id
        r = api.request("GET", f"/v1/programs/{program}/members/{quote('ext:' + external_id)}")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == member
        r = api.purchase(program, f"O{n}", external_id, [{"unit_price_minor": 100 * n}])
        assert r.status_code == 201, r.text
        assert r.json()["member_id"] == member
        assert api.balance(program, quote("ext:" + external_id))["balance"] == n


def test_nul_character_in_lookups_is_not_a_server_error(api):
    program = api.create_program()
    api.enroll(program, "C1", email="c1@example.com")
    # Either answer is fine for a client: no match, or the value is refused; never a 5xx.
    for param in ("external_id", "email"):
        r = api.request("GET", f"/v1/programs/{program}/members", params={param: "C1\x00"})
        if r.status_code == 200:
            assert r.json()["items"] == []
        else:
            assert_problem(r, 422, "validation_error")
    r = api.request("GET", f"/v1/programs/{program}/members/ext:C1%00")
    assert r.status_code in (404, 422), r.text
    assert_problem(
        r, r.status_code, "member_not_found" if r.status_code == 404 else "validation_error"
    )


def test_nul_character_in_external_id_is_refused_or_kept_exactly(api):
    program = api.create_program()
    r = api.request("POST", f"/v1/programs/{program}/members", json={"external_id": "C\x001"})
    assert r.status_code in (201, 422), r.text
    if r.status_code == 422:
        assert_problem(r, 422, "validation_error")
    else:
        got = api.request("GET", f"/v1/programs/{program}/members/{r.json()['id']}")
        assert got.json()["external_id"] == "C\x001"


def test_external_id_with_a_slash_is_addressable(api):
    """External ids are any 1..128 characters; a POS using ids like ``A/17`` must be able to
    address the member as ``ext:A%2F17`` (or ``ext:A/17``) on every member path."""
    program = api.create_program()
    member = api.enroll(program, "A/17")
    assert api.purchase(program, "O1", "A/17", [{"unit_price_minor": 900}]).status_code == 201
    for ref in (quote("ext:A/17", safe=""), "ext:A/17"):
        r = api.request("GET", f"/v1/programs/{program}/members/{ref}")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == member
        assert api.balance(program, ref)["balance"] == 9
    r = redeem(api, program, quote("ext:A/17", safe=""), 4)
    assert r.status_code == 201, r.text
    assert r.json()["member_id"] == member
