"""The tier review and recalculation are set-based and run in batches of members: members
enrolled on different days each get their own anniversary window and next review (a leap
day, an enrolment just after local midnight), manual assignments are held or reviewed, a
review that is more than a year behind catches up, and running either job twice changes
nothing the second time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from loyalty.adapters.db.tables import members, tier_changes
from loyalty.application import tiers
from loyalty.application.access import authenticate
from tests.e2e.test_api_tiers import LEVELS, change_levels

PARIS = ZoneInfo("Europe/Paris")
HIGH = [
    LEVELS[0],
    {**LEVELS[1], "threshold": 1_000_000},
    {**LEVELS[2], "threshold": 2_000_000},
]


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(tiers, "REVIEW_BATCH", 2)
    monkeypatch.setattr(tiers, "RECALCULATE_BATCH", 2)


def _program(api, levels):
    return api.create_program(
        time_zone="Europe/Paris",
        enrollment={"auto_enroll_on_purchase": True},
        tiers={
            "metric": "spend",
            "window": {"type": "anniversary"},
            "max_levels_down": 1,
            "levels": levels,
        },
    )


def _enroll_on(api, program, external_id, enrolled_at):
    member_id = api.enroll(program, external_id)
    with api.engine.begin() as conn:
        conn.execute(
            update(members).where(members.c.id == member_id).values(enrolled_at=enrolled_at)
        )
    return member_id


def buy_at(api, program, order_id, member, euros, at):
    r = api.purchase(
        program, order_id, member, [{"unit_price_minor": euros * 100}], occurred_at=at.isoformat()
    )
    assert r.status_code == 201, r.text
    return r.json()


def _view(api, program, member):
    r = api.request("GET", f"/v1/programs/{program}/members/ext:{member}/tier")
    assert r.status_code == 200, r.text
    body = r.json()
    until = datetime.fromisoformat(body["until"]) if body["until"] else None
    return body["tier"]["id"], until, body["manual"]


def _ctx(api, program):
    from loyalty.application.programs import all_programs

    with api.engine.connect() as conn:
        return next(c for c in all_programs(conn) if c.program_id == program)


def _assign_gold(api, program, member, *, until, now):
    principal = authenticate(api.engine, api.token)
    tiers.assign_tier(
        api.engine,
        principal,
        program,
        f"ext:{member}",
        tier_id="gold",
        reason="status match",
        until=until,
        now=now,
    )
    return principal


def _utc(*args):
    return datetime(*args, tzinfo=UTC)


def test_reviews_in_batches_give_each_member_their_own_anniversary_and_catch_up(api, small_batches):
    program = _program(api, LEVELS)
    _enroll_on(api, program, "P", _utc(2024, 2, 29, 9))  # leap day: Feb 28 in other years
    _enroll_on(api, program, "Q", _utc(2025, 6, 15, 22, 30))  # 16 June, local time
    _enroll_on(api, program, "R", _utc(2025, 1, 10, 9))
    _enroll_on(api, program, "S", _utc(2025, 5, 5, 9))
    for order, member, euros, at, tier in [
        ("P1", "P", 600, _utc(2025, 3, 10, 9), "gold"),
        ("Q1", "Q", 150, _utc(2025, 7, 1, 9), "silver"),
        ("R1", "R", 600, _utc(2025, 2, 1, 9), "gold"),
    ]:
        assert buy_at(api, program, order, member, euros, at)["tier_change"]["to"] == tier
    buy_at(api, program, "R2", "R", 600, _utc(2026, 2, 1, 9))  # R's next membership year
    _assign_gold(api, program, "S", until=_utc(2026, 3, 1), now=_utc(2026, 1, 20))
    ctx = _ctx(api, program)

    # P, Q and R keep their tier on their anniversary's spend. S's assignment ends on 1 March
    # with no spend: down to Silver, reviewed again on S's anniversary (5 May, also past) and
    # down to Bronze: one job, caught up.
    first = tiers.review_tiers(api.engine, ctx, now=_utc(2026, 7, 1))
    assert first == {"reviewed": 5, "kept": 3, "downgraded": 2}
    assert _view(api, program, "P") == ("gold", datetime(2027, 2, 28, tzinfo=PARIS), False)
    assert _view(api, program, "Q") == ("silver", datetime(2027, 6, 16, tzinfo=PARIS), False)
    assert _view(api, program, "R") == ("gold", datetime(2027, 1, 10, tzinfo=PARIS), False)
    assert _view(api, program, "S") == ("bronze", datetime(2027, 5, 5, tzinfo=PARIS), False)

    # A year on: P and Q spent nothing in their membership year, R spent 600 EUR in its own.
    second = tiers.review_tiers(api.engine, ctx, now=_utc(2027, 7, 1))
    assert second == {"reviewed": 4, "kept": 2, "downgraded": 2}
    assert _view(api, program, "P") == ("silver", datetime(2028, 2, 28, tzinfo=PARIS), False)
    assert _view(api, program, "Q") == ("bronze", datetime(2028, 6, 16, tzinfo=PARIS), False)
    assert _view(api, program, "R") == ("gold", datetime(2028, 1, 10, tzinfo=PARIS), False)
    assert _view(api, program, "S") == ("bronze", datetime(2028, 5, 5, tzinfo=PARIS), False)
    assert tiers.review_tiers(api.engine, ctx, now=_utc(2027, 7, 1)) == {}

    with api.engine.connect() as conn:
        moves = conn.execute(
            select(tier_changes.c.from_tier, tier_changes.c.to_tier, tier_changes.c.metric)
            .where(tier_changes.c.reason == "review")
            .order_by(tier_changes.c.id)
        ).all()
    assert [tuple(m) for m in moves] == [
        ("gold", "silver", 0),
        ("silver", "bronze", 0),
        ("gold", "silver", 0),
        ("silver", "bronze", 0),
    ]


def test_recalculation_in_batches_measures_each_members_own_anniversary_year(api, small_batches):
    program = _program(api, HIGH)
    for member, enrolled_at in [
        ("A", _utc(2024, 2, 29, 9)),
        ("B", _utc(2025, 6, 15, 22, 30)),
        ("C", _utc(2025, 11, 1, 9)),
        ("D", _utc(2025, 1, 10, 9)),
        ("E", _utc(2025, 3, 3, 9)),
    ]:
        _enroll_on(api, program, member, enrolled_at)
    # A's membership year started on 28 February 2026 (no 29th): only the second purchase.
    buy_at(api, program, "A1", "A", 400, _utc(2026, 2, 27, 12))
    buy_at(api, program, "A2", "A", 100, _utc(2026, 2, 28, 10))
    # B's started at midnight on 16 June, Paris time: 22:00 UTC on the 15th.
    buy_at(api, program, "B1", "B", 400, _utc(2026, 6, 15, 21, 30))
    buy_at(api, program, "B2", "B", 100, _utc(2026, 6, 15, 22, 15))
    buy_at(api, program, "C1", "C", 600, _utc(2025, 12, 1, 9))
    principal = _assign_gold(api, program, "D", until=_utc(2026, 12, 1), now=_utc(2026, 6, 1))
    change_levels(api, program, LEVELS)
    now = _utc(2026, 7, 1, 10)

    def recalculate(apply):
        return tiers.recalculate_tiers(api.engine, principal, program, now=now, apply=apply)

    preview = recalculate(False)
    expected = [
        {"from": "bronze", "to": "gold", "members": 1},
        {"from": "bronze", "to": "silver", "members": 2},
    ]
    assert (preview["members"], preview["changes"]) == (5, expected)
    assert _view(api, program, "A")[0] == "bronze"  # a preview moves no one
    applied = recalculate(True)
    assert (applied["members"], applied["changes"], applied["applied"]) == (5, expected, True)
    assert _view(api, program, "A") == ("silver", datetime(2027, 2, 28, tzinfo=PARIS), False)
    assert _view(api, program, "B") == ("silver", datetime(2027, 6, 16, tzinfo=PARIS), False)
    assert _view(api, program, "C") == ("gold", datetime(2026, 11, 1, tzinfo=PARIS), False)
    assert _view(api, program, "D") == ("gold", _utc(2026, 12, 1), True)  # held by hand
    assert recalculate(True)["members_moving"] == 0
    with api.engine.connect() as conn:
        recorded = conn.execute(
            select(tier_changes.c.to_tier, tier_changes.c.metric, tier_changes.c.actor)
            .where(tier_changes.c.reason == "recalculated")
            .order_by(tier_changes.c.member_id)
        ).all()
    assert sorted(tuple(r) for r in recorded) == [
        ("gold", 60_000, principal.key_id),
        ("silver", 10_000, principal.key_id),
        ("silver", 10_000, principal.key_id),
    ]
