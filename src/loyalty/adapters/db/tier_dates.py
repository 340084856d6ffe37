"""Tier review dates as SQL, so a review or a recalculation can schedule a million members in a
few statements instead of one computation per member in Python.

``domain.tiers`` is the definition: when a tier reached at ``after`` is next reviewed and which
window that review measures. Here the same dates are SQL expressions over columns
(``member_tiers.review_at``, ``members.enrolled_at``):

- PostgreSQL: date arithmetic in SQL, in the program's time zone (``timezone(zone, ...)``);
  month arithmetic clamps to the month's last day as ``domain.tiers.add_months`` does.
- SQLite has no time zones: the expressions call a function registered on the connection
  (:func:`prepare`) that runs the domain's own functions, one call per row.

``tests/integration/test_tier_dates.py`` checks the PostgreSQL expressions against the domain
on month ends, leap days and time zones with daylight saving time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Integer, String, case, cast, extract, func, literal, type_coerce
from sqlalchemy.sql.elements import ColumnElement

from loyalty.adapters.db.tables import TS
from loyalty.domain.tiers import Window, WindowKind, next_review, review_window, window_at

_SQLITE_FUNCTION = "loyalty_tier_date"
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
"""How SQLAlchemy's SQLite dialect stores a datetime (naive UTC, as ``UTCDateTime`` binds it),
so values written by the function compare and read back like any other."""


class _Part(IntEnum):
    REVIEW_AT = 0
    REVIEW_FROM = 1
    WINDOW_START = 2


def _sqlite_date(
    kind: str, months: int, zone: str, after: str | None, enrolled_at: str | None, part: int
) -> str | None:
    if after is None:
        return None
    window = Window(WindowKind(kind), months)
    tz = ZoneInfo(zone)
    at = datetime.fromisoformat(after).replace(tzinfo=UTC)
    enrolled = (
        datetime.fromisoformat(enrolled_at).replace(tzinfo=UTC)
        if enrolled_at is not None
        else datetime(1970, 1, 1, tzinfo=UTC)
    )
    result: datetime | None
    if part == _Part.WINDOW_START:
        result, _ = window_at(window, at, enrolled_at=enrolled, zone=tz)
    else:
        result = next_review(window, at, enrolled_at=enrolled, zone=tz)
        if result is not None and part == _Part.REVIEW_FROM:
            result, _ = review_window(window, result, enrolled_at=enrolled, zone=tz)
    return None if result is None else result.astimezone(UTC).strftime(_SQLITE_FORMAT)


def prepare(conn: Connection) -> None:
    """Make the expressions below usable on ``conn`` (registers the SQLite function; nothing
    to do on PostgreSQL). Call it in the transaction that runs them."""
    if conn.dialect.name == "sqlite":
        raw: Any = conn.connection.driver_connection
        raw.create_function(_SQLITE_FUNCTION, 6, _sqlite_date, deterministic=True)


def _sqlite(
    window: Window, zone: str, after: ColumnElement[Any], enrolled_at: ColumnElement[Any], part: int
) -> ColumnElement[datetime]:
    return type_coerce(
        getattr(func, _SQLITE_FUNCTION)(
            window.kind.value, window.months, zone, after, enrolled_at, part
        ),
        TS,
    )


def _local(zone: str, moment: ColumnElement[Any]) -> ColumnElement[Any]:
    """A timestamptz as the program's wall-clock time (timestamp without time zone)."""
    return func.timezone(cast(literal(zone), String), moment)


def _zoned(zone: str, local: ColumnElement[Any]) -> ColumnElement[datetime]:
    """A wall-clock time in the program's zone as an instant (timestamptz)."""
    return type_coerce(func.timezone(cast(literal(zone), String), local), TS)


def _months(n: ColumnElement[Any] | int) -> ColumnElement[Any]:
    return func.make_interval(0, n)


def _anniversary_on_or_before(
    zone: str, moment: ColumnElement[Any], enrolled_at: ColumnElement[Any]
) -> ColumnElement[Any]:
    """As ``domain.tiers._anniversary_on_or_before``, in local wall-clock time."""
    start = func.date_trunc("day", _local(zone, enrolled_at))
    local = _local(zone, moment)
    years = cast(extract("year", local), Integer) - cast(extract("year", start), Integer)
    candidate = start + _months(12 * years)
    return case((candidate > local, start + _months(12 * (years - 1))), else_=candidate)


def _add_months_utc(moment: ColumnElement[Any], months: int) -> ColumnElement[Any]:
    """``domain.tiers.add_months`` on a UTC instant (the stored dates are UTC)."""
    return _zoned("UTC", _local("UTC", moment) + _months(months))


def _pg(
    window: Window, zone: str, after: ColumnElement[Any], enrolled_at: ColumnElement[Any], part: int
) -> ColumnElement[Any]:
    kind = window.kind
    if kind is WindowKind.LIFETIME:
        return type_coerce(literal(None), TS)
    if kind is WindowKind.ROLLING_MONTHS:
        if part == _Part.WINDOW_START:
            return _add_months_utc(after, -window.months)
        review_at = _add_months_utc(after, window.months)
        if part == _Part.REVIEW_AT:
            return review_at
        return _add_months_utc(review_at, -window.months)
    if kind is WindowKind.CALENDAR_YEAR:
        year = func.date_trunc("year", _local(zone, after))
        if part == _Part.REVIEW_AT:
            return _zoned(zone, year + _months(12))
        # The review at next 1 January measures the year that started this 1 January; the
        # window in force at ``after`` starts then too.
        return _zoned(zone, year)
    anniversary = _anniversary_on_or_before(zone, after, enrolled_at)
    if part == _Part.REVIEW_AT:
        return _zoned(zone, anniversary + _months(12))
    return _zoned(zone, anniversary)


def _expression(
    conn: Connection,
    window: Window,
    zone: str,
    after: ColumnElement[Any],
    enrolled_at: ColumnElement[Any],
    part: int,
) -> ColumnElement[Any]:
    if conn.dialect.name == "postgresql":
        return _pg(window, zone, after, enrolled_at, part)
    return _sqlite(window, zone, after, enrolled_at, part)


def schedule(
    conn: Connection,
    window: Window,
    zone: str,
    *,
    after: ColumnElement[Any],
    enrolled_at: ColumnElement[Any],
) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """When a tier reached or kept at ``after`` is next reviewed (null: never;
    ``domain.tiers.next_review``) and where the window that review measures starts
    (``domain.tiers.review_window``)."""
    return (
        _expression(conn, window, zone, after, enrolled_at, _Part.REVIEW_AT),
        _expression(conn, window, zone, after, enrolled_at, _Part.REVIEW_FROM),
    )


def window_start(
    conn: Connection,
    window: Window,
    zone: str,
    *,
    at: ColumnElement[Any],
    enrolled_at: ColumnElement[Any],
) -> ColumnElement[Any]:
    """Where the window in force at ``at`` starts (null: lifetime); ``domain.tiers.window_at``."""
    return _expression(conn, window, zone, at, enrolled_at, _Part.WINDOW_START)
