"""The points ledger: accounts, postings, journal entries and lots.

Invariants (checked here before anything is written, and again by ``loyalty ledger audit``):

* every journal entry's postings sum to zero per asset;
* a member account's balance equals the sum of its lots' remaining points minus its debt,
  and a member never holds both lots with points and a debt;
* a lot's remaining points equal its amount minus everything consumed from it, and stay
  within ``0..amount``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from loyalty.domain.errors import InsufficientPoints
from loyalty.domain.program import NegativeBalancePolicy

POINTS = "PTS"
CASH = "CASH"
"""The cashback (stored-value) wallet: integer minor units of the program's currency."""

_WALLET_NAMES = {POINTS: "points", CASH: "cashback"}


class EntryKind(StrEnum):
    EARN = "earn"
    RETURN = "return"
    REDEEM = "redeem"
    REDEEM_CANCEL = "redeem_cancel"
    ADJUST_CREDIT = "adjust_credit"
    ADJUST_DEBIT = "adjust_debit"
    EXPIRE = "expire"
    HOLD = "hold"
    """Points reserved at checkout: out of the member's lots into the program's held account."""
    HOLD_CAPTURE = "hold_capture"
    """Held points captured by a completed order: from held to redeemed."""
    TRANSFER = "transfer"
    """Points moved from one member to another of the same program, in one entry."""
    HOLD_RELEASE = "hold_release"
    """Held points given back to the lots they came from (an abandoned order, an expired hold,
    or what a capture did not take)."""
    CASHBACK = "cashback"
    """Cashback credited for a purchase: money into the member's cashback wallet."""
    CASHBACK_RETURN = "cashback_return"
    """Cashback taken back because purchased items were returned."""
    PAYMENT_RESTORE = "payment_restore"
    """Points or cashback that paid for returned items, given back to the lots they came
    from."""


class MovementKind(StrEnum):
    """Why points left (negative) or came back to (positive) a lot."""

    REDEEM = "redeem"
    REDEEM_CANCEL = "redeem_cancel"
    RETURN = "return"
    EXPIRE = "expire"
    ADJUST_DEBIT = "adjust_debit"
    DEBT_REPAYMENT = "debt_repayment"
    HOLD = "hold"
    HOLD_RELEASE = "hold_release"
    TRANSFER_OUT = "transfer_out"
    PAYMENT_RESTORE = "payment_restore"


def member_account(member_id: str, asset: str = POINTS) -> str:
    """``member:<id>:points`` or ``member:<id>:cashback``."""
    return f"member:{member_id}:{_WALLET_NAMES[asset]}"


def program_account(program_id: str, purpose: str, asset: str = POINTS) -> str:
    """Program-side accounts: ``issued``, ``redeemed``, ``expired``, ``adjustments``, ``held``
    (``program:<id>:points:<purpose>``, or ``...:cashback:<purpose>`` for the cashback wallet)."""
    return f"program:{program_id}:{_WALLET_NAMES[asset]}:{purpose}"


@dataclass(frozen=True, slots=True)
class Posting:
    """Moves ``amount`` of ``asset`` from ``source`` to ``destination``."""

    source: str
    destination: str
    amount: int
    asset: str = POINTS

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError("a posting moves a positive amount")
        if self.source == self.destination:
            raise ValueError("a posting needs two different accounts")


def account_deltas(postings: Iterable[Posting]) -> dict[tuple[str, str], int]:
    """Net change per (account, asset). Double-entry makes these sum to zero per asset."""
    deltas: dict[tuple[str, str], int] = defaultdict(int)
    for p in postings:
        deltas[(p.source, p.asset)] -= p.amount
        deltas[(p.destination, p.asset)] += p.amount
    return dict(deltas)


def assert_balanced(postings: Sequence[Posting]) -> None:
    totals: dict[str, int] = defaultdict(int)
    for (_account, asset), delta in account_deltas(postings).items():
        totals[asset] += delta
    unbalanced = {asset: total for asset, total in totals.items() if total != 0}
    if unbalanced:
        raise AssertionError(f"unbalanced entry: {unbalanced}")


@dataclass(frozen=True, slots=True)
class Lot:
    lot_id: str
    remaining: int
    earned_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class LotTake:
    lot_id: str
    points: int


