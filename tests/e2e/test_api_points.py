"""Balance, ledger, redemptions and adjustments over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.e2e.test_api_support import (
    adjust,
    assert_problem,
    credit,
    error_fields,
    key_id_of,
    ledger,
    ledger_page,
    new_key,
    post_event,
    purchase_body,
    redeem,
)

# Expiry dates a few years ahead of whenever the tests run, as the engine writes them (UTC).
_YEAR = datetime.now(UTC).year
SOON = datetime(_YEAR + 4, 1, 1, tzinfo=UTC).isoformat()
LATER = datetime(_YEAR + 5, 6, 1, tzinfo=UTC).isoformat()
LATEST = datetime(_YEAR + 6, 1, 1, tzinfo=UTC).isoformat()


def _member(api: Any, **program: Any) -> tuple[str, str]:
    program_id = api.create_program(**program)
    return program_id, api.enroll(program_id, "C1")


def _three_lots(api: Any, program: str, member: str) -> dict[str, str]:
    """Lots of 100 points expiring LATEST, SOON and never, created in that order."""
    return {
        "latest": credit(api, program, member, 100, expires_at=LATEST)["lots"][0]["lot_id"],
        "soon": credit(api, program, member, 100, expires_at=SOON)["lots"][0]["lot_id"],
        "never": credit(api, program, member, 100)["lots"][0]["lot_id"],
    }


# --- balance and ledger -----------------------------------------------------------------


def test_balance_groups_expiring_points_by_date(api):
    program, member = _member(api)
    credit(api, program, member, 100, expires_at=SOON.replace("+00:00", "Z"))
    in_paris = f"{_YEAR + 4}-01-01T01:00:00+01:00"  # the same instant as SOON
    same_instant = credit(api, program, member, 50, expires_at=in_paris)
    # A new lot's expiry is echoed in the caller's offset; the balance answers in UTC.
    assert same_instant["lots"][0]["expires_at"] == in_paris
    credit(api, program, member, 30, expires_at=LATER)
    credit(api, program, member, 20)
    balance = api.balance(program, member)
    assert balance["member_id"] == member
    assert balance["balance"] == 200
    assert balance["available"] == 200
    assert balance["pending"] == 0
    assert balance["debt"] == 0
    assert balance["expiring"] == [
        {"expires_at": SOON, "points": 150, "expired": False},
        {"expires_at": LATER, "points": 30, "expired": False},
    ]
    by_ext = api.balance(program, "ext:C1")
    assert {**by_ext, "as_of": None} == {**balance, "as_of": None}


def test_earned_points_expire_after_the_programs_days_from_the_purchase(api):
    program, member = _member(api, points={"expiry": {"policy": "after_days", "days": 30}})
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    body = purchase_body("O1", "C1", [{"unit_price_minor": 4200}])
    body["occurred_at"] = occurred.isoformat()
    r = post_event(api, program, body)
    assert r.status_code == 201, r.text
    lot = r.json()["lot"]
    assert datetime.fromisoformat(lot["expires_at"]) == occurred + timedelta(days=30)
    assert api.balance(program, member)["expiring"] == [
        {"expires_at": lot["expires_at"], "points": 42, "expired": False}
    ]


def test_a_purchase_dated_in_the_future_expires_from_when_it_was_received(api):
    program, member = _member(api, points={"expiry": {"policy": "after_days", "days": 30}})
    body = purchase_body("O1", "C1", [{"unit_price_minor": 4200}])
    body["occurred_at"] = (datetime.now(UTC) + timedelta(days=10)).isoformat()
    r = post_event(api, program, body)
    assert r.status_code == 201, r.text
    received = datetime.fromisoformat(ledger(api, program, member)[0]["created_at"])
    assert datetime.fromisoformat(r.json()["lot"]["expires_at"]) == received + timedelta(days=30)


def test_unknown_member_or_redemption_is_404(api):
    program, _ = _member(api)
    for suffix in ("balance", "ledger"):
        r = api.request("GET", f"/v1/programs/{program}/members/ext:ghost/{suffix}")
        assert_problem(r, 404, "member_not_found")
    assert_problem(redeem(api, program, "ext:ghost", 1), 404, "member_not_found")
    assert_problem(adjust(api, program, "ext:ghost", 1), 404, "member_not_found")
    r = api.request("GET", f"/v1/programs/{program}/redemptions/red_nope")
    assert assert_problem(r, 404, "redemption_not_found")["redemption_id"] == "red_nope"
    r = api.request("POST", f"/v1/programs/{program}/redemptions/red_nope/cancel")
    assert_problem(r, 404, "redemption_not_found")


def test_ledger_is_newest_first_with_reason_and_source(api):
    program, member = _member(api)
    api.purchase(program, "O1", "C1", [{"unit_price_minor": 5000}])
    credit(api, program, member, 7, reason="late delivery")
    red = redeem(api, program, member, 20, reason="coffee", reference="POS-9").json()
    entries = ledger(api, program, member)
    assert [(e["kind"], e["points"], e["reason"], e["source"]) for e in entries] == [
        ("redeem", -20, "coffee", {"type": "redemption", "id": red["id"]}),
        ("adjust_credit", 7, "late delivery", {"type": "adjustment", "id": None}),
        ("earn", 50, None, {"type": "purchase", "id": "O1"}),
    ]
    assert entries[0]["id"] == red["entry_id"]
    assert entries[0]["details"] == {"reference": "POS-9"}
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)


def test_ledger_paginates_newest_first(api):
    program, member = _member(api)
    for i in range(1, 6):
        credit(api, program, member, i, reason=f"r{i}")
    pages = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = ledger_page(api, program, member, **params)
        pages.append([(e["reason"], e["points"]) for e in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [[("r5", 5), ("r4", 4)], [("r3", 3), ("r2", 2)], [("r1", 1)]]
    exact = ledger_page(api, program, member, limit=5)
    assert len(exact["items"]) == 5
    assert exact["next_cursor"] is None


# --- redemptions ------------------------------------------------------------------------


def test_redemption_and_adjustment_need_an_idempotency_key(api):
    program, member = _member(api)
    credit(api, program, member, 100)
    base = f"/v1/programs/{program}/members/{member}"
    for url, body in (
        (f"{base}/redemptions", {"points": 10}),
        (f"{base}/adjustments", {"points": 10, "reason": "x"}),
    ):
        assert_problem(api.request("POST", url, json=body), 400, "idempotency_key_required")
        r = api.request("POST", url, json=body, headers={"Idempotency-Key": ""})
        assert_problem(r, 400, "idempotency_key_required")
    assert api.balance(program, member)["balance"] == 100
    assert len(ledger(api, program, member)) == 1


def test_redemption_burns_points_and_can_be_read_back(api):
    program, member = _member(api)
    lot = credit(api, program, member, 100)["lots"][0]["lot_id"]
    r = redeem(api, program, "ext:C1", 30, reason="coffee", reference="POS-1")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("red_")
    assert body["member_id"] == member
    assert body["points"] == 30
    assert body["status"] == "completed"
    assert (body["reason"], body["reference"]) == ("coffee", "POS-1")
    assert body["lots"] == [{"lot_id": lot, "points": 30, "expires_at": None}]
    assert body["balance"]["balance"] == 70

    got = api.request("GET", f"/v1/programs/{program}/redemptions/{body['id']}")
    assert got.status_code == 200, got.text
    assert got.json() == {
        "id": body["id"],
        "member_id": member,
        "points": 30,
        "reason": "coffee",
        "reference": "POS-1",
        "status": "completed",
        "entry_id": body["entry_id"],
        "created_at": body["created_at"],
        "cancelled_at": None,
    }


def test_insufficient_points_changes_nothing(api):
    program, member = _member(api)
    credit(api, program, member, 50)
    before_balance = api.balance(program, member)
    before_ledger = ledger(api, program, member)
    r = redeem(api, program, member, 80)
    body = assert_problem(r, 422, "insufficient_points")
    assert (body["points_required"], body["points_available"]) == (80, 50)
    after_balance = api.balance(program, member)
    assert {**after_balance, "as_of": None} == {**before_balance, "as_of": None}
    assert ledger(api, program, member) == before_ledger
    assert redeem(api, program, member, 50).status_code == 201


def test_redemption_consumes_the_earliest_expiring_lots_first(api):
    program, member = _member(api)
    lots = _three_lots(api, program, member)
    r = redeem(api, program, member, 150)
    assert r.status_code == 201, r.text
    assert r.json()["lots"] == [
        {"lot_id": lots["soon"], "points": 100, "expires_at": SOON},
        {"lot_id": lots["latest"], "points": 50, "expires_at": LATEST},
    ]
    assert api.balance(program, member)["expiring"] == [
        {"expires_at": LATEST, "points": 50, "expired": False}
    ]
    r = redeem(api, program, member, 100)
    assert r.json()["lots"] == [
        {"lot_id": lots["latest"], "points": 50, "expires_at": LATEST},
        {"lot_id": lots["never"], "points": 50, "expires_at": None},
    ]
    assert api.balance(program, member)["balance"] == 50


def test_cancel_restores_points_to_the_same_lots_with_their_expiry(api):
    program, member = _member(api)
    lots = _three_lots(api, program, member)
    red = redeem(api, program, member, 150, reason="TV").json()
    assert api.balance(program, member)["balance"] == 150

    r = api.request(
        "POST", f"/v1/programs/{program}/redemptions/{red['id']}/cancel", json={"reason": "oops"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled"
    assert body["points"] == 150
    assert sorted(body["lots"], key=lambda lot: lot["points"]) == [
        {"lot_id": lots["latest"], "points": 50, "expires_at": LATEST},
        {"lot_id": lots["soon"], "points": 100, "expires_at": SOON},
    ]
    balance = api.balance(program, member)
    assert balance["balance"] == 300
    assert balance["expiring"] == [
        {"expires_at": SOON, "points": 100, "expired": False},
        {"expires_at": LATEST, "points": 100, "expired": False},
    ]
    entry = ledger(api, program, member)[0]
    assert (entry["kind"], entry["points"], entry["reason"]) == ("redeem_cancel", 150, "oops")
    assert entry["reverses_entry_id"] == red["entry_id"]
    assert entry["id"] == body["cancel_entry_id"]

    # The restored points are consumed in the original order again.
    again = redeem(api, program, member, 120).json()
    assert [(lot["lot_id"], lot["points"]) for lot in again["lots"]] == [
        (lots["soon"], 100),
        (lots["latest"], 20),
    ]


def test_second_cancel_is_a_conflict_and_status_shows_cancelled(api):
    program, member = _member(api)
    credit(api, program, member, 100)
    red = redeem(api, program, member, 40).json()
    url = f"/v1/programs/{program}/redemptions/{red['id']}"
    assert api.request("POST", f"{url}/cancel").status_code == 200
    second = api.request("POST", f"{url}/cancel")
    assert assert_problem(second, 409, "redemption_already_cancelled")["redemption_id"] == red["id"]
    assert api.balance(program, member)["balance"] == 100
    got = api.request("GET", url).json()
    assert got["status"] == "cancelled"
    assert got["cancelled_at"] is not None
    assert got["points"] == 40


def test_cancel_with_an_idempotency_key_replays(api):
    program, member = _member(api)
    credit(api, program, member, 100)
    red = redeem(api, program, member, 40).json()
    url = f"/v1/programs/{program}/redemptions/{red['id']}/cancel"
    key = new_key()
    first = api.request("POST", url, headers={"Idempotency-Key": key})
    again = api.request("POST", url, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert api.balance(program, member)["balance"] == 100


def test_redemption_replay_burns_once_and_a_changed_body_conflicts(api):
    program, member = _member(api)
    credit(api, program, member, 100)
    key = new_key()
    first = redeem(api, program, member, 30, key=key)
    again = redeem(api, program, member, 30, key=key)
    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    conflict = assert_problem(
        redeem(api, program, member, 31, key=key), 409, "idempotency_conflict"
    )
    assert conflict["key"] in (f"redeem:{key}", key)
    assert api.balance(program, member)["balance"] == 70
    assert [e["points"] for e in ledger(api, program, member)] == [-30, 100]


# --- adjustments ------------------------------------------------------------------------


def test_credit_and_debit_adjustments_record_reason_and_actor(api):
    program, member = _member(api)
    r = adjust(api, program, member, 100, reason="welcome gift")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["points"] == 100
    assert body["reason"] == "welcome gift"
    assert body["actor"] == key_id_of(api.token)
    assert body["balance"]["balance"] == 100

    r = adjust(api, program, "ext:C1", -30, reason="duplicate credit")
    assert r.status_code == 201, r.text
    assert r.json()["points"] == -30
    assert r.json()["lots"] == [
        {"lot_id": body["lots"][0]["lot_id"], "points": 30, "expires_at": None}
    ]
    assert r.json()["balance"]["balance"] == 70

    entries = ledger(api, program, member)
    assert [(e["kind"], e["points"], e["reason"], e["actor"]) for e in entries] == [
        ("adjust_debit", -30, "duplicate credit", key_id_of(api.token)),
        ("adjust_credit", 100, "welcome gift", key_id_of(api.token)),
    ]


def test_the_actor_is_the_key_that_moved_the_points(api):
    program, member = _member(api)
    r = api.request("POST", "/v1/api-keys", json={"name": "support desk", "scopes": ["write"]})
    assert r.status_code == 201, r.text
    support = r.json()
    credit(api, program, member, 5, reason="sorry", token=support["token"])
    assert redeem(api, program, member, 2).status_code == 201
    entries = ledger(api, program, member)
    assert [(e["kind"], e["actor"]) for e in entries] == [
        ("redeem", key_id_of(api.token)),
        ("adjust_credit", support["id"]),
    ]
    assert support["id"] != key_id_of(api.token)


def test_adjustment_needs_a_reason(api):
    program, member = _member(api)
    url = f"/v1/programs/{program}/members/{member}/adjustments"
    for body in ({"points": 10}, {"points": 10, "reason": ""}, {"points": 10, "reason": None}):
        r = api.request("POST", url, json=body, headers={"Idempotency-Key": new_key()})
        assert error_fields(assert_problem(r, 422, "validation_error")) == ["reason"]
    assert api.balance(program, member)["balance"] == 0
    assert ledger(api, program, member) == []


def test_debit_beyond_the_balance_is_refused(api):
    program, member = _member(api)
    credit(api, program, member, 70)
    before = ledger(api, program, member)
    body = assert_problem(adjust(api, program, member, -100), 422, "insufficient_points")
    assert (body["points_required"], body["points_available"]) == (100, 70)
    assert api.balance(program, member)["balance"] == 70
    assert ledger(api, program, member) == before


def test_credit_that_would_already_be_expired_is_refused(api):
    program, member = _member(api)
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    body = assert_problem(adjust(api, program, member, 10, expires_at=past), 422, "expiry_in_past")
    assert datetime.fromisoformat(body["expires_at"]) == datetime.fromisoformat(past)
    r = adjust(api, program, member, 10, expires_at=f"{_YEAR + 4}-01-01T00:00:00")
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["expires_at"]
    assert api.balance(program, member)["balance"] == 0
    assert ledger(api, program, member) == []


def test_adjustment_replay_credits_once(api):
    program, member = _member(api)
    key = new_key()
    first = adjust(api, program, member, 25, key=key)
    again = adjust(api, program, member, 25, key=key)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert_problem(adjust(api, program, member, 26, key=key), 409, "idempotency_conflict")
    assert api.balance(program, member)["balance"] == 25


def test_expiring_points_lists_members_to_remind_in_pages(api):
    program = api.create_program(
        points={"expiry": {"policy": "after_days", "days": 20}},
        enrollment={"auto_enroll_on_purchase": True},
    )
    for n, member in enumerate(("A", "B", "C")):
        r = api.purchase(program, f"O{n}", member, [{"unit_price_minor": 1000 * (n + 1)}])
        assert r.status_code == 201, r.text
    url = f"/v1/programs/{program}/expiring-points"
    first = api.request("GET", url, params={"within_days": 30, "limit": 2}).json()
    assert [(i["external_id"], i["points"]) for i in first["items"]] == [("A", 10), ("B", 20)]
    assert first["within_days"] == 30
    second = api.request(
        "GET", url, params={"within_days": 30, "limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [(i["external_id"], i["points"]) for i in second["items"]] == [("C", 30)]
    assert second["next_cursor"] is None
    assert api.request("GET", url, params={"within_days": 10}).json()["items"] == []
    too_far = api.request("GET", url, params={"within_days": 367})
    assert too_far.status_code == 422
