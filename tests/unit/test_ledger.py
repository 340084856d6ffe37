"""Exact unit tests of the pure ledger rules in ``loyalty.domain.ledger``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loyalty.domain.errors import InsufficientPoints
from loyalty.domain.ledger import (
    POINTS,
    EarnPlan,
    EntryKind,
    JournalEntryDraft,
    Lot,
    LotTake,
    Posting,
    TakebackPlan,
    account_deltas,
    assert_balanced,
    consumption_order,
    member_account,
    plan_earn,
    plan_redemption,
    plan_takeback,
    program_account,
    take_from_lots,
)
from loyalty.domain.program import NegativeBalancePolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


def lot(lot_id: str, remaining: int, *, earned: int = 0, expires: int | None = None) -> Lot:
    return Lot(lot_id, remaining, day(earned), None if expires is None else day(expires))


def ids(lots: list[Lot]) -> list[str]:
    return [x.lot_id for x in lots]


# --- consumption_order --------------------------------------------------------------------


def test_lots_are_consumed_earliest_expiry_first_whatever_their_age():
    lots = [
        lot("old-late", 10, earned=0, expires=300),
        lot("new-soon", 10, earned=50, expires=60),
        lot("mid", 10, earned=20, expires=100),
    ]
    assert ids(consumption_order(lots)) == ["new-soon", "mid", "old-late"]


def test_lots_that_never_expire_are_consumed_last_oldest_first():
    lots = [
        lot("never-new", 10, earned=40),
        lot("expires-far", 10, earned=30, expires=10_000),
        lot("never-old", 10, earned=1),
    ]
    assert ids(consumption_order(lots)) == ["expires-far", "never-old", "never-new"]


def test_lots_with_the_same_expiry_are_consumed_oldest_first_then_by_id():
    lots = [
        lot("b", 10, earned=5, expires=100),
        lot("c", 10, earned=3, expires=100),
        lot("a", 10, earned=5, expires=100),
    ]
    assert ids(consumption_order(lots)) == ["c", "a", "b"]


def test_empty_lots_are_left_out_of_the_consumption_order():
    lots = [lot("empty", 0, expires=1), lot("full", 5, expires=2)]
    assert ids(consumption_order(lots)) == ["full"]


def test_taking_from_lots_reports_what_could_not_be_covered():
    lots = [lot("a", 3, expires=1), lot("b", 4, expires=2)]
    assert take_from_lots(lots, 5) == ([LotTake("a", 3), LotTake("b", 2)], 0)
    assert take_from_lots(lots, 10) == ([LotTake("a", 3), LotTake("b", 4)], 3)
    assert take_from_lots(lots, 0) == ([], 0)
    assert take_from_lots([], 4) == ([], 4)


# --- plan_redemption ----------------------------------------------------------------------


def test_a_redemption_takes_the_earliest_expiring_lot_first():
    lots = [lot("later", 50, earned=0, expires=90), lot("sooner", 50, earned=10, expires=30)]
    assert plan_redemption(lots, points=20, balance=100) == [LotTake("sooner", 20)]


def test_a_redemption_spans_lots_in_consumption_order():
    lots = [
        lot("never", 100, earned=0),
        lot("later", 30, earned=0, expires=90),
        lot("sooner", 20, earned=10, expires=30),
    ]
    assert plan_redemption(lots, points=70, balance=150) == [
        LotTake("sooner", 20),
        LotTake("later", 30),
        LotTake("never", 20),
    ]


def test_a_redemption_of_the_whole_balance_empties_every_lot():
    lots = [lot("a", 7, expires=5), lot("b", 8)]
    assert plan_redemption(lots, points=15, balance=15) == [LotTake("a", 7), LotTake("b", 8)]


def test_a_redemption_beyond_the_balance_is_rejected_not_clamped():
    lots = [lot("a", 7, expires=5), lot("b", 8)]
    with pytest.raises(InsufficientPoints) as caught:
        plan_redemption(lots, points=16, balance=15)
    err = caught.value
    assert err.code == "insufficient_points"
    assert err.context == {"points_required": 16, "points_available": 15}
    assert str(err) == "16 points are required but only 15 are available."


def test_a_member_in_debt_has_zero_points_available():
    with pytest.raises(InsufficientPoints) as caught:
        plan_redemption([], points=1, balance=-40)
    assert caught.value.context == {"points_required": 1, "points_available": 0}


@pytest.mark.parametrize("points", [0, -5])
def test_a_redemption_must_burn_a_positive_number_of_points(points):
    with pytest.raises(ValueError, match="positive"):
        plan_redemption([lot("a", 10)], points=points, balance=10)


# --- plan_earn ----------------------------------------------------------------------------


def test_earning_without_debt_puts_everything_in_the_new_lot():
    assert plan_earn(25, debt=0) == EarnPlan(lot_remaining=25, debt_repaid=0)


def test_earning_repays_a_smaller_debt_first_and_keeps_the_rest():
    assert plan_earn(25, debt=10) == EarnPlan(lot_remaining=15, debt_repaid=10)


def test_earning_less_than_the_debt_goes_entirely_to_repaying_it():
    assert plan_earn(25, debt=40) == EarnPlan(lot_remaining=0, debt_repaid=25)


def test_earning_exactly_the_debt_clears_it_and_leaves_an_empty_lot():
    assert plan_earn(25, debt=25) == EarnPlan(lot_remaining=0, debt_repaid=25)


# --- plan_takeback ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(NegativeBalancePolicy))
def test_a_takeback_takes_from_the_purchase_lot_first(policy):
    own = [lot("own", 30, earned=10, expires=100)]
    others = [lot("other", 50, earned=0, expires=20), own[0]]
    plan = plan_takeback(points=20, own_lots=own, other_lots=others, policy=policy)
    assert plan == TakebackPlan([LotTake("own", 20)], 20, debt_added=0, points_written_off=0)


@pytest.mark.parametrize("policy", list(NegativeBalancePolicy))
def test_a_takeback_continues_in_other_lots_earliest_expiry_first(policy):
    own = [lot("own", 10, earned=10, expires=100)]
    others = [
        own[0],
        lot("never", 100, earned=0),
        lot("late", 5, earned=0, expires=80),
        lot("soon", 5, earned=5, expires=40),
    ]
    plan = plan_takeback(points=22, own_lots=own, other_lots=others, policy=policy)
    assert plan.takes == [
        LotTake("own", 10),
        LotTake("soon", 5),
        LotTake("late", 5),
        LotTake("never", 2),
    ]
    assert (plan.points_taken, plan.debt_added, plan.points_written_off) == (22, 0, 0)


def test_a_takeback_of_spent_points_becomes_debt_under_allow_debt():
    own = [lot("own", 4, expires=100)]
    others = [own[0], lot("other", 6, expires=50)]
    plan = plan_takeback(
        points=25, own_lots=own, other_lots=others, policy=NegativeBalancePolicy.ALLOW_DEBT
    )
    assert plan == TakebackPlan(
        [LotTake("own", 4), LotTake("other", 6)], 25, debt_added=15, points_written_off=0
    )


def test_a_takeback_of_spent_points_is_written_off_under_take_available():
    own = [lot("own", 4, expires=100)]
    others = [own[0], lot("other", 6, expires=50)]
    plan = plan_takeback(
        points=25, own_lots=own, other_lots=others, policy=NegativeBalancePolicy.TAKE_AVAILABLE
    )
    assert plan == TakebackPlan(
        [LotTake("own", 4), LotTake("other", 6)], 10, debt_added=0, points_written_off=15
    )


def test_a_takeback_from_a_member_with_nothing_left():
    allow = plan_takeback(
        points=9, own_lots=[], other_lots=[], policy=NegativeBalancePolicy.ALLOW_DEBT
    )
    take = plan_takeback(
        points=9, own_lots=[], other_lots=[], policy=NegativeBalancePolicy.TAKE_AVAILABLE
    )
    assert allow == TakebackPlan([], 9, debt_added=9, points_written_off=0)
    assert take == TakebackPlan([], 0, debt_added=0, points_written_off=9)


def test_a_takeback_never_takes_the_purchase_lot_twice():
    # The purchase lot is also among the member's lots; once emptied it must not be revisited.
    own = [lot("own", 5, expires=10)]
    others = [lot("own", 5, expires=10), lot("x", 3, expires=20)]
    plan = plan_takeback(
        points=12, own_lots=own, other_lots=others, policy=NegativeBalancePolicy.ALLOW_DEBT
    )
    assert plan.takes == [LotTake("own", 5), LotTake("x", 3)]
    assert plan.debt_added == 4
    assert plan.points_taken == 12


# --- postings and balance -----------------------------------------------------------------


def test_a_posting_moves_points_by_default():
    p = Posting("a", "b", 5)
    assert p.asset == POINTS == "PTS"


@pytest.mark.parametrize("amount", [0, -1])
def test_a_posting_must_move_a_positive_amount(amount):
    with pytest.raises(ValueError, match="positive amount"):
        Posting("a", "b", amount)


def test_a_posting_needs_two_different_accounts():
    with pytest.raises(ValueError, match="two different accounts"):
        Posting("a", "a", 5)


def test_account_names_identify_the_member_and_the_program_purpose():
    assert member_account("mbr_1") == "member:mbr_1:points"
    assert program_account("prg_1", "issued") == "program:prg_1:points:issued"


def test_account_deltas_net_each_account_per_asset():
    deltas = account_deltas(
        [
            Posting("issued", "m1", 10),
            Posting("m1", "redeemed", 4),
            Posting("issued", "m1", 3, asset="XP"),
        ]
    )
    assert deltas == {
        ("issued", "PTS"): -10,
        ("m1", "PTS"): 6,
        ("redeemed", "PTS"): 4,
        ("issued", "XP"): -3,
        ("m1", "XP"): 3,
    }


def test_balanced_postings_pass_the_balance_check():
    assert_balanced([Posting("issued", "m1", 10), Posting("m1", "redeemed", 4)])
    assert_balanced([Posting("issued", "m1", 10, asset="XP"), Posting("a", "b", 1)])
    assert_balanced([])


def test_a_journal_entry_draft_without_postings_is_invalid():
    with pytest.raises(AssertionError, match="at least one posting"):
        JournalEntryDraft(EntryKind.EARN).validate()


def test_a_journal_entry_draft_with_postings_validates():
    JournalEntryDraft(EntryKind.REDEEM, [Posting("m1", "redeemed", 4)]).validate()