def consumption_order(lots: Iterable[Lot]) -> list[Lot]:
    """Earliest expiry first; lots that never expire last; then oldest first."""
    return sorted(
        (lot for lot in lots if lot.remaining > 0),
        key=lambda lot: (
            lot.expires_at is None,
            lot.expires_at or lot.earned_at,
            lot.earned_at,
            lot.lot_id,
        ),
    )


def take_from_lots(lots: Iterable[Lot], points: int) -> tuple[list[LotTake], int]:
    """Take up to ``points`` from ``lots`` in consumption order; returns the takes and the
    points that could not be covered."""
    takes: list[LotTake] = []
    left = points
    for lot in consumption_order(lots):
        if left == 0:
            break
        take = min(lot.remaining, left)
        takes.append(LotTake(lot.lot_id, take))
        left -= take
    return takes, left


def plan_redemption(lots: Sequence[Lot], *, points: int, balance: int) -> list[LotTake]:
    """Which lots a burn of ``points`` consumes. Rejects (never clamps) a burn the balance
    cannot cover."""
    if points <= 0:
        raise ValueError("a redemption burns a positive number of points")
    if balance < points:
        raise InsufficientPoints(points_required=points, points_available=max(balance, 0))
    takes, uncovered = take_from_lots(lots, points)
    assert uncovered == 0, "balance and lots disagree"
    return takes


@dataclass(frozen=True, slots=True)
class EarnPlan:
    lot_remaining: int
    debt_repaid: int


def plan_earn(points: int, *, debt: int) -> EarnPlan:
    """A new lot first repays any debt left by an earlier return."""
    repaid = min(points, debt)
    return EarnPlan(lot_remaining=points - repaid, debt_repaid=repaid)


@dataclass(frozen=True, slots=True)
class TakebackPlan:
    takes: list[LotTake]
    points_taken: int
    """Points debited from the member's account (lots taken plus any new debt)."""
    debt_added: int
    points_written_off: int


def plan_takeback(
    *,
    points: int,
    own_lots: Sequence[Lot],
    other_lots: Sequence[Lot],
    policy: NegativeBalancePolicy,
) -> TakebackPlan:
    """Take back ``points`` earned by a purchase that was returned: first from the lots the
    purchase created, then from the member's other lots, earliest expiry first; what the
    member already spent becomes a debt or is written off, as the program says."""
    own_takes, left = take_from_lots(own_lots, points)
    own_ids = {lot.lot_id for lot in own_lots}
    other_takes, left = take_from_lots(
        (lot for lot in other_lots if lot.lot_id not in own_ids), left
    )
    takes = own_takes + other_takes
    taken = sum(t.points for t in takes)
    if policy is NegativeBalancePolicy.ALLOW_DEBT:
        return TakebackPlan(takes, taken + left, debt_added=left, points_written_off=0)
    return TakebackPlan(takes, taken, debt_added=0, points_written_off=left)


@dataclass(slots=True)
class JournalEntryDraft:
    """A journal entry before it is written: postings plus the lot movements that go with it."""

    kind: EntryKind
    postings: list[Posting] = field(default_factory=list)

    def validate(self) -> None:
        if not self.postings:
            raise AssertionError("an entry has at least one posting")
        assert_balanced(self.postings)


def plan_release(taken: Sequence[Lot], points: int) -> list[LotTake]:
    """Which of the lots a hold took get ``points`` back: the latest-expiring first (the
    captured part is then the points closest to expiry, as a redemption would have spent)."""
    order = list(reversed(consumption_order(taken)))
    takes: list[LotTake] = []
    left = points
    for lot in order:
        if left == 0:
            break
        step = min(lot.remaining, left)
        takes.append(LotTake(lot.lot_id, step))
        left -= step
    assert left == 0, "a release can't give back more than the hold took"
    return takes


def plan_debt_repayment(lots: Iterable[Lot], debt: int) -> dict[str, int]:
    """Points given back to a member with a debt repay it first: how much of each lot goes to
    the debt, earliest-expiring lot first (the lot keeps the rest)."""
    repaid: dict[str, int] = {}
    left = debt
    for lot in consumption_order(lots):
        if left == 0:
            break
        step = min(lot.remaining, left)
        repaid[lot.lot_id] = repaid.get(lot.lot_id, 0) + step
        left -= step
    return repaid
