"""The reward catalog and coupons: what a member can get and why not, a redemption that
burns and issues in one transaction, codes that catch typos and work once, cancellations
that give points back, and stock that is never oversold."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from loyalty.adapters.db.engine import make_engine
from loyalty.adapters.db.tables import coupon_lookup_failures
from loyalty.application.audit import audit_ledger
from loyalty.domain.catalog import new_code, normalise_code
from loyalty.entrypoints.api.app import create_app
from tests.e2e.test_api_support import assert_problem

REWARDS = [
    {
        "id": "five-off",
        "name": "EUR 5 off an order of EUR 20",
        "type": "coupon_amount",
        "cost_points": 100,
        "value_minor": 500,
        "min_order_minor": 2000,
        "limit_per_member": {"max_count": 2, "period": "month"},
    },
    {
        "id": "free-coffee",
        "name": "A free coffee",
        "type": "free_product",
        "cost_points": 40,
        "skus": ["COFFEE"],
        "stock": 10,
    },
    {
        "id": "vip-tour",
        "name": "A roastery tour",
        "type": "experience",
        "cost_points": 30,
        "tiers": ["gold"],
    },
]
TIERS = {
    "metric": "spend",
    "levels": [
        {"id": "base", "name": "Base", "threshold": 0},
        {"id": "gold", "name": "Gold", "threshold": 1_000_000},
    ],
}


def _program(api, points, rewards=REWARDS):
    program = api.create_program(
        rewards=rewards, tiers=TIERS, enrollment={"auto_enroll_on_purchase": True}
    )
    r = api.purchase(program, "O1", "C1", [{"unit_price_minor": points * 100}])
    assert r.status_code == 201, r.text
    return program


def _redeem(api, program, reward, key, member="ext:C1"):
    return api.request(
        "POST",
        f"/v1/programs/{program}/members/{member}/rewards/{reward}/redeem",
        headers={"Idempotency-Key": key},
    )


def test_the_catalog_says_what_a_member_can_get_and_why_not(api):
    program = _program(api, 60)
    items = {
        i["id"]: i
        for i in api.request("GET", f"/v1/programs/{program}/members/ext:C1/rewards").json()[
            "items"
        ]
    }
    assert items["free-coffee"]["available"] is True
    assert items["five-off"]["reasons"] == [{"code": "points_short", "points_short": 40}]
    assert [r["code"] for r in items["vip-tour"]["reasons"]] == ["tier_too_low"]


def test_a_coupon_is_issued_once_validated_used_once_and_typos_are_caught(api):
    program = _program(api, 250)
    r = _redeem(api, program, "five-off", "k1")
    assert r.status_code == 201, r.text
    issued = r.json()
    code = issued["code"]
    assert normalise_code(code) is not None
    assert (issued["status"], issued["points"], issued["balance"]["balance"]) == (
        "issued",
        100,
        150,
    )
    # A replay doesn't show the code again: it is shown once.
    again = _redeem(api, program, "five-off", "k1")
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["code"] is None and again.json()["id"] == issued["id"]
    url = f"/v1/programs/{program}/coupons"
    cart = {"currency": "EUR", "lines": [{"sku": "X", "unit_price_minor": 2500}]}
    check = api.request("POST", f"{url}/{code}/validate", json=cart).json()
    assert (check["valid"], check["discount_minor"]) == (True, 500)
    small = {"currency": "EUR", "lines": [{"sku": "X", "unit_price_minor": 1500}]}
    assert api.request("POST", f"{url}/{code}/validate", json=small).json()["reasons"] == [
        {"code": "below_minimum", "min_order_minor": 2000}
    ]
    # A typo (one character changed) is told apart from a code that doesn't exist.
    typo = code[:-1] + ("0" if code[-1] != "0" else "1")
    assert_problem(
        api.request("POST", f"{url}/{typo}/validate", json=cart), 422, "coupon_code_invalid"
    )
    assert_problem(
        api.request("POST", f"{url}/{new_code()}/validate", json=cart), 404, "coupon_not_found"
    )
    used = api.request("POST", f"{url}/{code.lower()}/use", json={"order_reference": "T-1"})
    assert used.status_code == 200, used.text
    assert used.json()["status"] == "used"
    second = api.request("POST", f"{url}/{code}/use", json={})
    assert_problem(second, 409, "coupon_not_usable")
    assert_problem(api.request("POST", f"{url}/{code}/cancel"), 409, "coupon_not_usable")


def test_cancelling_an_unused_coupon_gives_its_points_back_and_frees_the_stock(api):
    program = _program(api, 100)
    code = _redeem(api, program, "free-coffee", "k1").json()["code"]
    assert api.balance(program, "ext:C1")["balance"] == 60
    cancelled = api.request("POST", f"/v1/programs/{program}/coupons/{code}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["points_returned"]) == ("cancelled", 40)
    assert api.balance(program, "ext:C1")["balance"] == 100
    assert audit_ledger(api.engine) == []


def test_a_per_member_limit_holds(api):
    program = _program(api, 1000)
    assert _redeem(api, program, "five-off", "a").status_code == 201
    assert _redeem(api, program, "five-off", "b").status_code == 201
    third = _redeem(api, program, "five-off", "c")
    body = assert_problem(third, 422, "reward_not_available")
    assert [r["code"] for r in body["reasons"]] == ["limit_reached"]
    assert api.balance(program, "ext:C1")["balance"] == 800


def test_parallel_redemptions_never_oversell_the_stock(api):
    program = api.create_program(rewards=REWARDS[1:2], enrollment={"auto_enroll_on_purchase": True})
    for n in range(32):
        r = api.purchase(program, f"O{n}", f"M{n}", [{"unit_price_minor": 5000}])
        assert r.status_code == 201, r.text
    statuses: list[int] = []

    def redeem(n: int) -> None:
        statuses.append(
            _redeem(api, program, "free-coffee", f"k{n}", member=f"ext:M{n}").status_code
        )

    threads = [threading.Thread(target=redeem, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(201) == 10
    assert statuses.count(422) == 22
    assert audit_ledger(api.engine) == []


def test_a_coupon_used_by_two_tills_at_once_is_used_once(api):
    program = _program(api, 200)
    code = _redeem(api, program, "five-off", "k1").json()["code"]
    statuses: list[int] = []

    def use() -> None:
        r = api.request("POST", f"/v1/programs/{program}/coupons/{code}/use", json={})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [409] * 7


def test_an_experience_is_fulfilled_by_the_merchant_and_a_gift_card_is_a_voucher_code(api):
    rewards = [
        {"id": "tour", "name": "A roastery tour", "type": "experience", "cost_points": 30},
        {
            "id": "gift",
            "name": "EUR 10 gift card",
            "type": "gift_card",
            "cost_points": 50,
            "value_minor": 1000,
        },
    ]
    program = _program(api, 200, rewards=rewards)
    tour = _redeem(api, program, "tour", "t1").json()
    assert (tour["code"], tour["fulfilment"]) == (None, "pending")
    url = f"/v1/programs/{program}/reward-issues/{tour['id']}"
    shipped = api.request("POST", f"{url}/fulfilment", json={"status": "fulfilled"})
    assert shipped.status_code == 200, shipped.text
    assert api.request("GET", url).json()["fulfilment"] == "fulfilled"
    assert api.request("POST", f"{url}/fulfilment", json={"status": "lost"}).status_code == 422
    gift = _redeem(api, program, "gift", "g1").json()
    assert gift["code"] is not None and gift["fulfilment"] is None
    cart = {"currency": "EUR", "lines": [{"sku": "X", "unit_price_minor": 1500}]}
    check = api.request(
        "POST", f"/v1/programs/{program}/coupons/{gift['code']}/validate", json=cart
    )
    assert check.json()["discount_minor"] == 1000
    assert_problem(
        api.request(
            "POST",
            f"/v1/programs/{program}/reward-issues/{gift['id']}/fulfilment",
            json={"status": "shipped"},
        ),
        422,
        "not_fulfilled",
    )


def test_a_key_guessing_codes_is_stopped_and_other_keys_are_not(api):
    program = _program(api, 200)
    code = _redeem(api, program, "five-off", "k1").json()["code"]
    url = f"/v1/programs/{program}/coupons"
    cart = {"currency": "EUR", "lines": [{"sku": "X", "unit_price_minor": 2500}]}
    for _ in range(30):
        r = api.request("POST", f"{url}/{new_code()}/validate", json=cart)
        assert r.status_code == 404
    stopped = api.request("POST", f"{url}/{code}/validate", json=cart)
    body = assert_problem(stopped, 429, "too_many_attempts")
    assert int(stopped.headers["Retry-After"]) >= 1
    assert (body["limit"], body["window_s"]) == (30, 60)
    other = api.request("POST", "/v1/api-keys", json={"name": "till-2", "scopes": ["write"]})
    token = other.json()["token"]
    ok = api.request("POST", f"{url}/{code}/validate", json=cart, token=token)
    assert ok.status_code == 200 and ok.json()["valid"] is True

    # The failures are counted in the database, not in this process: another server process
    # on the same database sees them, and stops the key too (but not the other key).
    with api.engine.connect() as conn:
        counted = conn.execute(select(func.count()).select_from(coupon_lookup_failures))
        assert counted.scalar_one() == 30
    second = make_engine(api.engine.url.render_as_string(hide_password=False))
    try:
        with TestClient(create_app(second)) as client:
            there = client.post(
                f"{url}/{code}/validate",
                json=cart,
                headers={"Authorization": f"Bearer {api.token}"},
            )
            assert_problem(there, 429, "too_many_attempts")
            fine = client.post(
                f"{url}/{code}/validate", json=cart, headers={"Authorization": f"Bearer {token}"}
            )
            assert fine.status_code == 200, fine.text
    finally:
        second.dispose()


SEGMENTS = [
    {
        "id": "lyon",
        "name": "Members in Lyon",
        "condition": "'city' in member.attributes && member.attributes.city == 'Lyon'",
    },
    {
        "id": "birthday-month",
        "name": "Birthday this month",
        "condition": "member.birth_date != '' && "
        "timestamp(member.birth_date + 'T00:00:00Z').getMonth() == now.getMonth()",
    },
]
LOCAL_REWARDS = [
    {
        "id": "lyon-tasting",
        "name": "A tasting at the Lyon shop",
        "type": "experience",
        "cost_points": 30,
        "segments": ["lyon"],
    },
    {
        "id": "barista-class",
        "name": "A barista class, for members of a year's standing who opted in",
        "type": "experience",
        "cost_points": 30,
        "condition": "member.marketing_consent && 'level' in member.attributes && "
        "member.attributes.level >= 3",
    },
]


def _reasons(api, program, member="ext:C1"):
    body = api.request("GET", f"/v1/programs/{program}/members/{member}/rewards").json()
    return body["segments"], {i["id"]: [r["code"] for r in i["reasons"]] for i in body["items"]}


def test_a_reward_for_a_segment_or_a_condition_says_why_not_and_refuses_to_redeem(api):
    program = api.create_program(
        segments=SEGMENTS,
        rewards=LOCAL_REWARDS,
        enrollment={"auto_enroll_on_purchase": True},
    )
    api.enroll(program, "C1", attributes={"city": "Paris", "level": 1})
    api.purchase(program, "O1", "C1", [{"unit_price_minor": 10_000}])
    segments, reasons = _reasons(api, program)
    assert segments == []
    assert reasons == {"lyon-tasting": ["not_in_segment"], "barista-class": ["condition_not_met"]}
    items = api.request("GET", f"/v1/programs/{program}/members/ext:C1/rewards").json()["items"]
    assert items[0]["reasons"] == [{"code": "not_in_segment", "segments": ["lyon"]}]
    # Refused, and nothing moved: no points burnt, nothing issued.
    for reward, reason in (
        ("lyon-tasting", "not_in_segment"),
        ("barista-class", "condition_not_met"),
    ):
        body = assert_problem(
            _redeem(api, program, reward, f"k-{reward}"), 422, "reward_not_available"
        )
        assert [r["code"] for r in body["reasons"]] == [reason]
    assert api.balance(program, "ext:C1")["balance"] == 100
    # The member moves to Lyon and opts in at level 3: both rewards open up.
    r = api.request(
        "PATCH",
        f"/v1/programs/{program}/members/ext:C1",
        json={"attributes": {"city": "Lyon", "level": 3}, "marketing_consent": True},
    )
    assert r.status_code == 200, r.text
    segments, reasons = _reasons(api, program)
    assert segments == ["lyon"]
    assert reasons == {"lyon-tasting": [], "barista-class": []}
    assert _redeem(api, program, "lyon-tasting", "k2").status_code == 201
    assert _redeem(api, program, "barista-class", "k3").status_code == 201
    assert api.balance(program, "ext:C1")["balance"] == 40
    assert audit_ledger(api.engine) == []


def test_a_birthday_segment_follows_the_calendar(api):
    from datetime import UTC, datetime

    program = api.create_program(segments=SEGMENTS, enrollment={"auto_enroll_on_purchase": True})
    this_month = datetime.now(UTC).month
    other_month = this_month % 12 + 1
    api.enroll(program, "B1", birth_date=f"1990-{this_month:02d}-01")
    api.enroll(program, "B2", birth_date=f"1990-{other_month:02d}-01")
    api.enroll(program, "B3")
    assert _reasons(api, program, "ext:B1")[0] == ["birthday-month"]
    assert _reasons(api, program, "ext:B2")[0] == []
    assert _reasons(api, program, "ext:B3")[0] == []


def test_a_segment_or_condition_is_checked_when_the_program_is_saved(api):
    def refused(**document):
        r = api.request("POST", "/v1/programs", json={"name": "P", "currency": "EUR", **document})
        return assert_problem(r, 422, r.json()["code"])

    typo = refused(segments=[{"id": "gold", "name": "Gold", "condition": "member.teir == 'gold'"}])
    assert typo["errors"][0]["field"] == "segments[0].condition"
    assert "did you mean 'member.tier'" in typo["errors"][0]["message"]
    purchase = refused(rewards=[{**LOCAL_REWARDS[1], "condition": "purchase.total_minor > 1000"}])
    assert purchase["errors"][0]["field"] == "rewards[0].condition"
    assert "'purchase'" in purchase["errors"][0]["message"]
    unknown = refused(rewards=[LOCAL_REWARDS[0]])
    assert "names segment 'lyon', not in 'segments'" in str(unknown)
    too_long = refused(segments=[{"id": "x", "name": "X", "condition": "true || " * 300 + "true"}])
    assert too_long["code"] == "validation_error"


GIFT_CARD = {
    "id": "gift-50",
    "name": "EUR 50 gift card",
    "type": "gift_card",
    "cost_points": 50,
    "value_minor": 5000,
}


def test_a_gift_card_is_spent_in_parts_over_several_orders(api):
    program = _program(api, 200, rewards=[GIFT_CARD])
    code = _redeem(api, program, "gift-50", "g1").json()["code"]
    url = f"/v1/programs/{program}/coupons/{code}"
    cart = {"currency": "EUR", "lines": [{"sku": "X", "unit_price_minor": 3000}]}
    check = api.request("POST", f"{url}/validate", json=cart).json()
    assert (check["valid"], check["discount_minor"]) == (True, 3000)
    assert (check["coupon"]["value_minor"], check["coupon"]["remaining_minor"]) == (5000, 5000)

    first = api.request("POST", f"{url}/use", json={"order_reference": "T-1", "amount_minor": 3000})
    assert first.status_code == 200, first.text
    assert (first.json()["taken_minor"], first.json()["remaining_minor"]) == (3000, 2000)
    assert first.json()["status"] == "issued"
    # The same order again is a replay, not a second spend; another amount is a conflict.
    again = api.request("POST", f"{url}/use", json={"order_reference": "T-1", "amount_minor": 3000})
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["remaining_minor"] == 2000
    assert_problem(
        api.request("POST", f"{url}/use", json={"order_reference": "T-1", "amount_minor": 100}),
        409,
        "idempotency_conflict",
    )
    # Past what remains: refused, never clamped, and nothing taken.
    short = api.request("POST", f"{url}/use", json={"order_reference": "T-2", "amount_minor": 2500})
    body = assert_problem(short, 422, "gift_card_balance_short")
    assert (body["amount_minor"], body["remaining_minor"]) == (2500, 2000)
    check = api.request("POST", f"{url}/validate", json=cart).json()
    assert (check["discount_minor"], check["coupon"]["remaining_minor"]) == (2000, 2000)

    second = api.request(
        "POST", f"{url}/use", json={"order_reference": "T-2", "amount_minor": 2000}
    )
    assert (second.json()["taken_minor"], second.json()["remaining_minor"]) == (2000, 0)
    empty = api.request("POST", f"{url}/validate", json=cart).json()
    assert (empty["valid"], empty["reasons"]) == (False, [{"code": "gift_card_empty"}])

    # The first order is returned: its 30.00 goes back on the card, once.
    back = api.request("POST", f"{url}/cancel-use", json={"order_reference": "T-1"})
    assert back.status_code == 200, back.text
    assert (back.json()["returned_minor"], back.json()["remaining_minor"]) == (3000, 3000)
    twice = api.request("POST", f"{url}/cancel-use", json={"order_reference": "T-1"})
    assert twice.headers.get("Idempotent-Replayed") == "true"
    assert (
        api.request("GET", f"/v1/programs/{program}/reward-issues/{first.json()['id']}").json()[
            "remaining_minor"
        ]
        == 3000
    )
    assert_problem(
        api.request("POST", f"{url}/cancel-use", json={"order_reference": "T-9"}),
        404,
        "gift_card_use_not_found",
    )
    # A card partly spent can't be cancelled for its points.
    assert_problem(api.request("POST", f"{url}/cancel"), 409, "gift_card_spent")
    assert audit_ledger(api.engine) == []


def test_a_gift_card_use_needs_an_amount_and_a_coupon_takes_none(api):
    program = _program(api, 400, rewards=[GIFT_CARD, REWARDS[0]])
    gift = _redeem(api, program, "gift-50", "g1").json()["code"]
    coupon = _redeem(api, program, "five-off", "c1").json()["code"]
    url = f"/v1/programs/{program}/coupons"
    assert_problem(
        api.request("POST", f"{url}/{gift}/use", json={"order_reference": "T-1"}),
        422,
        "gift_card_use_incomplete",
    )
    assert_problem(
        api.request("POST", f"{url}/{gift}/use", json={"amount_minor": 100}),
        422,
        "gift_card_use_incomplete",
    )
    assert_problem(
        api.request("POST", f"{url}/{coupon}/use", json={"amount_minor": 100}),
        422,
        "not_a_gift_card",
    )
    assert_problem(
        api.request("POST", f"{url}/{coupon}/cancel-use", json={"order_reference": "T-1"}),
        422,
        "not_a_gift_card",
    )
    assert (
        api.request(
            "POST", f"{url}/{gift}/use", json={"amount_minor": 0, "order_reference": "T"}
        ).status_code
        == 422
    )
    # An unspent gift card can still be cancelled for its points.
    cancelled = api.request("POST", f"{url}/{gift}/cancel")
    assert (cancelled.status_code, cancelled.json()["points_returned"]) == (200, 50)
