"""The review dates the database computes for a set-based review or recalculation are the
domain's, on month ends, leap days, late-evening UTC times that are another day locally, and
zones with daylight saving time, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import literal, select

from loyalty.adapters.db import tier_dates
from loyalty.adapters.db.tables import TS
from loyalty.domain.tiers import Window, WindowKind, next_review, review_window, window_at

MOMENTS = [
    datetime(2026, 1, 31, 12, 0, tzinfo=UTC),
    datetime(2026, 2, 28, 23, 30, tzinfo=UTC),
    datetime(2028, 2, 29, 8, 15, 30, 123456, tzinfo=UTC),
    datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
    datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 30, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
    datetime(2026, 8, 31, 22, 0, 0, 1, tzinfo=UTC),
]
ENROLMENTS = [
    datetime(2024, 2, 29, 10, 0, tzinfo=UTC),
    datetime(2023, 12, 31, 23, 45, tzinfo=UTC),
    datetime(2025, 8, 31, 22, 30, tzinfo=UTC),
    datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
]
WINDOWS = [
    Window(WindowKind.ROLLING_MONTHS, 1),
    Window(WindowKind.ROLLING_MONTHS, 12),
    Window(WindowKind.ROLLING_MONTHS, 18),
    Window(WindowKind.CALENDAR_YEAR),
    Window(WindowKind.ANNIVERSARY),
    Window(WindowKind.LIFETIME),
]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York", "Pacific/Auckland"])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w.kind.value}-{w.months}")
def test_the_databases_review_dates_are_the_domains(engine, window, zone):
    tz = ZoneInfo(zone)
    with engine.connect() as conn:
        tier_dates.prepare(conn)
        for enrolled in ENROLMENTS:
            for moment in MOMENTS:
                after, enrolled_at = literal(moment, TS), literal(enrolled, TS)
                row = conn.execute(
                    select(
                        *tier_dates.schedule(
                            conn, window, zone, after=after, enrolled_at=enrolled_at
                        ),
                        tier_dates.window_start(
                            conn, window, zone, at=after, enrolled_at=enrolled_at
                        ),
                    )
                ).one()
                review_at = next_review(window, moment, enrolled_at=enrolled, zone=tz)
                review_from = (
                    None
                    if review_at is None
                    else review_window(window, review_at, enrolled_at=enrolled, zone=tz)[0]
                )
                start, _ = window_at(window, moment, enrolled_at=enrolled, zone=tz)
                assert tuple(row) == (review_at, review_from, start), (moment, enrolled)
