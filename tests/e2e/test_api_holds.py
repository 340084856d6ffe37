"""Pay with points at checkout: reserve, capture (possibly less), release, and holds that
expire. Points are conserved through every path, and parallel holds never overdraw."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

from loyalty.application import holds
from loyalty.application.access import authenticate
from loyalty.application.audit import audit_ledger
from tests.e2e.test_api_support import assert_problem


def _member_with(api, points, *, expiry_days=None):
    program = api.create_program(
        enrollment={"auto_enroll_on_purchase": True},
        points={"expiry": {"policy": "after_days", "days": expiry_days}} if expiry_days else {},
    )
    r = api.purchase(program, "O1", "C1", [{"unit_price_minor": points * 100}])
    assert r.status_code == 201, r.text
    return program


def _reserve(api, program, points, key, **body):
    return api.request(
        "POST",
        f"/v1/programs/{program}/members/ext:C1/holds",
        json={"points": points, **body},
        headers={"Idempotency-Key": key},
    )


def _capture(api, program, hold_id, key, **body):
    return api.request(
        "POST",
        f"/v1/programs/{program}/holds/{hold_id}/capture",
        json=body,
        headers={"Idempotency-Key": key},
    )


def test_a_hold_takes_points_at_once_and_a_partial_capture_gives_the_rest_back(api):
    program = _member_with(api, 100)
    r = _reserve(api, program, 60, "h1", order_reference="WEB-1")
    assert r.status_code == 201, r.text
    hold = r.json()
    assert (hold["status"], hold["points"], hold["balance"]["available"]) == ("held", 60, 40)
    # Held points can't be spent elsewhere.
    spend = api.request(
        "POST",
        f"/v1/programs/{program}/members/ext:C1/redemptions",
        json={"points": 41},
        headers={"Idempotency-Key": "r1"},
    )
    assert_problem(spend, 422, "insufficient_points")
    captured = _capture(api, program, hold["id"], "c1", points=45)
    assert captured.status_code == 200, captured.text
    body = captured.json()
    assert (body["status"], body["captured_points"], body["released_points"]) == (
        "captured",
        45,
        15,
    )
    assert body["balance"]["balance"] == 55
    # The capture replays with its key; a second capture or a release is refused.
    again = _capture(api, program, hold["id"], "c1", points=45)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert_problem(_capture(api, program, hold["id"], "c2"), 409, "hold_not_open")
    assert_problem(
        api.request("POST", f"/v1/programs/{program}/holds/{hold['id']}/release"),
        409,
        "hold_not_open",
    )
    assert audit_ledger(api.engine) == []


def test_a_release_gives_points_back_to_their_lots_with_their_expiry(api):
    program = _member_with(api, 100, expiry_days=30)
    before = api.balance(program, "ext:C1")["expiring"]
    hold = _reserve(api, program, 70, "h1").json()
    released = api.request("POST", f"/v1/programs/{program}/holds/{hold['id']}/release")
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "released"
    assert api.balance(program, "ext:C1")["expiring"] == before
    # Releasing again answers the same and moves nothing.
    again = api.request("POST", f"/v1/programs/{program}/holds/{hold['id']}/release")
    assert again.json()["release_entry_id"] == released.json()["release_entry_id"]
    assert api.balance(program, "ext:C1")["balance"] == 100


def test_an_expired_hold_cannot_be_captured_and_the_job_releases_it_once(api):
    program = _member_with(api, 100)
    hold = _reserve(api, program, 30, "h1", ttl_seconds=1).json()
    late = datetime.now(UTC) + timedelta(seconds=5)
    principal = authenticate(api.engine, api.token)
    from loyalty.domain.errors import HoldExpired

    try:
        holds.capture(
            api.engine, principal, program, hold["id"], points=None, idempotency_key="c", now=late
        )
        raise AssertionError("an expired hold was captured")
    except HoldExpired:
        pass
    assert holds.release_expired(api.engine, now=late) == 1
    assert holds.release_expired(api.engine, now=late) == 0
    view = api.request("GET", f"/v1/programs/{program}/holds/{hold['id']}").json()
    assert (view["status"], view["released_points"]) == ("expired", 30)
    assert api.balance(program, "ext:C1")["balance"] == 100
    assert audit_ledger(api.engine) == []


def test_parallel_holds_never_overdraw(api):
    program = _member_with(api, 100)
    results: list[int] = []

    def reserve(n: int) -> None:
        results.append(_reserve(api, program, 10, f"p{n}").status_code)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count(201) == 10
    assert all(code in (201, 422) for code in results)
    assert api.balance(program, "ext:C1")["available"] == 0
    assert audit_ledger(api.engine) == []


def test_points_are_conserved_through_random_reserve_capture_and_release(api):
    program = _member_with(api, 200)
    rng = random.Random(5)
    principal = authenticate(api.engine, api.token)
    open_holds: list[dict] = []
    spent = 0
    for step in range(40):
        action = rng.choice(["reserve", "reserve", "capture", "release"])
        if action == "reserve":
            r = _reserve(api, program, rng.randint(1, 40), f"k{step}")
            if r.status_code == 201:
                open_holds.append(r.json())
            else:
                assert r.json()["code"] == "insufficient_points"
        elif open_holds:
            hold = open_holds.pop(rng.randrange(len(open_holds)))
            if action == "capture":
                take = rng.randint(0, hold["points"])
                r = _capture(api, program, hold["id"], f"c{step}", points=take)
                assert r.status_code == 200, r.text
                spent += take
            else:
                holds.release(api.engine, principal, program, hold["id"], now=datetime.now(UTC))
        held = sum(h["points"] for h in open_holds)
        balance = api.balance(program, "ext:C1")["balance"]
        # Every point is with the member, held, or captured: none made, none lost.
        assert balance + held + spent == 200, step
    assert audit_ledger(api.engine) == []
