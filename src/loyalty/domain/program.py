"""A program's settings as the engine computes with them: one immutable version of the
program document. The document grows (rules, tiers, campaigns); this is its spine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from loyalty.domain.points import Rounding, divide

if TYPE_CHECKING:
    from loyalty.domain.rules import Rule
    from loyalty.domain.tiers import TierSet


class ExpiryPolicy(StrEnum):
    NEVER = "never"
    AFTER_DAYS = "after_days"


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

    def expires_at(self, earned_at: datetime) -> datetime | None:
        if self.policy is ExpiryPolicy.NEVER:
            return None
        assert self.days is not None
        return earned_at + timedelta(days=self.days)


@dataclass(frozen=True, slots=True)
class PointValue:
    """``money_minor`` of the program's currency for every ``points`` points."""

    points: int = 100
    money_minor: int = 100

    def of(self, points: int) -> int:
        """The value of ``points`` in minor units, rounded half to even."""
        return divide(points * self.money_minor, self.points, Rounding.HALF_EVEN)


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
