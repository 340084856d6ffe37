"""The quote endpoint: prices a cart for a member or a guest and records nothing."""

from __future__ import annotations


def test_a_guest_quote_prices_a_single_product_and_records_nothing(api):
    program = api.create_program(
        rules=[
            {
                "id": "wine",
                "name": "Wine x3",
                "trigger": "purchase",
                "conditions": {"include": {"categories": ["wine"]}},
                "effect": {"type": "multiplier", "factor_percent": 300},
            }
        ]
    )
    r = api.request(
        "POST",
        f"/v1/programs/{program}/quote",
        json={
            "currency": "EUR",
            "lines": [{"sku": "BORDEAUX", "category": "wine", "unit_price_minor": 1590}],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["points_earned"], body["member_id"], body["balance_after"]) == (45, None, None)
    assert body["lines"][0]["rules"] == [
        {"rule": "base", "points": 15},
        {"rule": "wine", "points": 30},
    ]
    assert api.request("GET", f"/v1/programs/{program}/members").json()["items"] == []


def test_a_read_key_can_quote_but_a_quote_for_an_unknown_member_is_refused(api):
    from loyalty.application.access import Scope, create_api_key
    from tests.conftest import NOW

    program = api.create_program()
    reader = create_api_key(
        api.engine, tenant_name="acme", name="shop", scopes=[Scope.READ], program_id=None, now=NOW
    )
    cart = {"currency": "EUR", "lines": [{"unit_price_minor": 500}]}
    r = api.request("POST", f"/v1/programs/{program}/quote", json=cart, token=reader.token)
    assert r.status_code == 200 and r.json()["points_earned"] == 5
    r = api.request(
        "POST", f"/v1/programs/{program}/quote", json={**cart, "member": {"external_id": "nobody"}}
    )
    assert r.status_code == 404 and r.json()["code"] == "member_not_found"
    r = api.request("POST", f"/v1/programs/{program}/quote", json={**cart, "currency": "USD"})
    assert r.status_code == 422 and r.json()["code"] == "currency_mismatch"


def test_a_quote_prices_by_a_new_program_version_at_once(api):
    # Parsed program settings are kept in memory per version: the next quote after an update
    # must use the new one, never what the previous quote parsed.
    program = api.create_program()
    cart = {"currency": "EUR", "lines": [{"unit_price_minor": 500}]}
    first = api.request("POST", f"/v1/programs/{program}/quote", json=cart).json()
    assert (first["points_earned"], first["program_version"]) == (5, 1)
    r = api.request(
        "PUT",
        f"/v1/programs/{program}",
        json={"name": "Test program", "currency": "EUR", "points": {"earn": {"points": 3}}},
    )
    assert r.status_code == 200, r.text
    second = api.request("POST", f"/v1/programs/{program}/quote", json=cart).json()
    assert (second["points_earned"], second["program_version"]) == (15, 2)
