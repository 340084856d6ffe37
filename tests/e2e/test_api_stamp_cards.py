"""Stamp cards: 9 coffees and the 10th is free, at most one stamp a day, rewards issued the
moment a card is full, extra stamps carried over, and returns that take stamps (and a reward)
back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loyalty.application.audit import audit_ledger

COFFEE = {
    "id": "coffee",
    "name": "Coffee card",
    "stamps": 3,
    "reward_points": 250,
    "include": {"categories": ["coffee"]},
}
VISITS = {"id": "visits", "name": "Visit card", "stamps": 2, "reward_points": 40, "per": "purchase"}
DAY0 = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=10)


def _program(api, cards):
    return api.create_program(
        points={"earn": {"points": 0}},
        time_zone="UTC",
        enrollment={"auto_enroll_on_purchase": True},
        stamp_cards=cards,
    )


def _buy(api, program, order_id, lines, at, member="C1"):
    r = api.purchase(program, order_id, member, lines, occurred_at=at.isoformat())
    assert r.status_code == 201, r.text
    return r.json()


def _coffees(n):
    return [{"line_id": "c", "category": "coffee", "quantity": n, "unit_price_minor": 300}]


def _cards(api, program, member="ext:C1"):
    r = api.request("GET", f"/v1/programs/{program}/members/{member}/stamp-cards")
    assert r.status_code == 200, r.text
    return r.json()


def test_a_full_card_issues_its_reward_at_once_and_extra_stamps_carry_over(api):
    program = _program(api, [COFFEE])
    first = _buy(api, program, "O1", _coffees(2), DAY0)
    assert [(c["stamps"], c["on_card"], c["reward_entries"]) for c in first["stamps"]] == [
        (2, 2, [])
    ]
    second = _buy(
        api,
        program,
        "O2",
        [*_coffees(2), {"line_id": "cake", "category": "pastry", "unit_price_minor": 400}],
        DAY0 + timedelta(days=1),
    )
    card = second["stamps"][0]
    # 2 more coffees (the cake earns none): 4 stamps, one card full, 1 carried over.
    assert (card["stamps"], card["on_card"], card["needed"], card["cards_completed"]) == (
        2,
        1,
        2,
        1,
    )
    assert len(card["reward_entries"]) == 1
    assert api.balance(program, "ext:C1")["balance"] == 250
    view = _cards(api, program)
    assert view["cards"][0]["rewards_issued"] == 1
    assert view["visits"] == {"days": 2, "purchases": 2}


def test_at_most_one_visit_stamp_a_day(api):
    program = _program(api, [{**VISITS, "max_per_day": 1}])
    morning = _buy(api, program, "O1", [{"unit_price_minor": 500}], DAY0)
    evening = _buy(api, program, "O2", [{"unit_price_minor": 500}], DAY0 + timedelta(hours=8))
    next_day = _buy(api, program, "O3", [{"unit_price_minor": 500}], DAY0 + timedelta(days=1))
    assert [b["stamps"][0]["stamps"] for b in (morning, evening, next_day)] == [1, 0, 1]
    assert next_day["stamps"][0]["cards_completed"] == 1
    assert api.balance(program, "ext:C1")["balance"] == 40
    assert _cards(api, program)["visits"] == {"days": 2, "purchases": 3}


def test_a_return_takes_back_stamps_and_the_reward_of_a_card_it_leaves_short(api):
    program = _program(api, [COFFEE])
    _buy(api, program, "O1", _coffees(2), DAY0)
    _buy(api, program, "O2", _coffees(2), DAY0 + timedelta(days=1))
    assert api.balance(program, "ext:C1")["balance"] == 250
    r = api.request(
        "POST",
        f"/v1/programs/{program}/events",
        json={
            "type": "return",
            "id": "R1",
            "order_id": "O2",
            "occurred_at": (DAY0 + timedelta(days=2)).isoformat(),
            "lines": [{"line_id": "c", "quantity": 2}],
        },
    )
    assert r.status_code == 201, r.text
    taken = r.json()["stamps"][0]
    # Back to 2 stamps: the full card is no longer full, so its 250 points go back too.
    assert (taken["stamps"], taken["on_card"], taken["cards_completed"]) == (-2, 2, 0)
    assert taken["reward_points_taken"] == 250
    assert api.balance(program, "ext:C1")["balance"] == 0
    # Coffee again: the card fills again and pays again.
    again = _buy(api, program, "O3", _coffees(1), DAY0 + timedelta(days=3))
    assert again["stamps"][0]["cards_completed"] == 1
    assert api.balance(program, "ext:C1")["balance"] == 250
    assert audit_ledger(api.engine) == []
