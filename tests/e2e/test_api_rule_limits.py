"""Per-member caps and campaign budgets on earning rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.e2e.test_api_support import shares


def _action(api, program, event_id, at, action="review_posted"):
    return api.request(
        "POST",
        f"/v1/programs/{program}/events",
        json={
            "type": "action",
            "id": event_id,
            "member": {"external_id": "C1"},
            "occurred_at": at.isoformat(),
            "action": action,
        },
    )


def test_a_review_pays_once_per_day_per_member(api):
    program = api.create_program(
        rules=[
            {
                "id": "review",
                "name": "Review",
                "trigger": "action",
                "action": "review_posted",
                "effect": {"type": "fixed", "points": 20},
                "limits": {"per_member": [{"period": "day", "max_count": 1}]},
            }
        ]
    )
    api.enroll(program, "C1")
    # Noon, so that "five minutes later" is the same day whatever time the suite runs.
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).replace(
        hour=12, minute=0, second=0, microsecond=0
    )
    first = _action(api, program, "r1", two_days_ago)
    second = _action(api, program, "r2", two_days_ago + timedelta(minutes=5))
    next_day = _action(api, program, "r3", two_days_ago + timedelta(days=1))
    assert [r.json()["points_earned"] for r in (first, second, next_day)] == [20, 0, 20]
    assert second.json()["rules"] == []
    assert api.balance(program, "ext:C1")["balance"] == 40


def test_a_monthly_points_cap_pays_the_remainder_then_nothing(api):
    program = api.create_program(
        points={"earn": {"points": 0}},
        rules=[
            {
                "id": "spend",
                "name": "5 per euro, 120 a month",
                "trigger": "purchase",
                "effect": {"type": "per_spend", "points": 5, "per_spend_minor": 100},
                "limits": {"per_member": [{"period": "month", "max_points": 120}]},
            }
        ],
        enrollment={"auto_enroll_on_purchase": True},
    )
    earned = [
        api.purchase(program, f"O{i}", "C1", [{"unit_price_minor": 1000}]).json()["points_earned"]
        for i in range(4)
    ]
    assert earned == [50, 50, 20, 0]


def test_a_campaign_budget_is_shared_by_all_members_and_never_overspent(api):
    program = api.create_program(
        points={"earn": {"points": 0}},
        rules=[
            {
                "id": "launch",
                "name": "Launch bonus",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 30},
                "limits": {"budget": {"points": 50}},
            }
        ],
        enrollment={"auto_enroll_on_purchase": True},
    )
    earned = [
        api.purchase(program, f"O{i}", f"C{i}", [{"unit_price_minor": 100}]).json()["points_earned"]
        for i in range(3)
    ]
    assert earned == [30, 20, 0]


def test_the_quote_shows_a_cap_that_binds_without_using_it(api):
    program = api.create_program(
        points={"earn": {"points": 0}},
        rules=[
            {
                "id": "launch",
                "name": "Launch bonus",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 30},
                "limits": {"budget": {"points": 40}},
            }
        ],
        enrollment={"auto_enroll_on_purchase": True},
    )
    cart = {"currency": "EUR", "lines": [{"unit_price_minor": 100}]}
    assert (
        api.request("POST", f"/v1/programs/{program}/quote", json=cart).json()["points_earned"]
        == 30
    )
    assert (
        api.request("POST", f"/v1/programs/{program}/quote", json=cart).json()["points_earned"]
        == 30
    )
    api.purchase(program, "O1", "C1", [{"unit_price_minor": 100}])
    assert (
        api.request("POST", f"/v1/programs/{program}/quote", json=cart).json()["points_earned"]
        == 10
    )


def test_a_late_receipt_counts_against_its_own_week_not_the_current_one(api):
    program = api.create_program(
        rules=[
            {
                "id": "visit",
                "name": "Weekly visit",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 5},
                "limits": {"per_member": [{"period": "week", "max_count": 1}]},
            }
        ],
        enrollment={"auto_enroll_on_purchase": True},
    )
    now = datetime.now(UTC)
    this_week = api.purchase(program, "O1", "C1", [{"unit_price_minor": 1000}])
    late = api.purchase(
        program,
        "O2",
        "C1",
        [{"unit_price_minor": 1000}],
        occurred_at=(now - timedelta(days=8)).isoformat(),
    )
    assert shares(this_week.json()["rules"]) == [
        {"rule": "base", "points": 10},
        {"rule": "visit", "points": 5},
    ]
    assert shares(late.json()["rules"]) == [
        {"rule": "base", "points": 10},
        {"rule": "visit", "points": 5},
    ]


def test_an_event_that_would_earn_more_than_the_maximum_is_refused(api):
    program = api.create_program(
        rules=[
            {
                "id": "huge",
                "name": "Huge",
                "trigger": "purchase",
                "effect": {"type": "per_spend", "points": 1_000_000, "per_spend_minor": 1},
            }
        ],
        enrollment={"auto_enroll_on_purchase": True},
    )
    r = api.purchase(program, "O1", "C1", [{"unit_price_minor": 10**12}])
    assert r.status_code == 422
    assert r.json()["code"] == "limit_exceeded"
    assert api.request("GET", f"/v1/programs/{program}/members").json()["items"] == []


def test_purchases_and_quotes_name_the_rules_a_limit_held_back(api):
    program = api.create_program(
        points={"earn": {"points": 0}},
        rules=[
            {
                "id": "launch",
                "name": "Launch bonus",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 30},
                "limits": {"budget": {"points": 40}},
            }
        ],
        enrollment={"auto_enroll_on_purchase": True},
    )
    first = api.purchase(program, "O1", "C1", [{"unit_price_minor": 100}]).json()
    assert first["limited"] == []
    cart = {"currency": "EUR", "lines": [{"unit_price_minor": 100}]}
    quoted = api.request("POST", f"/v1/programs/{program}/quote", json=cart).json()
    assert quoted["limited"] == [{"rule": "launch", "points_before_limits": 30, "points": 10}]
    second = api.purchase(program, "O2", "C2", [{"unit_price_minor": 100}]).json()
    assert second["limited"] == quoted["limited"]
    assert second["rules"][0]["inputs"] == {
        "effect": "fixed",
        "points": 30,
        "points_before_limits": 30,
    }
