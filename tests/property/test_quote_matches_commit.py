"""The quote is the purchase: for random programs and carts, what the quote says equals what
committing the same cart does, and the quote itself changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

RULE_POOL = [
    {
        "id": "private-2x",
        "name": "2x own brand",
        "trigger": "purchase",
        "conditions": {"include": {"brands": ["Private"]}},
        "effect": {"type": "multiplier", "factor_percent": 200},
    },
    {
        "id": "wine-bonus",
        "name": "Wine 3 per euro",
        "trigger": "purchase",
        "conditions": {"include": {"categories": ["wine"]}},
        "effect": {
            "type": "per_spend",
            "points": 3,
            "per_spend_minor": 100,
            "rounding": "half_even",
        },
    },
    {
        "id": "basket-50",
        "name": "Basket bonus",
        "trigger": "purchase",
        "conditions": {"min_total_minor": 3000},
        "effect": {"type": "fixed", "points": 50},
        "exclusive_group": "basket",
    },
    {
        "id": "basket-80",
        "name": "Bigger basket bonus",
        "trigger": "purchase",
        "conditions": {"min_total_minor": 6000},
        "effect": {"type": "fixed", "points": 80},
        "exclusive_group": "basket",
    },
    {
        "id": "web",
        "name": "Web orders",
        "trigger": "purchase",
        "conditions": {"channels": ["web"]},
        "effect": {"type": "fixed", "points": 7},
    },
    {
        "id": "vip",
        "name": "VIP 1.5x",
        "trigger": "purchase",
        "conditions": {"member_attributes": {"vip": True}},
        "effect": {"type": "multiplier", "factor_percent": 150, "rounding": "ceil"},
    },
    {
        "id": "no-gift",
        "name": "Nothing on gift cards",
        "trigger": "purchase",
        "conditions": {"exclude": {"categories": ["gift_card"]}},
        "effect": {"type": "per_spend", "points": 1, "per_spend_minor": 250},
    },
]

lines = st.lists(
    st.fixed_dictionaries(
        {
            "quantity": st.integers(1, 4),
            "unit_price_minor": st.integers(0, 4000),
            "brand": st.sampled_from(["Private", "Other"]),
            "category": st.sampled_from(["wine", "dairy", "gift_card"]),
        }
    ),
    min_size=0,
    max_size=5,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rules=st.lists(st.sampled_from(RULE_POOL), unique_by=lambda r: r["id"], max_size=5),
    rounding=st.sampled_from(["floor", "half_even", "ceil", "half_up"]),
    cart_lines=lines,
    total_if_no_lines=st.integers(0, 9000),
    channel=st.sampled_from(["web", "store"]),
    vip=st.booleans(),
    debt=st.integers(0, 30),
)
def test_a_quote_equals_the_committed_purchase(
    api, rules, rounding, cart_lines, total_if_no_lines, channel, vip, debt
):
    program = api.create_program(
        points={
            "earn": {"points": 1, "per_spend_minor": 100, "rounding": rounding},
            "expiry": {"policy": "after_days", "days": 30},
        },
        rules=rules,
    )
    api.enroll(program, "M", attributes={"vip": vip})
    now = datetime.now(UTC)
    if debt:
        # A debt from an earlier return is repaid first by the next earning, in both paths.
        api.request(
            "POST",
            f"/v1/programs/{program}/members/ext:M/adjustments",
            json={"points": debt, "reason": "setup"},
            headers={"Idempotency-Key": "a"},
        )
        api.purchase(program, "P0", "M", [{"unit_price_minor": 100}])
        api.request(
            "POST",
            f"/v1/programs/{program}/members/ext:M/redemptions",
            json={"points": debt + 1},
            headers={"Idempotency-Key": "r"},
        )
        api.request(
            "POST",
            f"/v1/programs/{program}/events",
            json={"type": "return", "id": "R0", "order_id": "P0", "occurred_at": now.isoformat()},
        )
    total = (
        sum(li["quantity"] * li["unit_price_minor"] for li in cart_lines)
        if cart_lines
        else total_if_no_lines
    )
    cart = {
        "currency": "EUR",
        "total_minor": total,
        "lines": cart_lines,
        "channel": channel,
        "member": {"external_id": "M"},
        "occurred_at": (now - timedelta(minutes=1)).isoformat(),
    }

    def balance_now():
        view = api.balance(program, "ext:M")
        view.pop("as_of")
        return view

    before_balance = balance_now()
    before_ledger = api.request("GET", f"/v1/programs/{program}/members/ext:M/ledger").json()

    quoted = api.request("POST", f"/v1/programs/{program}/quote", json=cart)
    assert quoted.status_code == 200, quoted.text
    assert balance_now() == before_balance
    assert (
        api.request("GET", f"/v1/programs/{program}/members/ext:M/ledger").json() == before_ledger
    )

    committed = api.request(
        "POST", f"/v1/programs/{program}/events", json={"type": "purchase", "id": "O1", **cart}
    )
    assert committed.status_code == 201, committed.text
    q, c = quoted.json(), committed.json()
    assert q["points_earned"] == c["points_earned"]
    assert q["rules"] == c["rules"]
    assert q["lines"] == c["lines"]
    assert q["debt_repaid"] == (c["lot"]["debt_repaid"] if c["lot"] else 0)
    assert q["expires_at"] == (c["lot"]["expires_at"] if c["lot"] else None)
    assert q["balance_after"] == {
        k: c["balance"][k] for k in ("balance", "available", "pending", "debt")
    }
