"""Tiers (VIP levels): which tier a metric qualifies for, over which window, and when a
member's tier is reviewed.

A tier set is an ordered list of tiers with rising thresholds on one metric (spend, tier
points, purchases or visits) measured over a window. Upgrades happen at once, inside the
event that crosses a threshold. Downgrades happen only at a review, by at most
``max_levels_down`` levels, ``grace_days`` after the review date. Everything here is pure:
time and the metric are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo


class TierMetric(StrEnum):
    SPEND = "spend"
    """Eligible spend in minor units (lines after discounts), less returns."""
    TIER_POINTS = "tier_points"
    """Points earned by purchases, actions and return rules, less points reversed by returns;
    never the spendable balance (redeeming does not lower it)."""
    PURCHASES = "purchases"
    VISITS = "visits"
    """Distinct local days with a purchase."""


class WindowKind(StrEnum):
    ROLLING_MONTHS = "rolling_months"
    CALENDAR_YEAR = "calendar_year"
    ANNIVERSARY = "anniversary"
    LIFETIME = "lifetime"


@dataclass(frozen=True, slots=True)
class Window:
    kind: WindowKind
    months: int = 12
    """For ``rolling_months``: the window's length, and how long a tier holds before review."""


@dataclass(frozen=True, slots=True)
class Tier:
    tier_id: str
    name: str
    threshold: int
    earn_multiplier_percent: int = 100
    discount_percent: int = 0
    perks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TierSet:
    set_id: str
    metric: TierMetric
    window: Window
    tiers: tuple[Tier, ...]
    """Ordered by threshold; the first one's threshold is 0 (every member has a tier)."""
    max_levels_down: int = 1
    grace_days: int = 0
    index: dict[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.index.update({tier.tier_id: i for i, tier in enumerate(self.tiers)})

    @property
    def lowest(self) -> Tier:
        return self.tiers[0]

    def level(self, tier_id: str) -> int:
        """The tier's position (0 = lowest); a tier no longer in the set counts as the
        lowest."""
        return self.index.get(tier_id, 0)

    def qualifying(self, metric: int) -> Tier:
        """The highest tier whose threshold ``metric`` reaches."""
        best = self.tiers[0]
        for tier in self.tiers:
            if metric >= tier.threshold:
                best = tier
        return best

    def next_above(self, tier_id: str) -> Tier | None:
        level = self.level(tier_id)
        return self.tiers[level + 1] if level + 1 < len(self.tiers) else None

    def after_review(self, current: str, metric: int) -> Tier:
        """The tier a review gives: what ``metric`` qualifies for, but at most
        ``max_levels_down`` below ``current`` (and never below the lowest)."""
        qualified = self.qualifying(metric)
        floor = max(0, self.level(current) - self.max_levels_down)
        return self.tiers[max(self.level(qualified.tier_id), floor)]


def add_months(moment: datetime, months: int) -> datetime:
    """The same local day ``months`` later (clamped to the month's last day)."""
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    days = [31, 29 if _leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return moment.replace(year=year, month=month, day=min(moment.day, days))


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _local_midnight(moment: datetime, zone: ZoneInfo) -> datetime:
    local = moment.astimezone(zone)
    return datetime(local.year, local.month, local.day, tzinfo=zone)


def _anniversary_on_or_before(at: datetime, enrolled_at: datetime, zone: ZoneInfo) -> datetime:
    start = _local_midnight(enrolled_at, zone)
    local = at.astimezone(zone)
    years = local.year - start.year
    candidate = add_months(start, 12 * years)
    if candidate > local:
        candidate = add_months(start, 12 * (years - 1))
    return candidate


def window_at(
    window: Window, at: datetime, *, enrolled_at: datetime, zone: ZoneInfo
) -> tuple[datetime | None, datetime]:
    """The window ``[start, end)`` in force at ``at``: the one an upgrade is measured over
    (``start`` None: from the beginning)."""
    if window.kind is WindowKind.LIFETIME:
        return None, at
    if window.kind is WindowKind.ROLLING_MONTHS:
        return add_months(at, -window.months), at
    if window.kind is WindowKind.CALENDAR_YEAR:
        local = at.astimezone(zone)
        return datetime(local.year, 1, 1, tzinfo=zone), at
    return _anniversary_on_or_before(at, enrolled_at, zone), at


def review_window(
    window: Window, review_at: datetime, *, enrolled_at: datetime, zone: ZoneInfo
) -> tuple[datetime | None, datetime]:
    """The window a review at ``review_at`` measures: the one that ends there."""
    if window.kind is WindowKind.LIFETIME:
        return None, review_at
    if window.kind is WindowKind.ROLLING_MONTHS:
        return add_months(review_at, -window.months), review_at
    # Calendar year and anniversary: the year that has just ended.
    just_before = review_at - timedelta(microseconds=1)
    start, _ = window_at(window, just_before, enrolled_at=enrolled_at, zone=zone)
    return start, review_at


def next_review(
    window: Window, after: datetime, *, enrolled_at: datetime, zone: ZoneInfo
) -> datetime | None:
    """When a tier reached or kept at ``after`` is next reviewed (None: never)."""
    if window.kind is WindowKind.LIFETIME:
        return None
    if window.kind is WindowKind.ROLLING_MONTHS:
        return add_months(after, window.months)
    if window.kind is WindowKind.CALENDAR_YEAR:
        local = after.astimezone(zone)
        return datetime(local.year + 1, 1, 1, tzinfo=zone)
    start = _anniversary_on_or_before(after, enrolled_at, zone)
    return add_months(start, 12)


def tier_by_id(tier_set: TierSet, tier_id: str) -> Tier:
    return tier_set.tiers[tier_set.level(tier_id)]


def thresholds(tiers: Sequence[Tier]) -> list[int]:
    return [tier.threshold for tier in tiers]
