"""Cashback: a money wallet credited as a share of eligible spend, with lots and an expiry of
its own, reversed exactly by returns, and audited like points."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loyalty.application.audit import audit_ledger
from loyalty.application.expiry import expire_due_lots
from tests.e2e.test_api_holds import _capture
from tests.e2e.test_api_support import assert_problem

CASHBACK = {
    "rate_bp": 250,
    "exclude": {"categories": ["tobacco"]},
    "expiry": {"policy": "after_days", "days": 30},
}

LINES = [
    {"line_id": "a", "sku": "A", "quantity": 2, "unit_price_minor": 1000, "category": "food"},
    {
        "line_id": "b",
        "sku": "B",
        "quantity": 1,
        "unit_price_minor": 4000,
        "discount_minor": 400,
        "category": "clothes",
    },
    {"line_id": "t", "sku": "T", "quantity": 1, "unit_price_minor": 900, "category": "tobacco"},
    {"line_id": "s", "sku": "SHIP", "quantity": 1, "unit_price_minor": 500, "kind": "shipping"},
]


def _program(api, **overrides):
    document = {"enrollment": {"auto_enroll_on_purchase": True}, "cashback": CASHBACK}
    return api.create_program(**{**document, **overrides})


def _return(api, program, return_id, lines, order_id="O1"):
    return api.request(
        "POST",
        f"/v1/programs/{program}/events",
        json={
            "type": "return",
            "id": return_id,
            "order_id": order_id,
            "occurred_at": datetime.now(UTC).isoformat(),
            "lines": lines,
        },
    )


def test_a_purchase_credits_cashback_on_product_lines_after_discounts(api):
    program = _program(api)
    r = api.purchase(program, "O1", "C1", LINES)
    assert r.status_code == 201, r.text
    body = r.json()
    # 2 x 10.00 + (40.00 - 4.00) = 56.00 eligible; tobacco is excluded, shipping never earns.
    assert body["cashback"]["eligible_minor"] == 5600
    assert (body["cashback"]["earned_minor"], body["cashback"]["rate_bp"]) == (140, 250)
    lot = body["cashback"]["lot"]
    assert lot["amount_minor"] == 140
    assert lot["expires_at"] is not None
    # Cashback is a wallet of its own: points are untouched by it.
    assert body["points_earned"] == 65
    cash = api.balance(program, "ext:C1")["cashback"]
    assert (cash["balance_minor"], cash["available_minor"], cash["debt_minor"]) == (140, 140, 0)
    assert [b["amount_minor"] for b in cash["expiring"]] == [140]
    assert audit_ledger(api.engine) == []


def test_a_program_without_cashback_shows_no_cashback_wallet(api):
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    r = api.purchase(program, "O1", "C1", LINES)
    assert r.json()["cashback"] is None
    assert api.balance(program, "ext:C1")["cashback"] is None


def test_returns_take_back_exactly_what_the_rest_of_the_basket_no_longer_earns(api):
    program = _program(api)
    assert api.purchase(program, "O1", "C1", LINES).status_code == 201
    first = _return(api, program, "R1", [{"line_id": "a", "quantity": 1}])
    assert first.status_code == 201, first.text
    # The rest earns 2.5% of 46.00 = 1.15: 0.25 comes back.
    assert first.json()["cashback"]["charged_minor"] == 25
    assert first.json()["cashback"]["taken_minor"] == 25
    assert api.balance(program, "ext:C1")["cashback"]["balance_minor"] == 115
    # Returning tobacco changes no cashback.
    tobacco = _return(api, program, "R2", [{"line_id": "t", "quantity": 1}])
    assert tobacco.json()["cashback"]["charged_minor"] == 0
    second = _return(api, program, "R3", [{"line_id": "b", "quantity": 1}])
    assert second.json()["cashback"]["charged_minor"] == 90
    assert api.balance(program, "ext:C1")["cashback"]["balance_minor"] == 25
    last = _return(api, program, "R4", [{"line_id": "a", "quantity": 1}])
    assert last.json()["cashback"]["charged_minor"] == 25
    assert last.json()["cashback"]["reversed_minor"] == 140
    assert api.balance(program, "ext:C1")["cashback"]["balance_minor"] == 0
    assert audit_ledger(api.engine) == []


def test_rounding_is_once_per_order_and_partial_returns_add_up_to_the_whole(api):
    program = _program(api, cashback={"rate_bp": 333})
    lines = [
        {"line_id": str(i), "sku": f"S{i}", "quantity": 1, "unit_price_minor": 99} for i in range(7)
    ]
    earned = api.purchase(program, "O1", "C1", lines).json()["cashback"]["earned_minor"]
    assert earned == 693 * 333 // 10_000
    charged = [
        _return(api, program, f"R{i}", [{"line_id": str(i), "quantity": 1}]).json()["cashback"][
            "charged_minor"
        ]
        for i in range(7)
    ]
    assert sum(charged) == earned
    assert api.balance(program, "ext:C1")["cashback"]["balance_minor"] == 0


def test_cashback_expires_by_its_own_policy_and_a_later_return_takes_nothing_expired(api):
    program = _program(api, points={"expiry": {"policy": "after_days", "days": 365}})
    assert api.purchase(program, "O1", "C1", LINES).status_code == 201
    report = expire_due_lots(api.engine, now=datetime.now(UTC) + timedelta(days=31))
    assert report.lots_expired == 1
    assert report.points_expired == 0
    balance = api.balance(program, "ext:C1")
    assert balance["cashback"]["balance_minor"] == 0
    assert balance["balance"] == 65
    statement = api.request(
        "GET", f"/v1/programs/{program}/members/ext:C1/ledger", params={"limit": 10}
    ).json()
    assert [e["kind"] for e in statement["items"]] == ["earn"]
    cash_statement = api.request(
        "GET",
        f"/v1/programs/{program}/members/ext:C1/ledger",
        params={"limit": 10, "wallet": "cashback"},
    ).json()
    assert [(e["kind"], e["points"]) for e in cash_statement["items"]] == [
        ("expire", -140),
        ("cashback", 140),
    ]
    # Nothing is taken from the member for cashback that already expired.
    r = _return(api, program, "R1", [{"line_id": "a", "quantity": 2}])
    assert r.json()["cashback"]["charged_minor"] == 0
    assert api.balance(program, "ext:C1")["cashback"]["balance_minor"] == 0
    assert expire_due_lots(api.engine, now=datetime.now(UTC) + timedelta(days=31)).lots_expired == 0
    assert audit_ledger(api.engine) == []


def test_tier_rates_pay_more_to_higher_tiers(api):
    program = _program(
        api,
        tiers={
            "metric": "spend",
            "window": {"type": "lifetime"},
            "levels": [
                {"id": "base", "name": "Base", "threshold": 0},
                {"id": "gold", "name": "Gold", "threshold": 10_000},
            ],
        },
        cashback={"rate_bp": 100, "rate_bp_by_tier": {"gold": 500}},
    )
    first = api.purchase(program, "O1", "C1", [{"sku": "A", "unit_price_minor": 10_000}])
    assert first.json()["cashback"]["rate_bp"] == 100
    second = api.purchase(program, "O2", "C1", [{"sku": "A", "unit_price_minor": 1_000}])
    assert (second.json()["cashback"]["rate_bp"], second.json()["cashback"]["earned_minor"]) == (
        500,
        50,
    )


def test_cashback_settings_are_validated_when_the_program_is_saved(api):
    for cashback, field in [
        ({"rate_bp": 10_001}, "cashback.rate_bp"),
        ({"rate_bp": 100, "expiry": {"policy": "inactivity", "days": 30}}, "cashback"),
        ({"rate_bp": 100, "rate_bp_by_tier": {"gold": 200}}, None),
    ]:
        r = api.request(
            "POST", "/v1/programs", json={"name": "P", "currency": "EUR", "cashback": cashback}
        )
        assert_problem(r, 422, "validation_error")
        if field:
            assert any(e["field"].startswith(field) for e in r.json()["errors"]), r.json()


def _hold(api, program, key, **body):
    return api.request(
        "POST",
        f"/v1/programs/{program}/members/ext:C1/holds",
        json=body,
        headers={"Idempotency-Key": key},
    )


def _member_with_cashback(api, **document):
    program = _program(api, cashback={"rate_bp": 1000}, **document)
    # 10% of 100.00: 10.00 of cashback, and 100 points.
    r = api.purchase(program, "O1", "C1", [{"sku": "A", "unit_price_minor": 10_000}])
    assert r.status_code == 201, r.text
    return program


def test_cashback_pays_part_of_an_order_through_a_hold_and_capture(api):
    program = _member_with_cashback(api)
    r = _hold(api, program, "h1", cashback_minor=700, order_reference="O2")
    assert r.status_code == 201, r.text
    hold = r.json()
    assert (hold["wallet"], hold["points"], hold["status"]) == ("cashback", 700, "held")
    assert hold["balance"]["cashback"]["available_minor"] == 300
    assert hold["balance"]["available"] == 100
    # More than is left is refused, and changes nothing.
    over = _hold(api, program, "h2", cashback_minor=301, order_reference="O3")
    assert_problem(over, 422, "insufficient_cashback")
    assert over.json()["amount_available_minor"] == 300
    # Capturing a cashback hold with points is refused.
    wrong = _capture(api, program, hold["id"], "c0", points=10)
    assert_problem(wrong, 422, "payment_not_allowed")
    captured = _capture(api, program, hold["id"], "c1", cashback_minor=500)
    assert captured.status_code == 200, captured.text
    cash = captured.json()["balance"]["cashback"]
    assert (cash["balance_minor"], cash["available_minor"]) == (500, 500)
    assert audit_ledger(api.engine) == []


def test_checkout_rules_limit_the_share_an_order_may_pay_and_the_quote_explains_them(api):
    program = _member_with_cashback(
        api,
        points={"value": {"points": 10, "money_minor": 100}},
        checkout={
            "min_order_minor": 1_000,
            "points": {"min_points": 20, "max_share_percent": 50},
            "cashback": {"max_share_percent": 30},
        },
    )
    # Points are worth 0.10 each: half of a 20.00 order is 100 points.
    without_total = _hold(api, program, "h0", points=50, order_reference="O2")
    assert_problem(without_total, 422, "payment_not_allowed")
    assert without_total.json()["reason"] == "order_total_required"
    small = _hold(api, program, "h1", points=50, order_reference="O2", order_total_minor=900)
    assert small.json()["reason"] == "order_below_minimum"
    few = _hold(api, program, "h2", points=10, order_reference="O2", order_total_minor=2_000)
    assert (few.json()["reason"], few.json()["limit"]) == ("below_minimum", 20)
    first = _hold(api, program, "h3", points=60, order_reference="O2", order_total_minor=2_000)
    assert first.status_code == 201, first.text
    # The share counts what earlier holds of the same order took.
    more = _hold(api, program, "h4", points=41, order_reference="O2", order_total_minor=2_000)
    assert (more.json()["reason"], more.json()["limit"]) == ("over_limit", 40)
    cash = _hold(
        api, program, "h5", cashback_minor=601, order_reference="O2", order_total_minor=2_000
    )
    assert (cash.json()["reason"], cash.json()["limit"]) == ("over_limit", 600)
    quote = api.request(
        "POST",
        f"/v1/programs/{program}/quote",
        json={
            "member": {"external_id": "C1"},
            "order_reference": "O2",
            "currency": "EUR",
            "lines": [{"sku": "A", "unit_price_minor": 2_000}],
        },
    )
    assert quote.status_code == 200, quote.text
    options = {o["wallet"]: o for o in quote.json()["payment"]}
    assert (options["points"]["available"], options["points"]["max"]) == (40, 40)
    assert options["points"]["max_value_minor"] == 400
    assert (options["cashback"]["max"], options["cashback"]["reason"]) == (600, None)
    assert quote.json()["cashback_earned_minor"] == 200


def test_a_return_gives_back_what_points_and_cashback_paid_for_the_returned_items(api):
    program = _member_with_cashback(api)
    points_hold = _hold(api, program, "h1", points=60, order_reference="O2").json()
    cash_hold = _hold(api, program, "h2", cashback_minor=400, order_reference="O2").json()
    assert _capture(api, program, points_hold["id"], "c1").status_code == 200
    assert _capture(api, program, cash_hold["id"], "c2").status_code == 200
    lines = [
        {"line_id": "x", "sku": "X", "unit_price_minor": 3_000},
        {"line_id": "y", "sku": "Y", "unit_price_minor": 1_000},
    ]
    assert api.purchase(program, "O2", "C1", lines).status_code == 201
    before = api.balance(program, "ext:C1")
    # A quarter of the order's value comes back: a quarter of what paid for it.
    r = _return(api, program, "R1", [{"line_id": "y", "quantity": 1}], order_id="O2")
    assert r.status_code == 201, r.text
    restored = {p["wallet"]: p["amount"] for p in r.json()["payments_restored"]}
    assert restored == {"points": 15, "cashback": 100}
    after = api.balance(program, "ext:C1")
    # The returned line's own points (10) and cashback (100) are taken back.
    assert after["balance"] == before["balance"] + 15 - 10
    assert after["cashback"]["balance_minor"] == before["cashback"]["balance_minor"] + 100 - 100
    rest = _return(api, program, "R2", [{"line_id": "x", "quantity": 1}], order_id="O2")
    restored = {p["wallet"]: p["amount"] for p in rest.json()["payments_restored"]}
    assert restored == {"points": 45, "cashback": 300}
    # Everything the order was paid with is back, with the original lots' expiry.
    final = api.balance(program, "ext:C1")
    assert final["balance"] == 100
    assert final["cashback"]["balance_minor"] == 1_000
    assert audit_ledger(api.engine) == []


def test_after_a_program_drops_cashback_its_members_cashback_still_shows_and_pays(api):
    """Without cashback the program's purchases take the bulk path and its quote only reads;
    both still answer the member's cashback wallet, as the balance endpoint does."""
    program = _member_with_cashback(api)
    cart = {
        "member": {"external_id": "C1"},
        "currency": "EUR",
        "lines": [{"sku": "A", "unit_price_minor": 2_000}],
    }
    with_cashback = api.request("POST", f"/v1/programs/{program}/quote", json=cart)
    assert with_cashback.json()["cashback_earned_minor"] == 200
    document = api.request("GET", f"/v1/programs/{program}").json()["document"]
    document.pop("cashback")
    changed = api.request("PUT", f"/v1/programs/{program}", json=document)
    assert changed.status_code == 200, changed.text
    batch = api.request(
        "POST",
        f"/v1/programs/{program}/events:batch",
        json={
            "events": [
                {
                    "type": "purchase",
                    "id": "O2",
                    "member": {"external_id": "C1"},
                    "occurred_at": "2026-01-15T11:00:00+00:00",
                    "currency": "EUR",
                    "total_minor": 2_000,
                    "lines": [{"sku": "B", "unit_price_minor": 2_000}],
                }
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    answer = batch.json()["results"][0]
    assert answer["status"] == 201, answer
    balance = api.balance(program, "ext:C1")
    assert balance["cashback"]["balance_minor"] == 1_000
    assert answer["body"]["balance"]["cashback"] == balance["cashback"]
    # The first quote after the change, and the next: the same answer either way.
    quotes = [api.request("POST", f"/v1/programs/{program}/quote", json=cart) for _ in range(2)]
    for quote in quotes:
        assert quote.status_code == 200, quote.text
        options = {o["wallet"]: o for o in quote.json()["payment"]}
        assert options["cashback"]["available"] == balance["cashback"]["available_minor"]
        assert quote.json()["cashback_earned_minor"] is None
        assert quote.json()["points_earned"] == 20
