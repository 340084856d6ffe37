"""Member discounts at checkout: the quote offers, per line, the best of the member discount,
the cumulative discount by spend so far and the tier discount; the purchase records what the
checkout granted."""

from __future__ import annotations

DISCOUNTS = {
    "member": {"percent": 5, "categories": ["coffee"]},
    "cumulative": {
        "brackets": [
            {"from_spend_minor": 0, "percent": 0},
            {"from_spend_minor": 10_000, "percent": 3},
            {"from_spend_minor": 50_000, "percent": 10},
        ]
    },
}
CART = {
    "currency": "EUR",
    "member": {"external_id": "C1"},
    "lines": [
        {"line_id": "coffee", "category": "coffee", "unit_price_minor": 1000},
        {"line_id": "cake", "category": "pastry", "unit_price_minor": 500},
        {"line_id": "ship", "kind": "shipping", "unit_price_minor": 400},
    ],
}


def _quote(api, program, cart=CART):
    r = api.request("POST", f"/v1/programs/{program}/quote", json=cart)
    assert r.status_code == 200, r.text
    return r.json()["discounts"]


def test_each_line_gets_the_best_discount_and_the_cumulative_one_rises_with_spend(api):
    program = api.create_program(discounts=DISCOUNTS, enrollment={"auto_enroll_on_purchase": True})
    api.enroll(program, "C1")
    offered = _quote(api, program)
    # No spend yet: only the member discount, on coffee only; shipping never.
    assert offered["lines"] == [
        {"line_id": "coffee", "percent": 5, "source": "member", "amount_minor": 50}
    ]
    api.purchase(program, "O1", "C1", [{"unit_price_minor": 12_000}])
    offered = _quote(api, program)
    assert offered["cumulative_spend_minor"] == 12_000
    assert [(d["line_id"], d["percent"], d["source"]) for d in offered["lines"]] == [
        ("coffee", 5, "member"),
        ("cake", 3, "cumulative"),
    ]
    assert offered["amount_minor"] == 50 + 15
    api.purchase(program, "O2", "C1", [{"unit_price_minor": 40_000}])
    offered = _quote(api, program)
    assert [(d["line_id"], d["percent"]) for d in offered["lines"]] == [
        ("coffee", 10),
        ("cake", 10),
    ]
    # A return lowers the spend the brackets read.
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        json={
            "type": "return",
            "id": "R1",
            "order_id": "O2",
            "occurred_at": "2026-01-01T00:00:00Z",
        },
    )
    assert r.status_code == 201, r.text
    assert _quote(api, program)["cumulative_spend_minor"] == 12_000
    guest = {k: v for k, v in CART.items() if k != "member"}
    assert _quote(api, program, guest) is None


def test_a_tier_discount_competes_with_the_others_and_the_purchase_records_the_grant(api):
    program = api.create_program(
        discounts={"member": {"percent": 5}},
        enrollment={"auto_enroll_on_purchase": True},
        tiers={
            "metric": "spend",
            "levels": [
                {"id": "base", "name": "Base", "threshold": 0},
                {
                    "id": "gold",
                    "name": "Gold",
                    "threshold": 10_000,
                    "benefits": {"discount_percent": 8},
                },
            ],
        },
    )
    api.purchase(program, "O1", "C1", [{"unit_price_minor": 10_000}])
    offered = _quote(api, program)
    assert [(d["line_id"], d["percent"], d["source"]) for d in offered["lines"]] == [
        ("coffee", 8, "tier"),
        ("cake", 8, "tier"),
    ]
    lines = [
        {"line_id": "coffee", "unit_price_minor": 1000, "discount_minor": 80},
        {"line_id": "cake", "unit_price_minor": 500, "discount_minor": 40},
    ]
    r = api.purchase(program, "O2", "C1", lines, member_discount_minor=120)
    assert r.status_code == 201, r.text
    assert r.json()["member_discount_minor"] == 120
    too_much = api.purchase(program, "O3", "C1", lines, member_discount_minor=121)
    assert too_much.status_code == 422
