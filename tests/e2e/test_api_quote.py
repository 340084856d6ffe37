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


def _holding_the_wallet(api, program: str, external_id: str):
    """A transaction of another client that holds the member's points wallet, as a
    redemption does until it commits: on PostgreSQL its row lock, on SQLite the database's
    one write lock. The caller rolls it back."""
    from sqlalchemy import text

    conn = api.engine.connect().execution_options(loyalty_write=True)  # SQLite: IMMEDIATE
    conn.begin()
    conn.execute(
        text(
            "UPDATE wallets SET balance = balance WHERE program_id = :p AND member_id = "
            "(SELECT id FROM members WHERE program_id = :p AND external_id = :e)"
        ),
        {"p": program, "e": external_id},
    )
    return conn


def test_a_quote_neither_waits_for_nor_sees_a_write_in_progress_on_the_member(api):
    """A program whose purchases take the bulk path is quoted from what the database has
    committed, taking no lock: a till can price a cart while the member's wallet is held
    by a redemption (before, the quote waited for it, on SQLite into a 503)."""
    import threading

    program = api.create_program()
    api.enroll(program, "M")
    assert api.purchase(program, "P0", "M", [{"unit_price_minor": 1000}]).status_code == 201
    cart = {
        "currency": "EUR",
        "lines": [{"unit_price_minor": 700}],
        "member": {"external_id": "M"},
    }
    held = _holding_the_wallet(api, program, "M")
    answers = []
    try:
        quoting = threading.Thread(
            target=lambda: answers.append(
                api.request("POST", f"/v1/programs/{program}/quote", json=cart)
            ),
            daemon=True,
        )
        quoting.start()
        quoting.join(timeout=20)
        answered_while_held = not quoting.is_alive()
    finally:
        held.rollback()
        held.close()
    quoting.join(timeout=60)
    assert answered_while_held, "the quote waited for the other transaction"
    r = answers[0]
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["points_earned"] == 7
    assert body["balance_after"] == {"balance": 17, "available": 17, "pending": 0, "debt": 0}
    assert api.balance(program, "ext:M")["balance"] == 10


def test_a_quote_for_a_program_with_capped_rules_still_prices_by_recording_and_rolling_back(
    api,
):
    """Capped rules read and write the member's usage: such a program's quote runs the
    purchase and rolls it back, and says what the cap leaves."""
    program = api.create_program(
        rules=[
            {
                "id": "bonus",
                "name": "Bonus, once a day",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 50},
                "limits": {"per_member": [{"period": "day", "max_count": 1}]},
            }
        ]
    )
    api.enroll(program, "M")
    cart = {
        "currency": "EUR",
        "lines": [{"unit_price_minor": 700}],
        "member": {"external_id": "M"},
    }
    first = api.request("POST", f"/v1/programs/{program}/quote", json=cart)
    assert first.status_code == 200, first.text
    assert first.json()["points_earned"] == 57
    assert api.purchase(program, "P0", "M", [{"unit_price_minor": 700}]).status_code == 201
    again = api.request("POST", f"/v1/programs/{program}/quote", json=cart)
    assert again.status_code == 200, again.text
    assert again.json()["points_earned"] == 7
    assert api.balance(program, "ext:M")["balance"] == 57
