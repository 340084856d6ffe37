"""Member-to-member transfers: one balanced entry, within the program's limits."""

from __future__ import annotations

import threading

from loyalty.application.audit import audit_ledger
from tests.e2e.test_api_support import assert_problem


def _program(api, **transfers):
    program = api.create_program(
        enrollment={"auto_enroll_on_purchase": True},
        transfers={"enabled": True, **transfers},
    )
    assert api.purchase(program, "O1", "A", [{"unit_price_minor": 10_000}]).status_code == 201
    api.enroll(program, "B")
    return program


def _send(api, program, points, key, frm="ext:A", to="ext:B"):
    return api.request(
        "POST",
        f"/v1/programs/{program}/members/{frm}/transfers",
        json={"to": to, "points": points, "reason": "gift"},
        headers={"Idempotency-Key": key},
    )


def test_a_transfer_is_one_balanced_entry_between_two_members(api):
    program = _program(api)
    r = _send(api, program, 30, "t1")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["from_balance"]["balance"], body["to_balance"]["balance"]) == (70, 30)
    ledger = api.request("GET", f"/v1/programs/{program}/members/ext:B/ledger").json()
    assert [(e["kind"], e["points"]) for e in ledger["items"]] == [("transfer", 30)]
    again = _send(api, program, 30, "t1")
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert api.balance(program, "ext:A")["balance"] == 70
    assert audit_ledger(api.engine) == []


def test_transfers_are_refused_when_disabled_over_limits_or_to_oneself(api):
    closed = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    api.purchase(closed, "O1", "A", [{"unit_price_minor": 1000}])
    api.enroll(closed, "B")
    body = assert_problem(_send(api, closed, 1, "x"), 422, "transfer_refused")
    assert body["reason"] == "transfers_disabled"
    program = _program(api, max_points_per_transfer=50, max_points_per_month=60)
    assert assert_problem(_send(api, program, 51, "a"), 422, "transfer_refused")["reason"] == (
        "over_transfer_limit"
    )
    assert _send(api, program, 50, "b").status_code == 201
    refused = assert_problem(_send(api, program, 20, "c"), 422, "transfer_refused")
    assert (refused["reason"], refused["sent_this_month"]) == ("over_monthly_limit", 50)
    same = assert_problem(_send(api, program, 1, "d", to="ext:A"), 422, "transfer_refused")
    assert same["reason"] == "same_member"
    assert_problem(_send(api, program, 1, "e", to="ext:NOBODY"), 404, "member_not_found")


def test_crossed_transfers_at_once_never_deadlock_or_overdraw(api):
    program = _program(api)
    assert api.purchase(program, "O2", "B", [{"unit_price_minor": 10_000}]).status_code == 201
    statuses: list[int] = []

    def send(n: int) -> None:
        frm, to = ("ext:A", "ext:B") if n % 2 else ("ext:B", "ext:A")
        statuses.append(_send(api, program, 30, f"x{n}", frm=frm, to=to).status_code)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {201, 422}
    total = api.balance(program, "ext:A")["balance"] + api.balance(program, "ext:B")["balance"]
    assert total == 200
    assert audit_ledger(api.engine) == []
