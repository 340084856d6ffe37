"""Events over HTTP: purchases earn, returns take back, custom actions are recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.e2e.test_api_support import (
    assert_problem,
    credit,
    error_fields,
    ledger,
    post_event,
    purchase_body,
    redeem,
    return_body,
)


def _program(api: Any, **points: Any) -> str:
    return api.create_program(points=points) if points else api.create_program()


def test_purchase_earns_per_line_points_that_add_up(api):
    program = _program(api)
    member = api.enroll(program, "C1")
    r = api.purchase(
        program,
        "O1",
        "C1",
        [
            {"line_id": "L1", "sku": "A", "unit_price_minor": 1050},
            {"line_id": "L2", "sku": "B", "unit_price_minor": 2099},
        ],
    )
    assert r.status_code == 201, r.text
    body = r.json()
    # 31.49 EUR at 1 point per EUR, floor: 31 points, split 10 + 21 by largest remainder.
    assert body["type"] == "purchase"
    assert body["order_id"] == "O1"
    assert body["member_id"] == member
    assert body["member_enrolled"] is False
    assert body["base_minor"] == 3149
    assert body["points_earned"] == 31
    assert body["lines"] == [
        {
            "line_id": "L1",
            "sku": "A",
            "base_minor": 1050,
            "points": 10,
            "rules": [{"rule": "base", "points": 10}],
        },
        {
            "line_id": "L2",
            "sku": "B",
            "base_minor": 2099,
            "points": 21,
            "rules": [{"rule": "base", "points": 21}],
        },
    ]
    assert sum(li["points"] for li in body["lines"]) == body["points_earned"]
    assert body["lot"]["points"] == 31
    assert body["lot"]["expires_at"] is None
    assert body["balance"]["balance"] == 31
    assert api.balance(program, member)["available"] == 31
    entries = ledger(api, program, member)
    assert len(entries) == 1
    assert entries[0]["id"] == body["entry_id"]
    assert entries[0]["kind"] == "earn"
    assert entries[0]["points"] == 31
    assert entries[0]["source"] == {"type": "purchase", "id": "O1"}


def test_lines_without_ids_are_numbered_and_equal_lines_split_exactly(api):
    program = _program(api)
    api.enroll(program, "C1")
    lines = [{"sku": f"S{i}", "unit_price_minor": 333} for i in range(7)]
    r = api.purchase(program, "O1", "C1", lines)
    assert r.status_code == 201, r.text
    body = r.json()
    # 23.31 EUR -> 23 points over seven equal lines: the first two get 4, the others 3.
    assert body["points_earned"] == 23
    assert [(li["line_id"], li["points"]) for li in body["lines"]] == [
        ("1", 4),
        ("2", 4),
        ("3", 3),
        ("4", 3),
        ("5", 3),
        ("6", 3),
        ("7", 3),
    ]


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        # spend in minor units -> points, at 1 point per 100
        ("floor", {1000: 10, 1050: 10, 1099: 10, 1150: 11}),
        ("half_even", {1000: 10, 1050: 10, 1051: 11, 1150: 12}),
        ("half_up", {1000: 10, 1049: 10, 1050: 11, 1150: 12}),
        ("ceil", {1000: 10, 1001: 11, 1050: 11, 1099: 11}),
    ],
)
def test_rounding_modes(api, rounding, expected):
    program = _program(api, earn={"points": 1, "per_spend_minor": 100, "rounding": rounding})
    api.enroll(program, "C1")
    earned = {}
    for spend in expected:
        r = api.purchase(program, f"O{spend}", "C1", [{"sku": "A", "unit_price_minor": spend}])
        assert r.status_code == 201, r.text
        earned[spend] = r.json()["points_earned"]
    assert earned == expected
    assert api.balance(program, "ext:C1")["balance"] == sum(expected.values())


def test_rounding_happens_once_per_order_not_per_line(api):
    program = _program(api, earn={"points": 1, "per_spend_minor": 100, "rounding": "floor"})
    api.enroll(program, "C1")
    # Three lines of 0.60 EUR: per line each would floor to 0, the order's 1.80 EUR gives 1.
    r = api.purchase(program, "O1", "C1", [{"unit_price_minor": 60}] * 3)
    assert r.status_code == 201, r.text
    assert r.json()["points_earned"] == 1
    assert [li["points"] for li in r.json()["lines"]] == [1, 0, 0]


def test_discounts_reduce_the_earn_base(api):
    program = _program(api, earn={"points": 2, "per_spend_minor": 100, "rounding": "floor"})
    api.enroll(program, "C1")
    r = api.purchase(
        program,
        "O1",
        "C1",
        [
            {"line_id": "L1", "quantity": 3, "unit_price_minor": 1000, "discount_minor": 550},
            {"line_id": "L2", "unit_price_minor": 500, "discount_minor": 500},
            {"line_id": "L3", "unit_price_minor": 1000},
        ],
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["base_minor"] == 2450 + 0 + 1000
    assert body["points_earned"] == 69
    assert [(li["base_minor"], li["points"]) for li in body["lines"]] == [
        (2450, 49),
        (0, 0),
        (1000, 20),
    ]

    body = purchase_body("O2", "C1", [{"unit_price_minor": 500, "discount_minor": 501}])
    body["total_minor"] = 0
    body = assert_problem(post_event(api, program, body), 422, "validation_error")
    assert error_fields(body) == ["purchase.lines[0]"]
    assert api.balance(program, "ext:C1")["balance"] == 69


def test_order_without_lines_earns_on_its_total_and_small_orders_post_nothing(api):
    program = _program(api)
    api.enroll(program, "C1")
    body = purchase_body("O1", "C1", [])
    body["total_minor"] = 2599
    r = post_event(api, program, body)
    assert r.status_code == 201, r.text
    assert (r.json()["points_earned"], r.json()["base_minor"], r.json()["lines"]) == (25, 2599, [])

    r = api.purchase(program, "O2", "C1", [{"unit_price_minor": 99}])
    assert r.status_code == 201, r.text
    assert (r.json()["points_earned"], r.json()["entry_id"], r.json()["lot"]) == (0, None, None)
    assert [e["source"]["id"] for e in ledger(api, program, "ext:C1")] == ["O1"]


def test_purchase_by_engine_member_id(api):
    program = _program(api)
    member = api.enroll(program, "C1")
    body = purchase_body("O1", "C1", [{"unit_price_minor": 700}])
    body["member"] = {"id": member}
    r = post_event(api, program, body)
    assert r.status_code == 201, r.text
    assert r.json()["member_id"] == member
    assert api.balance(program, "ext:C1")["balance"] == 7

    for ref in ({"id": member, "external_id": "C1"}, {}):
        body = purchase_body("O2", "C1", [{"unit_price_minor": 700}])
        body["member"] = ref
        assert error_fields(
            assert_problem(post_event(api, program, body), 422, "validation_error")
        ) == ["purchase.member"]
    assert api.balance(program, member)["balance"] == 7


def test_first_purchase_auto_enrolls_when_the_program_says_so(api):
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    r = api.purchase(program, "O1", "NEW-1", [{"unit_price_minor": 1200}])
    assert r.status_code == 201, r.text
    assert r.json()["member_enrolled"] is True
    assert r.json()["points_earned"] == 12
    member = api.request("GET", f"/v1/programs/{program}/members/ext:NEW-1").json()
    assert member["id"] == r.json()["member_id"]
    assert member["enrollment_source"] == "auto_enroll"
    again = api.purchase(program, "O2", "NEW-1", [{"unit_price_minor": 300}])
    assert again.json()["member_enrolled"] is False
    assert again.json()["member_id"] == member["id"]
    assert api.balance(program, "ext:NEW-1")["balance"] == 15

    # Only an external id can enrol: an unknown engine id is not invented.
    body = purchase_body("O3", "x", [{"unit_price_minor": 1200}])
    body["member"] = {"id": "mbr_01ZZZZZZZZZZZZZZZZZZZZZZZZ"}
    assert_problem(post_event(api, program, body), 404, "member_not_found")
    items = api.request("GET", f"/v1/programs/{program}/members").json()["items"]
    assert [m["external_id"] for m in items] == ["NEW-1"]


def test_purchase_for_an_unknown_member_is_404_without_auto_enroll(api):
    program = api.create_program()
    r = api.purchase(program, "O1", "NEW-1", [{"unit_price_minor": 1200}])
    body = assert_problem(r, 404, "member_not_found")
    assert body["member"] == "ext:NEW-1"
    assert_problem(
        api.request("GET", f"/v1/programs/{program}/members/ext:NEW-1"), 404, "member_not_found"
    )
    # Nothing was recorded: once the member exists, the same event earns.
    api.enroll(program, "NEW-1")
    r = api.purchase(program, "O1", "NEW-1", [{"unit_price_minor": 1200}])
    assert r.status_code == 201, r.text
    assert "idempotent-replayed" not in r.headers
    assert r.json()["points_earned"] == 12


def test_currency_mismatch_is_refused(api):
    program = _program(api)
    api.enroll(program, "C1")
    r = post_event(
        api, program, purchase_body("O1", "C1", [{"unit_price_minor": 1000}], currency="USD")
    )
    body = assert_problem(r, 422, "currency_mismatch")
    assert (body["expected_currency"], body["received_currency"]) == ("EUR", "USD")
    assert api.balance(program, "ext:C1")["balance"] == 0
    assert ledger(api, program, "ext:C1") == []


def test_replaying_an_event_returns_the_first_response_and_posts_once(api):
    program = _program(api)
    api.enroll(program, "C1")
    body = purchase_body("O1", "C1", [{"sku": "A", "unit_price_minor": 1000}])
    first = post_event(api, program, body)
    again = post_event(api, program, body)
    assert first.status_code == again.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert api.balance(program, "ext:C1")["balance"] == 10
    assert [e["points"] for e in ledger(api, program, "ext:C1")] == [10]


def test_same_event_id_with_a_different_body_is_a_conflict(api):
    program = _program(api)
    api.enroll(program, "C1")
    assert (
        post_event(
            api, program, purchase_body("O1", "C1", [{"unit_price_minor": 1000}])
        ).status_code
        == 201
    )
    r = post_event(api, program, purchase_body("O1", "C1", [{"unit_price_minor": 9000}]))
    # docs/errors.md: `key` names the event id (docs say with its `event:purchase:` prefix).
    assert assert_problem(r, 409, "idempotency_conflict")["key"] in ("event:purchase:O1", "O1")
    assert api.balance(program, "ext:C1")["balance"] == 10
    assert len(ledger(api, program, "ext:C1")) == 1


def test_the_same_order_id_in_two_programs_is_two_orders(api):
    a = _program(api)
    b = api.create_program(name="B")
    api.enroll(a, "C1")
    api.enroll(b, "C1")
    assert api.purchase(a, "O1", "C1", [{"unit_price_minor": 1000}]).status_code == 201
    r = api.purchase(b, "O1", "C1", [{"unit_price_minor": 3000}])
    assert r.status_code == 201, r.text
    assert "idempotent-replayed" not in r.headers
    assert (api.balance(a, "ext:C1")["balance"], api.balance(b, "ext:C1")["balance"]) == (10, 30)


# --- returns ----------------------------------------------------------------------------

ORDER_LINES = [
    {"line_id": "L1", "sku": "SHIRT", "quantity": 2, "unit_price_minor": 1000},
    {"line_id": "L2", "sku": "SOCKS", "quantity": 1, "unit_price_minor": 500},
]


def _ordered(api: Any, **points: Any) -> tuple[str, str, dict[str, Any]]:
    program = _program(api, **points)
    member = api.enroll(program, "C1")
    r = api.purchase(program, "O1", "C1", ORDER_LINES)
    assert r.status_code == 201, r.text
    assert [li["points"] for li in r.json()["lines"]] == [20, 5]
    return program, member, r.json()


def test_return_some_units_of_a_line_by_line_id(api):
    program, member, purchase = _ordered(api)
    r = post_event(api, program, return_body("R1", "O1", [{"line_id": "L1", "quantity": 1}]))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["type"] == "return"
    assert (body["return_id"], body["order_id"], body["member_id"]) == ("R1", "O1", member)
    assert body["points_reversed"] == 10
    assert body["points_taken"] == 10
    assert body["debt_added"] == 0
    assert body["points_written_off"] == 0
    assert body["lines"] == [{"line_id": "L1", "quantity": 1, "points": 10}]
    assert body["balance"]["balance"] == 15
    entry = ledger(api, program, member)[0]
    assert entry["id"] == body["entry_id"]
    assert entry["kind"] == "return"
    assert entry["points"] == -10
    assert entry["source"] == {"type": "return", "id": "R1"}
    assert entry["reverses_entry_id"] == purchase["entry_id"]


def test_return_by_sku(api):
    program, member, _ = _ordered(api)
    r = post_event(api, program, return_body("R1", "O1", [{"sku": "SOCKS"}]))
    assert r.status_code == 201, r.text
    assert r.json()["lines"] == [{"line_id": "L2", "quantity": 1, "points": 5}]
    assert api.balance(program, member)["balance"] == 20


def test_return_of_the_whole_order_takes_back_what_is_left(api):
    program, member, _ = _ordered(api)
    assert post_event(api, program, return_body("R1", "O1", [{"line_id": "L1"}])).status_code == 201
    r = post_event(api, program, return_body("R2", "O1"))
    assert r.status_code == 201, r.text
    assert r.json()["points_reversed"] == 15
    assert r.json()["lines"] == [
        {"line_id": "L1", "quantity": 1, "points": 10},
        {"line_id": "L2", "quantity": 1, "points": 5},
    ]
    assert api.balance(program, member)["balance"] == 0
    # Returning the whole order again takes nothing more.
    r = post_event(api, program, return_body("R3", "O1"))
    assert r.status_code == 201, r.text
    assert (r.json()["points_reversed"], r.json()["entry_id"], r.json()["lines"]) == (0, None, [])
    assert api.balance(program, member)["balance"] == 0
    assert [e["points"] for e in ledger(api, program, member)] == [-15, -10, 25]


def test_return_of_an_order_without_lines(api):
    program = _program(api)
    api.enroll(program, "C1")
    body = purchase_body("O1", "C1", [])
    body["total_minor"] = 4200
    assert post_event(api, program, body).status_code == 201
    r = post_event(api, program, return_body("R1", "O1"))
    assert r.status_code == 201, r.text
    assert r.json()["points_reversed"] == 42
    assert api.balance(program, "ext:C1")["balance"] == 0


def test_returning_every_unit_in_steps_takes_back_exactly_the_lines_points(api):
    program = _program(api)
    member = api.enroll(program, "C1")
    lines = [
        {"line_id": "L1", "sku": "MUG", "quantity": 3, "unit_price_minor": 334},
        {"line_id": "L2", "sku": "CUP", "unit_price_minor": 250},
        {"line_id": "L3", "sku": "CUP", "unit_price_minor": 250},
    ]
    r = api.purchase(program, "O1", "C1", lines)
    assert r.status_code == 201, r.text
    assert [li["points"] for li in r.json()["lines"]] == [10, 3, 2]
    taken, shares = [], []
    for n in range(3):
        r = post_event(api, program, return_body(f"R{n}", "O1", [{"sku": "MUG"}]))
        assert r.status_code == 201, r.text
        taken.append(r.json()["points_reversed"])
        shares.append(r.json()["lines"][0]["points"])
    # Each step takes back what the order earned less what the rest earns alone (15 - 11,
    # 11 - 8, 8 - 5); the line's own share is reported per unit (3, 3, 4). Both add up to
    # the line's 10 points.
    assert (taken, shares) == ([4, 3, 3], [3, 3, 4])
    # Two units of a SKU that sits on two lines come from both lines, in order.
    r = post_event(api, program, return_body("R9", "O1", [{"sku": "CUP", "quantity": 2}]))
    assert r.status_code == 201, r.text
    assert r.json()["lines"] == [
        {"line_id": "L2", "quantity": 1, "points": 3},
        {"line_id": "L3", "quantity": 1, "points": 2},
    ]
    assert api.balance(program, member)["balance"] == 0


def test_return_exceeding_the_purchased_quantity_is_refused(api):
    program, member, _ = _ordered(api)
    r = post_event(api, program, return_body("R1", "O1", [{"line_id": "L1", "quantity": 3}]))
    body = assert_problem(r, 422, "return_exceeds_purchase")
    assert (body["line"], body["quantity_returnable"], body["quantity_requested"]) == ("L1", 2, 3)

    assert post_event(api, program, return_body("R2", "O1", [{"sku": "SHIRT"}])).status_code == 201
    r = post_event(api, program, return_body("R3", "O1", [{"sku": "SHIRT", "quantity": 2}]))
    body = assert_problem(r, 422, "return_exceeds_purchase")
    assert (body["line"], body["quantity_returnable"], body["quantity_requested"]) == (
        "SHIRT",
        1,
        2,
    )
    assert api.balance(program, member)["balance"] == 15


def test_return_naming_the_same_line_twice_cannot_exceed_it(api):
    program, member, _ = _ordered(api)
    lines = [{"line_id": "L2"}, {"sku": "SOCKS"}]
    r = post_event(api, program, return_body("R1", "O1", lines))
    body = assert_problem(r, 422, "return_exceeds_purchase")
    assert (body["line"], body["quantity_returnable"]) == ("SOCKS", 0)
    assert api.balance(program, member)["balance"] == 25


def test_returns_that_do_not_match_the_order_are_refused(api):
    program, member, _ = _ordered(api)
    r = post_event(api, program, return_body("R1", "O1", [{"line_id": "L9"}]))
    assert assert_problem(r, 422, "unknown_order_line")["line"] == "L9"
    r = post_event(api, program, return_body("R2", "O1", [{"sku": "HAT"}]))
    assert assert_problem(r, 422, "unknown_order_line")["line"] == "HAT"
    r = post_event(api, program, return_body("R3", "O-nope"))
    assert assert_problem(r, 404, "order_not_found")["order_id"] == "O-nope"
    api.enroll(program, "C2")
    body = return_body("R4", "O1")
    body["member"] = {"external_id": "C2"}
    assert_problem(post_event(api, program, body), 422, "member_mismatch")
    body["member"] = {"external_id": "C1"}
    r = post_event(api, program, body)
    assert r.status_code == 201, r.text
    assert r.json()["points_reversed"] == 25
    assert api.balance(program, member)["balance"] == 0


def test_replayed_return_takes_points_once(api):
    program, member, _ = _ordered(api)
    body = return_body("R1", "O1", [{"line_id": "L1", "quantity": 1}])
    first = post_event(api, program, body)
    again = post_event(api, program, body)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert api.balance(program, member)["balance"] == 15


def test_return_after_spending_with_allow_debt_leaves_a_debt_repaid_by_next_earnings(api):
    program = _program(api, negative_balance="allow_debt")
    member = api.enroll(program, "C1")
    assert api.purchase(program, "O1", "C1", [{"unit_price_minor": 10000}]).status_code == 201
    assert redeem(api, program, member, 80).status_code == 201

    r = post_event(api, program, return_body("R1", "O1"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["points_reversed"] == 100
    assert body["points_taken"] == 100
    assert body["debt_added"] == 80
    assert body["points_written_off"] == 0
    balance = api.balance(program, member)
    assert (balance["balance"], balance["available"], balance["debt"]) == (-80, 0, 80)
    assert_problem(redeem(api, program, member, 1), 422, "insufficient_points")

    r = api.purchase(program, "O2", "C1", [{"unit_price_minor": 5000}])
    assert r.status_code == 201, r.text
    assert r.json()["points_earned"] == 50
    assert r.json()["lot"]["debt_repaid"] == 50
    balance = api.balance(program, member)
    assert (balance["balance"], balance["available"], balance["debt"]) == (-30, 0, 30)

    r = api.purchase(program, "O3", "C1", [{"unit_price_minor": 5000}])
    assert r.json()["lot"]["debt_repaid"] == 30
    balance = api.balance(program, member)
    assert (balance["balance"], balance["available"], balance["debt"]) == (20, 20, 0)
    r = redeem(api, program, member, 20)
    assert r.status_code == 201, r.text
    assert r.json()["balance"]["balance"] == 0


def test_return_after_spending_with_take_available_writes_the_rest_off(api):
    program = _program(api, negative_balance="take_available")
    member = api.enroll(program, "C1")
    assert api.purchase(program, "O1", "C1", [{"unit_price_minor": 10000}]).status_code == 201
    assert redeem(api, program, member, 80).status_code == 201

    r = post_event(api, program, return_body("R1", "O1"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["points_reversed"] == 100
    assert body["points_taken"] == 20
    assert body["debt_added"] == 0
    assert body["points_written_off"] == 80
    balance = api.balance(program, member)
    assert (balance["balance"], balance["available"], balance["debt"]) == (0, 0, 0)
    entry = ledger(api, program, member)[0]
    assert (entry["kind"], entry["points"]) == ("return", -20)
    assert entry["details"]["points_written_off"] == 80

    r = api.purchase(program, "O2", "C1", [{"unit_price_minor": 5000}])
    assert r.json()["lot"]["debt_repaid"] == 0
    assert api.balance(program, member)["balance"] == 50


def test_return_takes_from_the_members_other_points_first_before_debt(api):
    program = _program(api, negative_balance="allow_debt")
    member = api.enroll(program, "C1")
    api.purchase(program, "O1", "C1", [{"unit_price_minor": 10000}])
    api.purchase(program, "O2", "C1", [{"unit_price_minor": 5000}])
    assert redeem(api, program, member, 120).status_code == 201  # 30 points left, all from O2

    r = post_event(api, program, return_body("R1", "O1"))
    assert r.status_code == 201, r.text
    assert (r.json()["points_taken"], r.json()["debt_added"]) == (100, 70)
    balance = api.balance(program, member)
    assert (balance["balance"], balance["debt"]) == (-70, 70)


def _late_purchase(api: Any, program: str, order_id: str, days_ago: int) -> dict[str, Any]:
    body = purchase_body(order_id, "C1", [{"unit_price_minor": 4200}])
    body["occurred_at"] = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
    r = post_event(api, program, body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_a_late_purchase_past_its_expiry_earns_points_that_are_already_expired(api):
    program = _program(api, expiry={"policy": "after_days", "days": 30})
    member = api.enroll(program, "C1")
    purchase = _late_purchase(api, program, "O1", days_ago=60)
    assert purchase["points_earned"] == 42
    balance = api.balance(program, member)
    assert (balance["balance"], balance["available"], balance["debt"]) == (42, 0, 0)
    assert balance["expiring"] == [
        {"expires_at": purchase["lot"]["expires_at"], "points": 42, "expired": True}
    ]
    body = assert_problem(redeem(api, program, member, 1), 422, "insufficient_points")
    assert body["points_available"] == 0


def test_returning_a_purchase_whose_points_expired_unspent_creates_no_debt(api):
    """The member never used the 42 points: they expired. Returning the purchase must not
    charge them a second time as a debt."""
    program = _program(
        api, expiry={"policy": "after_days", "days": 30}, negative_balance="allow_debt"
    )
    member = api.enroll(program, "C1")
    _late_purchase(api, program, "O1", days_ago=60)
    r = post_event(api, program, return_body("R1", "O1"))
    assert r.status_code == 201, r.text
    assert (r.json()["points_taken"], r.json()["debt_added"]) == (0, 0)
    balance = api.balance(program, member)
    assert (balance["balance"], balance["available"], balance["debt"]) == (0, 0, 0)


def test_returning_a_purchase_whose_points_expired_leaves_other_points_alone(api):
    program = _program(
        api, expiry={"policy": "after_days", "days": 30}, negative_balance="allow_debt"
    )
    member = api.enroll(program, "C1")
    credit(api, program, member, 100)
    _late_purchase(api, program, "O1", days_ago=60)
    r = post_event(api, program, return_body("R1", "O1"))
    assert r.status_code == 201, r.text
    assert r.json()["points_taken"] == 0
    balance = api.balance(program, member)
    assert (balance["balance"], balance["available"], balance["debt"]) == (100, 100, 0)


# --- custom actions ---------------------------------------------------------------------


def test_custom_action_is_recorded_with_zero_points(api):
    program = _program(api)
    member = api.enroll(program, "C1")
    body = {
        "type": "action",
        "id": "A1",
        "member": {"external_id": "C1"},
        "occurred_at": "2026-01-15T10:00:00Z",
        "action": "app_download",
        "attributes": {"platform": "ios"},
    }
    r = post_event(api, program, body)
    assert r.status_code == 201, r.text
    assert r.json()["type"] == "action"
    assert r.json()["action"] == "app_download"
    assert r.json()["id"] == "A1"
    assert r.json()["member_id"] == member
    assert r.json()["points_earned"] == 0
    assert r.json()["event_id"].startswith("evt_")
    again = post_event(api, program, body)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == r.json()
    assert api.balance(program, member)["balance"] == 0
    assert ledger(api, program, member) == []


def test_custom_action_auto_enrolls_when_the_program_does(api):
    """docs/program-document.md: with auto-enrolment on, a purchase *or action* naming an
    unknown external id enrolls the member."""
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    body = {
        "type": "action",
        "id": "A1",
        "member": {"external_id": "NEW-1"},
        "occurred_at": "2026-01-15T10:00:00Z",
        "action": "newsletter_signup",
    }
    r = post_event(api, program, body)
    assert r.status_code == 201, r.text
    assert (r.json()["member_enrolled"], r.json()["points_earned"]) == (True, 0)
    member = api.request("GET", f"/v1/programs/{program}/members/ext:NEW-1").json()
    assert (member["id"], member["enrollment_source"]) == (r.json()["member_id"], "auto_enroll")
    assert api.balance(program, member["id"])["balance"] == 0


def test_event_documents_are_validated(api):
    program = _program(api)
    base = {
        "type": "action",
        "id": "A1",
        "member": {"external_id": "C1"},
        "occurred_at": "2026-01-15T10:00:00Z",
        "action": "Bad Name",
    }
    body = assert_problem(post_event(api, program, base), 422, "validation_error")
    assert error_fields(body) == ["action.action"]
    r = post_event(api, program, {**base, "action": "review"})
    assert_problem(r, 404, "member_not_found")

    api.enroll(program, "C1")
    body = purchase_body("O1", "C1", [{"unit_price_minor": 100}])
    r = post_event(api, program, {**body, "type": "refund"})
    assert_problem(r, 422, "validation_error")
    r = post_event(api, program, {**body, "occurred_at": "2026-01-15T10:00:00"})
    assert error_fields(assert_problem(r, 422, "validation_error")) == ["purchase.occurred_at"]
    assert api.balance(program, "ext:C1")["balance"] == 0
