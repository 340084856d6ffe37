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
    # The cart is judged before the member, as a purchase judges it.
    unknown = {**cart, "currency": "USD", "member": {"id": "mbr_nobody"}}
    r = api.request("POST", f"/v1/programs/{program}/quote", json=unknown)
    assert r.status_code == 422 and r.json()["code"] == "currency_mismatch"
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        json={
            **unknown,
            "type": "purchase",
            "id": "O1",
            "total_minor": 500,
            "occurred_at": NOW.isoformat(),
        },
    )
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


def test_a_members_quote_offers_to_pay_with_the_points_they_can_spend_now(api):
    """The quote's payment section counts what the member can spend before the cart: neither
    points still pending nor points past their expiry that the job has not taken yet, less
    what holds of the same order already took; and its balance_after is what the purchase
    then leaves."""
    from datetime import UTC, datetime, timedelta

    program = api.create_program(
        points={"pending_days": 14, "expiry": {"policy": "after_days", "days": 30}},
        rules=[
            {
                "id": "welcome-back",
                "name": "Basket bonus, spendable at once",
                "trigger": "purchase",
                "pending_days": 0,
                "conditions": {"min_total_minor": 5000},
                "effect": {"type": "fixed", "points": 40},
            }
        ],
    )
    api.enroll(program, "M")
    assert api.purchase(program, "P1", "M", [{"unit_price_minor": 6000}]).status_code == 201
    hold = api.request(
        "POST",
        f"/v1/programs/{program}/members/ext:M/holds",
        json={"points": 15, "order_reference": "ORDER-9", "ttl_seconds": 600},
        headers={"Idempotency-Key": "h1"},
    )
    assert hold.status_code == 201, hold.text
    # A till that was offline sends a purchase of 40 days ago: its 9 points are past their
    # expiry on arrival, in the balance until the expiry job runs, but not spendable.
    long_ago = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    late = api.purchase(program, "OLD", "M", [{"unit_price_minor": 900}], occurred_at=long_ago)
    assert late.status_code == 201, late.text
    before = api.balance(program, "ext:M")
    assert (before["balance"], before["pending"], before["available"]) == (94, 60, 25)
    cart = {
        "currency": "EUR",
        "lines": [{"unit_price_minor": 2500}],
        "member": {"external_id": "M"},
        "order_reference": "ORDER-9",
    }
    quoted = api.request("POST", f"/v1/programs/{program}/quote", json=cart)
    assert quoted.status_code == 200, quoted.text
    points = {o["wallet"]: o for o in quoted.json()["payment"]}["points"]
    assert points["available"] == 25
    committed = api.purchase(program, "P2", "M", cart["lines"])
    assert committed.status_code == 201, committed.text
    assert quoted.json()["balance_after"] == {
        k: committed.json()["balance"][k] for k in ("balance", "available", "pending", "debt")
    }
