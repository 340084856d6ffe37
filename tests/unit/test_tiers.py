"""Tier arithmetic: qualifying tiers, review outcomes, windows and review dates."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from loyalty.domain.tiers import (
    Tier,
    TierMetric,
    TierSet,
    Window,
    WindowKind,
    add_months,
    next_review,
    review_window,
    window_at,
)

PARIS = ZoneInfo("Europe/Paris")
LEVELS = (Tier("bronze", "Bronze", 0), Tier("silver", "Silver", 100), Tier("gold", "Gold", 500))


def tier_set(window: Window, *, max_levels_down: int = 1) -> TierSet:
    return TierSet("status", TierMetric.SPEND, window, LEVELS, max_levels_down=max_levels_down)


@pytest.mark.parametrize(
    ("metric", "expected"), [(0, "bronze"), (99, "bronze"), (100, "silver"), (10**9, "gold")]
)
def test_the_highest_tier_whose_threshold_is_reached_qualifies(metric, expected):
    assert tier_set(Window(WindowKind.LIFETIME)).qualifying(metric).tier_id == expected


@pytest.mark.parametrize(
    ("current", "metric", "levels_down", "expected"),
    [
        ("gold", 0, 1, "silver"),
        ("gold", 0, 2, "bronze"),
        ("gold", 120, 2, "silver"),
        ("gold", 600, 1, "gold"),
        ("silver", 600, 1, "gold"),
        ("bronze", 0, 1, "bronze"),
        ("retired-tier", 0, 1, "bronze"),
    ],
)
def test_a_review_moves_down_at_most_the_allowed_levels(current, metric, levels_down, expected):
    ts = tier_set(Window(WindowKind.LIFETIME), max_levels_down=levels_down)
    assert ts.after_review(current, metric).tier_id == expected


def test_months_are_added_on_the_same_day_clamped_to_the_months_end():
    assert add_months(datetime(2026, 1, 31, tzinfo=UTC), 1) == datetime(2026, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2024, 1, 31, tzinfo=UTC), 1) == datetime(2024, 2, 29, tzinfo=UTC)
    assert add_months(datetime(2026, 3, 15, tzinfo=UTC), -15) == datetime(2024, 12, 15, tzinfo=UTC)


def test_a_calendar_year_is_read_in_the_programs_time_zone_and_reviewed_on_1_january():
    window = Window(WindowKind.CALENDAR_YEAR)
    # 31 Dec 23:30 UTC is already 1 January in Paris.
    at = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    start, _ = window_at(window, at, enrolled_at=at, zone=PARIS)
    assert start == datetime(2027, 1, 1, tzinfo=PARIS)
    review = next_review(window, datetime(2026, 6, 1, tzinfo=UTC), enrolled_at=at, zone=PARIS)
    assert review == datetime(2027, 1, 1, tzinfo=PARIS)
    # The review measures the year that has just ended.
    assert review_window(window, review, enrolled_at=at, zone=PARIS)[0] == datetime(
        2026, 1, 1, tzinfo=PARIS
    )


def test_anniversary_windows_run_from_the_day_the_member_joined():
    window = Window(WindowKind.ANNIVERSARY)
    enrolled = datetime(2024, 9, 10, 15, 0, tzinfo=UTC)
    at = datetime(2026, 3, 1, tzinfo=UTC)
    start, _ = window_at(window, at, enrolled_at=enrolled, zone=PARIS)
    assert start == datetime(2025, 9, 10, tzinfo=PARIS)
    assert next_review(window, at, enrolled_at=enrolled, zone=PARIS) == datetime(
        2026, 9, 10, tzinfo=PARIS
    )


def test_rolling_windows_hold_a_tier_for_their_length_and_lifetime_is_never_reviewed():
    at = datetime(2026, 5, 20, tzinfo=UTC)
    rolling = Window(WindowKind.ROLLING_MONTHS, months=6)
    assert window_at(rolling, at, enrolled_at=at, zone=PARIS)[0] == datetime(
        2025, 11, 20, tzinfo=UTC
    )
    assert next_review(rolling, at, enrolled_at=at, zone=PARIS) == datetime(
        2026, 11, 20, tzinfo=UTC
    )
    lifetime = Window(WindowKind.LIFETIME)
    assert next_review(lifetime, at, enrolled_at=at, zone=PARIS) is None
    assert window_at(lifetime, at, enrolled_at=at, zone=PARIS)[0] is None
