"""Several tier sets in one program: a spend ladder (the main set, `tiers`) and a visits ladder
(`tier_sets`), each upgraded inside the event, reviewed and recalculated on its own, shown by
the tier endpoint, and usable in rules and expressions; a member in both gets the best
multiplier and the best discount, never their product."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loyalty.application import tiers
from tests.e2e.test_api_support import assert_problem, shares
from tests.e2e.test_api_tiers import LEVELS
from tests.e2e.test_tier_jobs import buy_at

VISITS = {
    "id": "visits",
    "metric": "visits",
    "window": {"type": "rolling_months", "months": 12},
    "levels": [
        {"id": "newcomer", "name": "Newcomer", "threshold": 0},
        {
            "id": "regular",
            "name": "Regular",
            "threshold": 3,
            "benefits": {
                "earn_multiplier_percent": 300,
                "discount_percent": 15,
                "perks": ["free_coffee"],
            },
        },
    ],
}
RULES = [
    {
        "id": "regulars",
        "name": "Regulars: 5 points a visit",
        "trigger": "purchase",
        "conditions": {"tiers": ["regular"]},
        "effect": {"type": "fixed", "points": 5},
    },
    {
        "id": "regulars-cel",
        "name": "Regulars, by expression: 7 points",
        "trigger": "purchase",
        "conditions": {"expression": "'regular' in member.tiers"},
        "effect": {"type": "fixed", "points": 7},
    },
]


def _document(**overrides):
    return {
        "name": "Two ladders",
        "currency": "EUR",
        "time_zone": "Europe/Paris",
        "enrollment": {"auto_enroll_on_purchase": True},
        "tiers": {"metric": "spend", "window": {"type": "calendar_year"}, "levels": LEVELS},
        "tier_sets": [VISITS],
        "rules": RULES,
        **overrides,
    }


def _program(api, **overrides):
    r = api.request("POST", "/v1/programs", json=_document(**overrides))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _tier(api, program, member):
    r = api.request("GET", f"/v1/programs/{program}/members/ext:{member}/tier")
    assert r.status_code == 200, r.text
    return r.json()


def _visit_days(api, program, member, days):
    """One 20 EUR purchase on each of ``days`` days before now (distinct local days)."""
    now = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    for n in range(days, 0, -1):
        buy_at(api, program, f"{member}-V{n}", member, 20, now - timedelta(days=n))


def test_each_set_upgrades_on_its_own_and_a_member_in_both_gets_the_best_of_them(api):
    program = _program(api)
    _visit_days(api, program, "C1", 3)  # 3 visits: Regular; 60 EUR: still Bronze
    view = _tier(api, program, "C1")
    assert (view["tier_set"], view["tier"]["id"], view["metric_value"]) == (
        "status",
        "bronze",
        6000,
    )
    [visits] = view["other_sets"]
    assert (visits["tier_set"], visits["metric"], visits["metric_value"]) == ("visits", "visits", 3)
    assert visits["tier"]["id"] == "regular"
    assert visits["tier"]["benefits"]["perks"] == ["free_coffee"]
    assert [(h["from"], h["to"], h["reason"]) for h in visits["history"]] == [
        ("newcomer", "regular", "upgrade")
    ]
    assert view["history"] == []  # each set keeps its own history

    now = datetime.now(UTC)
    # Bronze and Regular: Regular's x3 on 20 EUR, its rule and its expression.
    body = buy_at(api, program, "O1", "C1", 20, now)
    assert (body["tier"], body["tier_change"], body["points_earned"]) == ("bronze", None, 72)
    assert {r["rule"]: r["points"] for r in shares(body["rules"])} == {
        "regulars": 5,
        "regulars-cel": 7,
        "base": 20,
        "tier-regular": 40,
    }
    # This purchase takes spend to 180 EUR: Silver, upgraded inside the event.
    body = buy_at(api, program, "O2", "C1", 100, now)
    assert body["tier_change"] == {"from": "bronze", "to": "silver", "metric": 18_000}
    # Silver (x1.5) and Regular (x3): only the better multiplier pays.
    body = buy_at(api, program, "O3", "C1", 10, now)
    assert body["tier"] == "silver"
    assert {r["rule"]: r["points"] for r in shares(body["rules"])} == {
        "regulars": 5,
        "regulars-cel": 7,
        "base": 10,
        "tier-regular": 20,
    }
    # The quote offers the better tier discount: Regular's 15%, not Silver's 5%.
    r = api.request(
        "POST",
        f"/v1/programs/{program}/quote",
        json={
            "currency": "EUR",
            "member": {"external_id": "C1"},
            "lines": [{"line_id": "a", "unit_price_minor": 1000}],
        },
    )
    assert r.status_code == 200, r.text
    [line] = r.json()["discounts"]["lines"]
    assert (line["percent"], line["source"]) == (15, "tier")


def test_each_set_is_assigned_recalculated_and_reviewed_on_its_own(api):
    program = _program(api)
    _visit_days(api, program, "C1", 2)
    _visit_days(api, program, "C2", 1)
    # By hand, in the visits set (the tier id names its set); the main set is untouched.
    r = api.request(
        "PUT",
        f"/v1/programs/{program}/members/ext:C2/tier",
        json={"tier": "regular", "reason": "Barista's pick"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["tier"]["id"], body["manual"]) == ("bronze", False)
    assert (body["other_sets"][0]["tier"]["id"], body["other_sets"][0]["manual"]) == (
        "regular",
        True,
    )

    document = api.request("GET", f"/v1/programs/{program}").json()["document"]
    easier = {**VISITS, "levels": [VISITS["levels"][0], {**VISITS["levels"][1], "threshold": 2}]}
    r = api.request("PUT", f"/v1/programs/{program}", json={**document, "tier_sets": [easier]})
    assert r.status_code == 200, r.text
    url = f"/v1/programs/{program}/tiers/recalculate"
    main = api.request("POST", url, json={}).json()
    assert (main["tier_set"], main["members_moving"]) == ("status", 0)
    preview = api.request("POST", url, json={"tier_set": "visits"}).json()
    assert (preview["tier_set"], preview["changes"]) == (
        "visits",
        [{"from": "newcomer", "to": "regular", "members": 1}],
    )
    applied = api.request("POST", url, json={"tier_set": "visits", "apply": True}).json()
    assert (applied["applied"], applied["members_moving"]) == (True, 1)
    assert _tier(api, program, "C1")["other_sets"][0]["tier"]["id"] == "regular"
    again = api.request("POST", url, json={"tier_set": "visits", "apply": True}).json()
    assert again["members_moving"] == 0
    problem = assert_problem(
        api.request("POST", url, json={"tier_set": "nights"}), 422, "unknown_tier_set"
    )
    assert problem["known_tier_sets"] == ["status", "visits"]

    # Thirteen months on, with no visit since: the visits set reviews C1 and C2 (12-month
    # window, reviewed 12 months after the upgrade) and moves them down; the main set
    # (calendar year, nobody above Bronze) has no one to review.
    from loyalty.application.programs import all_programs

    with api.engine.connect() as conn:
        ctx = next(c for c in all_programs(conn) if c.program_id == program)
    later = datetime.now(UTC) + timedelta(days=400)
    assert tiers.review_tiers(api.engine, ctx, now=later) == {"reviewed": 2, "downgraded": 2}
    for member in ("C1", "C2"):
        view = _tier(api, program, member)
        assert (view["tier"]["id"], view["other_sets"][0]["tier"]["id"]) == ("bronze", "newcomer")
    assert tiers.review_tiers(api.engine, ctx, now=later) == {}


def test_tier_sets_are_checked_as_one_namespace_of_tiers(api):
    def refused(**overrides):
        r = api.request("POST", "/v1/programs", json=_document(**overrides))
        assert r.status_code == 422, r.text
        return r.text

    assert "tier ids must be unique" in refused(
        tier_sets=[{**VISITS, "levels": [{"id": "bronze", "name": "B", "threshold": 0}]}]
    )
    assert "tier set id 'visits' is used twice" in refused(tier_sets=[VISITS, VISITS])
    assert "'status' is used twice" in refused(tier_sets=[{**VISITS, "id": "status"}])
    assert "needs a main tier set" in refused(tiers=None)
    reward = {
        "id": "mug",
        "name": "Mug",
        "type": "free_product",
        "cost_points": 100,
        "skus": ["MUG"],
    }
    assert "not in any tier set" in refused(rewards=[{**reward, "tiers": ["platinum"]}])
    grouped = {**RULES[0], "exclusive_group": "tier-multipliers"}
    assert "reserved for tier multipliers" in refused(rules=[grouped])
    assert "in no tier set" in refused(rules=[{**RULES[0], "conditions": {"tiers": ["platinum"]}}])
    # One set, as before: the main set alone is still a valid program.
    assert (
        api.request("POST", "/v1/programs", json=_document(tier_sets=[], rules=[])).status_code
        == 201
    )


def test_tier_only_rewards_and_tier_prices_read_every_set_the_member_is_in(api):
    mug = {
        "id": "mug",
        "name": "Regulars' mug",
        "type": "free_product",
        "cost_points": 100,
        "cost_by_tier": {"regular": 30, "gold": 60},
        "tiers": ["regular", "gold"],
        "skus": ["MUG"],
    }
    program = _program(api, rewards=[mug])
    _visit_days(api, program, "C1", 3)  # Regular by visits, Bronze by spend
    buy_at(api, program, "C2-1", "C2", 20, datetime.now(UTC))  # a newcomer

    def catalog(member):
        r = api.request("GET", f"/v1/programs/{program}/members/ext:{member}/rewards")
        assert r.status_code == 200, r.text
        return r.json()["items"][0]

    regular = catalog("C1")
    assert (regular["available"], regular["cost_points"]) == (True, 30)
    newcomer = catalog("C2")
    assert newcomer["available"] is False
    assert {"code": "tier_too_low", "tiers": ["gold", "regular"]} in newcomer["reasons"]
    redeemed = api.request(
        "POST",
        f"/v1/programs/{program}/members/ext:C1/rewards/mug/redeem",
        headers={"Idempotency-Key": "mug-1"},
    )
    assert redeemed.status_code == 201, redeemed.text
    assert redeemed.json()["points"] == 30
    refused = api.request(
        "POST",
        f"/v1/programs/{program}/members/ext:C2/rewards/mug/redeem",
        headers={"Idempotency-Key": "mug-2"},
    )
    assert_problem(refused, 422, "reward_not_available")
