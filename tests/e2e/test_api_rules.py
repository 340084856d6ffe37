"""Earning rules in the program document, through the API."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.e2e.test_api_support import shares

GROCER_RULES = [
    {
        "id": "private-label-2x",
        "name": "Double points on our own brand",
        "trigger": "purchase",
        "conditions": {"include": {"brands": ["Private"]}},
        "effect": {"type": "multiplier", "factor_percent": 200},
    },
    {
        "id": "big-basket",
        "name": "50 points on baskets of 50 EUR or more",
        "trigger": "purchase",
        "conditions": {"min_total_minor": 5000},
        "effect": {"type": "fixed", "points": 50},
    },
    {
        "id": "review",
        "name": "A review earns 20 points",
        "trigger": "action",
        "action": "review_posted",
        "effect": {"type": "fixed", "points": 20},
    },
]


def _program(api, rules):
    return api.create_program(
        points={"earn": {"points": 1, "per_spend_minor": 100, "rounding": "floor"}},
        enrollment={"auto_enroll_on_purchase": True},
        rules=rules,
    )


def test_rules_stack_on_the_base_rate_and_explain_every_line(api):
    program = _program(api, GROCER_RULES)
    r = api.purchase(
        program,
        "O1",
        "C1",
        [
            {
                "line_id": "milk",
                "sku": "MILK",
                "brand": "Private",
                "quantity": 4,
                "unit_price_minor": 250,
            },
            {"line_id": "wine", "sku": "WINE", "brand": "Chateau", "unit_price_minor": 4500},
        ],
    )
    assert r.status_code == 201, r.text
    body = r.json()
    # Base: 55 EUR -> 55 points (10 + 45); 2x private label: +10; big basket: +50.
    assert body["points_earned"] == 115
    # Listed in evaluation order: spend and fixed rules, then multipliers.
    assert shares(body["rules"]) == [
        {"rule": "base", "points": 55},
        {"rule": "big-basket", "points": 50},
        {"rule": "private-label-2x", "points": 10},
    ]
    lines = {li["line_id"]: li for li in body["lines"]}
    assert lines["milk"]["rules"] == [
        {"rule": "base", "points": 10},
        {"rule": "big-basket", "points": 9},
        {"rule": "private-label-2x", "points": 10},
    ]
    assert lines["milk"]["points"] + lines["wine"]["points"] == 115
    # Each rule says what it computed from, and on which lines.
    explained = {rule["rule"]: rule for rule in body["rules"]}
    assert explained["base"]["inputs"] == {
        "effect": "per_spend",
        "base_minor": 5500,
        "points": 1,
        "per_spend_minor": 100,
        "rounding": "floor",
    }
    assert explained["base"]["lines"] == ["milk", "wine"]
    assert explained["private-label-2x"]["inputs"] == {
        "effect": "multiplier",
        "factor_percent": 200,
        "multiplied_points": 10,
        "rounding": "floor",
    }
    assert explained["private-label-2x"]["lines"] == ["milk"]
    assert explained["big-basket"]["inputs"] == {"effect": "fixed", "points": 50}
    # The ledger entry keeps the same explanation, under the version it was computed with.
    entry = api.request("GET", f"/v1/programs/{program}/members/ext:C1/ledger").json()["items"][0]
    assert entry["details"]["rules"] == body["rules"]
    assert entry["program_version"] == body["program_version"] == 1


def test_returning_a_multiplied_line_takes_back_exactly_its_points(api):
    program = _program(api, GROCER_RULES[:1])
    api.purchase(
        program,
        "O1",
        "C1",
        [
            {"line_id": "milk", "brand": "Private", "quantity": 2, "unit_price_minor": 500},
            {"line_id": "wine", "brand": "Chateau", "unit_price_minor": 1000},
        ],
    )
    assert api.balance(program, "ext:C1")["balance"] == 30  # 10 + 10 (2x) + 10
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        json={
            "type": "return",
            "id": "R1",
            "order_id": "O1",
            "occurred_at": datetime.now(UTC).isoformat(),
            "lines": [{"line_id": "milk", "quantity": 1}],
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["points_reversed"] == 10
    assert api.balance(program, "ext:C1")["balance"] == 20


def test_a_custom_action_earns_the_points_of_its_rule(api):
    program = _program(api, GROCER_RULES)
    api.enroll(program, "C1")
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        json={
            "type": "action",
            "id": "rev-1",
            "member": {"external_id": "C1"},
            "occurred_at": datetime.now(UTC).isoformat(),
            "action": "review_posted",
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["points_earned"] == 20
    assert shares(r.json()["rules"]) == [{"rule": "review", "points": 20}]
    other = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        json={
            "type": "action",
            "id": "app-1",
            "member": {"external_id": "C1"},
            "occurred_at": datetime.now(UTC).isoformat(),
            "action": "app_open",
        },
    )
    assert other.json()["points_earned"] == 0
    assert api.balance(program, "ext:C1")["balance"] == 20


def test_a_rule_outside_its_window_earns_nothing(api):
    program = _program(
        api,
        [
            {
                "id": "black-friday",
                "name": "Black Friday",
                "trigger": "purchase",
                "starts_at": "2020-11-27T00:00:00Z",
                "ends_at": "2020-11-28T00:00:00Z",
                "effect": {"type": "fixed", "points": 500},
            }
        ],
    )
    r = api.purchase(program, "O1", "C1", [{"unit_price_minor": 1000}])
    assert r.json()["points_earned"] == 10


def test_invalid_rules_are_refused_with_the_path_of_each_mistake(api):
    r = api.request(
        "POST",
        "/v1/programs",
        json={
            "name": "Bad",
            "currency": "EUR",
            "rules": [
                {"id": "a", "name": "A", "trigger": "purchase", "effect": {"type": "multiplier"}},
                {
                    "id": "b",
                    "name": "B",
                    "trigger": "action",
                    "action": "review_posted",
                    "conditions": {"min_total_minor": 10},
                    "effect": {"type": "fixed", "points": 1},
                },
                {
                    "id": "c",
                    "name": "C",
                    "trigger": "purchase",
                    "effect": {"type": "fixed", "points": 1, "bonus": 3},
                },
            ],
        },
    )
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert "rules[0].effect" in fields
    assert "rules[1]" in fields
    assert "rules[2].effect.bonus" in fields
    duplicate = api.request(
        "POST",
        "/v1/programs",
        json={
            "name": "Dup",
            "currency": "EUR",
            "rules": [
                {
                    "id": "x",
                    "name": "X",
                    "trigger": "purchase",
                    "effect": {"type": "fixed", "points": 1},
                },
                {
                    "id": "x",
                    "name": "Y",
                    "trigger": "purchase",
                    "effect": {"type": "fixed", "points": 2},
                },
            ],
        },
    )
    assert duplicate.status_code == 422
    assert "used twice" in duplicate.text
    assert api.request("GET", "/v1/programs").json()["items"] == []


def test_hours_must_be_local_clock_times(api):
    for hours in ({"from": "08:00+01:00"}, {"from": 660}, {"from": "8am"}):
        r = api.request(
            "POST",
            "/v1/programs",
            json={
                "name": "H",
                "currency": "EUR",
                "rules": [
                    {
                        "id": "m",
                        "name": "M",
                        "trigger": "purchase",
                        "conditions": {"hours": hours},
                        "effect": {"type": "fixed", "points": 1},
                    }
                ],
            },
        )
        assert r.status_code == 422, hours
        assert r.json()["errors"][0]["field"].startswith("rules[0].conditions.hours")


def test_a_future_dated_purchase_cannot_reach_into_a_campaign_not_yet_started(api):
    program = _program(
        api,
        [
            {
                "id": "next-year",
                "name": "Next year",
                "trigger": "purchase",
                "starts_at": "2099-01-01T00:00:00Z",
                "effect": {"type": "fixed", "points": 500},
            }
        ],
    )
    r = api.purchase(
        program, "O1", "C1", [{"unit_price_minor": 1000}], occurred_at="2099-06-01T10:00:00Z"
    )
    assert r.json()["points_earned"] == 10


def test_raising_a_budget_in_a_new_version_applies_at_once(api):
    rule = {
        "id": "launch",
        "name": "Launch",
        "trigger": "purchase",
        "effect": {"type": "fixed", "points": 30},
        "limits": {"budget": {"points": 30}},
    }
    program = _program(api, [rule])
    assert (
        api.purchase(program, "O1", "C1", [{"unit_price_minor": 100}]).json()["points_earned"] == 31
    )
    assert (
        api.purchase(program, "O2", "C2", [{"unit_price_minor": 100}]).json()["points_earned"] == 1
    )
    current = api.request("GET", f"/v1/programs/{program}").json()["document"]
    current["rules"][0]["limits"]["budget"]["points"] = 90
    assert api.request("PUT", f"/v1/programs/{program}", json=current).json()["version"] == 2
    assert (
        api.purchase(program, "O3", "C3", [{"unit_price_minor": 100}]).json()["points_earned"] == 31
    )


WELCOME = {
    "id": "welcome",
    "name": "Welcome bonus",
    "trigger": "enrollment",
    "effect": {"type": "fixed", "points": 100},
}


def test_an_enrollment_rule_pays_a_welcome_bonus_once(api):
    program = _program(api, [WELCOME])
    r = api.request("POST", f"/v1/programs/{program}/members", json={"external_id": "N1"})
    assert r.status_code == 201, r.text
    assert r.json()["welcome"]["points"] == 100
    assert shares(r.json()["welcome"]["rules"]) == [{"rule": "welcome", "points": 100}]
    assert api.balance(program, "ext:N1")["balance"] == 100
    # Auto-enrolment on a first purchase pays it too, and only the first time.
    first = api.purchase(program, "O1", "N2", [{"unit_price_minor": 1000}])
    second = api.purchase(program, "O2", "N2", [{"unit_price_minor": 1000}])
    assert (first.json()["member_enrolled"], first.json()["points_earned"]) == (True, 10)
    assert second.json()["member_enrolled"] is False
    assert api.balance(program, "ext:N2")["balance"] == 120
    kinds = [
        e["source"]["type"]
        for e in api.request("GET", f"/v1/programs/{program}/members/ext:N2/ledger").json()["items"]
    ]
    assert kinds == ["purchase", "purchase", "enrollment"]


def test_an_enrollment_rule_cannot_name_an_action_or_use_purchase_conditions(api):
    for rule in (
        {**WELCOME, "action": "signup"},
        {**WELCOME, "conditions": {"min_total_minor": 1}},
        {**WELCOME, "effect": {"type": "per_spend", "points": 1}},
    ):
        r = api.request(
            "POST", "/v1/programs", json={"name": "W", "currency": "EUR", "rules": [rule]}
        )
        assert r.status_code == 422, rule


def test_a_threshold_bonus_pays_when_the_basket_beats_the_members_average(api):
    program = _program(
        api,
        [
            {
                "id": "above-usual",
                "name": "10% above your usual basket",
                "trigger": "purchase",
                "conditions": {"above_average_percent": 10},
                "effect": {"type": "fixed", "points": 40},
            }
        ],
    )
    earned = [
        api.purchase(program, f"O{i}", "C1", [{"unit_price_minor": amount}]).json()["points_earned"]
        for i, amount in enumerate([2000, 2000, 2200, 2100])
    ]
    # No history: no bonus; 2000 vs 2000: no; 2200 >= 2000 x 1.1: yes; 2100 < 2066 x 1.1: no.
    assert earned == [20, 20, 62, 21]


def test_gift_cards_shipping_and_tax_earn_nothing_unless_a_rule_names_them(api):
    program = _program(
        api,
        [
            {
                "id": "shipping-too",
                "name": "1 per euro of shipping",
                "trigger": "purchase",
                "effect": {
                    "type": "per_spend",
                    "points": 1,
                    "per_spend_minor": 100,
                    "earn_on_kinds": ["shipping"],
                },
            }
        ],
    )
    r = api.purchase(
        program,
        "O1",
        "C1",
        [
            {"line_id": "shirt", "unit_price_minor": 3000},
            {"line_id": "card", "kind": "gift_card", "unit_price_minor": 5000},
            {"line_id": "ship", "kind": "shipping", "unit_price_minor": 500},
            {"line_id": "vat", "kind": "tax", "unit_price_minor": 600},
        ],
    )
    assert r.status_code == 201, r.text
    lines = {li["line_id"]: li["points"] for li in r.json()["lines"]}
    assert lines == {"shirt": 30, "card": 0, "ship": 5, "vat": 0}
    assert shares(r.json()["rules"]) == [
        {"rule": "base", "points": 30},
        {"rule": "shipping-too", "points": 5},
    ]


def test_a_fixed_bonus_is_spread_over_products_not_gift_cards(api):
    program = _program(
        api,
        [
            {
                "id": "bonus",
                "name": "Bonus",
                "trigger": "purchase",
                "effect": {"type": "fixed", "points": 20},
            }
        ],
    )
    r = api.purchase(
        program,
        "O1",
        "C1",
        [
            {"line_id": "shirt", "unit_price_minor": 1000},
            {"line_id": "card", "kind": "gift_card", "unit_price_minor": 5000},
        ],
    )
    lines = {li["line_id"]: li["points"] for li in r.json()["lines"]}
    assert lines == {"shirt": 30, "card": 0}


KEEP_IN_TOUCH = {
    "id": "exchange-goodwill",
    "name": "15 points when a member returns goods, at most once a month",
    "trigger": "return",
    "conditions": {"member_attributes": {"vip": True}},
    "effect": {"type": "fixed", "points": 15},
    "limits": {"per_member": [{"period": "month", "max_count": 1}]},
}


RETURNED_AT = datetime.now(UTC).isoformat()


def _return(api, program, return_id, order_id, lines=None):
    body = {"type": "return", "id": return_id, "order_id": order_id, "occurred_at": RETURNED_AT}
    if lines is not None:
        body["lines"] = lines
    return api.request("POST", f"/v1/programs/{program}/events", json=body)


def test_a_return_rule_pays_on_top_of_the_exact_reversal_within_its_conditions_and_caps(api):
    program = _program(api, [KEEP_IN_TOUCH])
    api.enroll(program, "VIP", attributes={"vip": True})
    api.enroll(program, "REG")
    for member in ("VIP", "REG"):
        r = api.purchase(
            program,
            f"O-{member}",
            member,
            [
                {"line_id": "a", "unit_price_minor": 3000},
                {"line_id": "b", "unit_price_minor": 2000},
            ],
        )
        assert r.json()["points_earned"] == 50
    first = _return(api, program, "R1", "O-VIP", [{"line_id": "b"}])
    assert first.status_code == 201, first.text
    body = first.json()
    # The reversal is exact and its own entry; the rule's points are a second entry.
    assert (body["points_reversed"], body["points_taken"]) == (20, 20)
    assert body["points_earned"] == 15
    assert shares(body["rules"]) == [{"rule": "exchange-goodwill", "points": 15}]
    assert body["earn_entry_id"] not in (None, body["entry_id"])
    assert body["balance"]["balance"] == 50 - 20 + 15
    # The monthly cap holds: a second return the same month earns nothing more.
    second = _return(api, program, "R2", "O-VIP", [{"line_id": "a"}]).json()
    assert (second["points_reversed"], second["points_earned"], second["rules"]) == (30, 0, [])
    assert api.balance(program, "ext:VIP")["balance"] == 15
    # A member the conditions leave out gets only the reversal.
    regular = _return(api, program, "R3", "O-REG").json()
    assert (regular["points_reversed"], regular["points_earned"]) == (50, 0)
    assert api.balance(program, "ext:REG")["balance"] == 0
    # The replayed return answers the same, and pays nothing twice.
    again = _return(api, program, "R1", "O-VIP", [{"line_id": "b"}])
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["points_earned"] == 15
    assert api.balance(program, "ext:VIP")["balance"] == 15


def test_a_return_rule_takes_no_action_and_no_purchase_conditions(api):
    for rule in (
        {**KEEP_IN_TOUCH, "action": "returned"},
        {**KEEP_IN_TOUCH, "conditions": {"min_total_minor": 1}},
        {**KEEP_IN_TOUCH, "effect": {"type": "multiplier", "factor_percent": 200}},
    ):
        r = api.request(
            "POST", "/v1/programs", json={"name": "W", "currency": "EUR", "rules": [rule]}
        )
        assert r.status_code == 422, rule


def test_a_return_that_takes_the_basket_under_a_threshold_reverses_the_whole_bonus(api):
    program = _program(api, GROCER_RULES[1:2])  # 50 points on baskets of 50 EUR or more
    r = api.purchase(
        program,
        "O1",
        "C1",
        [
            {"line_id": "coat", "unit_price_minor": 4000},
            {"line_id": "hat", "unit_price_minor": 1500},
        ],
    )
    assert r.json()["points_earned"] == 55 + 50
    # The hat back: the rest (40 EUR) no longer reaches 50 EUR, so the bonus goes entirely,
    # not only the hat's share of it.
    body = _return(api, program, "R1", "O1", [{"line_id": "hat"}]).json()
    hat = body["lines"][0]
    assert hat["points"] == 15 + 14  # its base points and its share of the bonus
    assert body["points_reversed"] == 105 - 40
    assert body["points_adjusted"] == 36
    assert body["kept"] == {
        "points": 40,
        "rules": [
            {"rule": "base", "paid": 55, "kept": 40},
            {"rule": "big-basket", "paid": 50, "kept": 0},
        ],
    }
    assert api.balance(program, "ext:C1")["balance"] == 40
    # The coat back too: everything is reversed, and nothing twice.
    last = _return(api, program, "R2", "O1").json()
    assert (last["points_reversed"], last["kept"]["points"]) == (40, 0)
    assert api.balance(program, "ext:C1")["balance"] == 0


def test_a_return_never_takes_back_more_than_a_capped_rule_paid(api):
    capped = {**GROCER_RULES[1], "limits": {"budget": {"points": 30}}}
    program = _program(api, [capped])
    r = api.purchase(
        program,
        "O1",
        "C1",
        [{"line_id": "a", "unit_price_minor": 6000}, {"line_id": "b", "unit_price_minor": 1000}],
    )
    assert r.json()["points_earned"] == 70 + 30  # the budget cut the bonus to 30
    body = _return(api, program, "R1", "O1", [{"line_id": "b"}]).json()
    # The rest (60 EUR) still qualifies: the bonus kept is what was paid, 30, not 50.
    assert body["kept"]["rules"][1] == {"rule": "big-basket", "paid": 30, "kept": 30}
    assert body["points_reversed"] == 10
