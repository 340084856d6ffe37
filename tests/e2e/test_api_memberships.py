"""Paid membership: trial, first payment, renewal, cancellation at period end, lapse, and the
benefits rules and tiers see while a membership is in force."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update

from loyalty.adapters.db.tables import memberships
from tests.e2e.test_api_support import assert_problem, shares

PLANS = [
    {
        "id": "plus",
        "name": "Plus",
        "fee_minor": 999,
        "period": "month",
        "trial_days": 14,
        "grants_tier": "gold",
        "perks": ["free_delivery"],
    },
    {"id": "annual", "name": "Annual", "fee_minor": 9900, "period": "year"},
]
RULES = [
    {
        "id": "plus-bonus",
        "name": "Plus members: 10 points a purchase",
        "trigger": "purchase",
        "conditions": {"plans": ["plus"]},
        "effect": {"type": "fixed", "points": 10},
    }
]
TIERS = {
    "metric": "spend",
    "levels": [
        {"id": "base", "name": "Base", "threshold": 0},
        {
            "id": "gold",
            "name": "Gold",
            "threshold": 1_000_000,
            "benefits": {"earn_multiplier_percent": 200},
        },
    ],
}


def _program(api):
    return api.create_program(
        plans=PLANS, rules=RULES, tiers=TIERS, enrollment={"auto_enroll_on_purchase": True}
    )


def _join(api, program, member, key, **body):
    return api.request(
        "POST",
        f"/v1/programs/{program}/members/{member}/memberships",
        json=body,
        headers={"Idempotency-Key": key},
    )


def _shift(api, membership_id, days):
    """Move a membership's period into the past, as if ``days`` had gone by."""
    with api.engine.begin() as conn:
        row = conn.execute(memberships.select().where(memberships.c.id == membership_id)).one()
        conn.execute(
            update(memberships)
            .where(memberships.c.id == membership_id)
            .values(
                started_at=row.started_at - timedelta(days=days),
                period_start=row.period_start - timedelta(days=days),
                period_end=row.period_end - timedelta(days=days),
            )
        )


def test_a_trial_grants_the_plans_tier_and_rules_until_it_lapses_unpaid(api):
    program = _program(api)
    api.enroll(program, "C1")
    r = _join(api, program, "ext:C1", "j1", plan="plus")
    assert r.status_code == 201, r.text
    trial = r.json()
    assert (trial["status"], trial["in_trial"], trial["benefits"]) == ("trial", True, True)
    assert datetime.fromisoformat(trial["period_end"]) - datetime.fromisoformat(
        trial["started_at"]
    ) == timedelta(days=14)
    body = api.purchase(program, "O1", "C1", [{"unit_price_minor": 1000}]).json()
    # Gold through the plan (its 2x), and the Plus-only rule.
    assert body["tier"] == "gold"
    assert shares(body["rules"]) == [
        {"rule": "base", "points": 10},
        {"rule": "plus-bonus", "points": 10},
        {"rule": "tier-gold", "points": 10},
    ]
    # A replayed join answers the same; a second join of a plan in force is refused.
    again = _join(api, program, "ext:C1", "j1", plan="plus")
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert_problem(_join(api, program, "ext:C1", "j2", plan="plus"), 409, "membership_exists")
    _shift(api, trial["id"], 15)
    listed = api.request("GET", f"/v1/programs/{program}/members/ext:C1/memberships").json()
    assert [(m["status"], m["benefits"]) for m in listed["items"]] == [("lapsed", False)]
    later = api.purchase(program, "O2", "C1", [{"unit_price_minor": 1000}]).json()
    assert (later["tier"], later["points_earned"]) == ("base", 10)
    # No second trial: joining again needs the fee.
    assert_problem(_join(api, program, "ext:C1", "j3", plan="plus"), 422, "payment_required")
    paid = _join(api, program, "ext:C1", "j4", plan="plus", payment_reference="psp_1")
    assert (paid.json()["status"], paid.json()["in_trial"]) == ("active", False)


def test_renewals_extend_from_the_paid_period_and_a_cancellation_waits_for_its_end(api):
    program = _program(api)
    api.enroll(program, "C1")
    joined = _join(api, program, "ext:C1", "a1", plan="annual", payment_reference="psp_1").json()
    assert joined["status"] == "active"
    first_end = datetime.fromisoformat(joined["period_end"])
    url = f"/v1/programs/{program}/memberships/{joined['id']}"
    renewed = api.request(
        "POST",
        f"{url}/payments",
        json={"amount_minor": 9900, "reference": "psp_2"},
        headers={"Idempotency-Key": "p1"},
    )
    assert renewed.status_code == 200, renewed.text
    # Paid early: the new year starts where the paid one ends.
    assert datetime.fromisoformat(renewed.json()["period_start"]) == first_end
    wrong = api.request(
        "POST",
        f"{url}/payments",
        json={"amount_minor": 999, "reference": "psp_3"},
        headers={"Idempotency-Key": "p2"},
    )
    assert_problem(wrong, 422, "fee_mismatch")
    cancelled = api.request("POST", f"{url}/cancel").json()
    assert (cancelled["status"], cancelled["benefits"]) == ("cancelled", True)
    _shift(api, joined["id"], 800)
    listed = api.request("GET", f"/v1/programs/{program}/members/ext:C1/memberships").json()
    assert listed["items"][0]["status"] == "ended"
    assert_problem(
        api.request("POST", f"/v1/programs/{program}/memberships/msh_nope/cancel"),
        404,
        "membership_not_found",
    )
    assert_problem(_join(api, program, "ext:C1", "x", plan="gold"), 422, "unknown_plan")
