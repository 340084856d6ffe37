"""A program's settings as the engine computes with them: one immutable version of the
program document. The document grows (rules, tiers, campaigns); this is its spine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from loyalty.domain.points import Rounding, divide

if TYPE_CHECKING:
    from loyalty.domain.cashback import CashbackPolicy, CheckoutRules
    from loyalty.domain.catalog import Reward
    from loyalty.domain.discounts import DiscountPolicy
    from loyalty.domain.memberships import Plan
    from loyalty.domain.rules import Rule
    from loyalty.domain.segments import Segment
    from loyalty.domain.stamps import StampCard
    from loyalty.domain.tiers import TierSet


class ExpiryPolicy(StrEnum):
    NEVER = "never"
    AFTER_DAYS = "after_days"
    """Each lot expires ``days`` days after it was earned."""
    END_OF_PERIOD = "end_of_period"
    """Each lot expires at the end of the month, quarter or year (program time zone) in which
    falls the day ``days`` days after it was earned (0: the period it was earned in)."""
    INACTIVITY = "inactivity"
    """Everything expires ``days`` days after the member's last qualifying activity (a
    purchase, an earning action or a redemption); activity pushes every live lot's expiry."""


class NegativeBalancePolicy(StrEnum):
    """What a return does when the points it takes back were already spent."""

    ALLOW_DEBT = "allow_debt"
    """Take back everything; the shortfall is a debt that future earnings repay first."""

    TAKE_AVAILABLE = "take_available"
    """Take back only what the member still has; the shortfall is written off and recorded."""


@dataclass(frozen=True, slots=True)
class EarnRate:
    points: int
    per_spend_minor: int
    rounding: Rounding


@dataclass(frozen=True, slots=True)
class Expiry:
    policy: ExpiryPolicy
    days: int | None = None
    period: str | None = None
    """For ``end_of_period``: ``month``, ``quarter`` or ``year``."""
    time_zone: str = "UTC"

    def expires_at(self, earned_at: datetime) -> datetime | None:
        if self.policy is ExpiryPolicy.NEVER:
            return None
        if self.policy is ExpiryPolicy.END_OF_PERIOD:
            assert self.period is not None
            return end_of_period(
                self.period, earned_at + timedelta(days=self.days or 0), ZoneInfo(self.time_zone)
            ).astimezone(UTC)
        assert self.days is not None
        return earned_at + timedelta(days=self.days)


def end_of_period(period: str, moment: datetime, zone: ZoneInfo) -> datetime:
    """The first instant after the local month, quarter or year containing ``moment``."""
    local = moment.astimezone(zone)
    if period == "month":
        months = 1
        first = local.month
    elif period == "quarter":
        months = 3
        first = 3 * ((local.month - 1) // 3) + 1
    else:
        months = 12
        first = 1
    month0 = first - 1 + months
    return datetime(local.year + month0 // 12, month0 % 12 + 1, 1, tzinfo=zone)


@dataclass(frozen=True, slots=True)
class PointValue:
    """``money_minor`` of the program's currency for every ``points`` points."""

    points: int = 100
    money_minor: int = 100

    def of(self, points: int) -> int:
        """The value of ``points`` in minor units, rounded half to even."""
        return divide(points * self.money_minor, self.points, Rounding.HALF_EVEN)


@dataclass(frozen=True, slots=True)
class TransferRules:
    enabled: bool = False
    max_per_transfer: int | None = None
    max_per_month: int | None = None


@dataclass(frozen=True, slots=True)
class ProgramSettings:
    currency: str
    earn: EarnRate
    expiry: Expiry
    negative_balance: NegativeBalancePolicy
    auto_enroll: bool
    version: int
    time_zone: str = "UTC"
    pending_days: int = 0
    """Days a purchase's points are held before they can be spent."""
    point_value: PointValue = field(default_factory=PointValue)
    rules: tuple[Rule, ...] = ()
    """The base rate first, then the document's rules."""
    expressions: Mapping[str, str] = field(default_factory=dict)
    """Merchant conditions (CEL source) by rule id."""
    formulas: Mapping[str, str] = field(default_factory=dict)
    """Merchant formulas (CEL source giving points) by rule id."""
    tier_set: TierSet | None = None
    """The main tier set: what ``member.tier`` means."""
    tier_sets: tuple[TierSet, ...] = ()
    """Every tier set, the main one first (empty: no tiers). Tier ids are unique across
    them, so a tier id names its set."""
    stamp_cards: tuple[StampCard, ...] = ()
    discounts: DiscountPolicy = field(default_factory=lambda: _no_discounts())
    plans: tuple[Plan, ...] = ()
    rewards: tuple[Reward, ...] = ()
    segments: tuple[Segment, ...] = ()
    transfers: TransferRules = field(default_factory=TransferRules)
    cashback: CashbackPolicy | None = None
    """Cashback credited on purchases, when the program pays any."""
    checkout: CheckoutRules = field(default_factory=lambda: _default_checkout())


def _no_discounts() -> DiscountPolicy:
    from loyalty.domain.discounts import DiscountPolicy

    return DiscountPolicy()


def _default_checkout() -> CheckoutRules:
    from loyalty.domain.cashback import CheckoutRules

    return CheckoutRules()
