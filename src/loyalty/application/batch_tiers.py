"""Tiers of the members of a run of purchases recorded in bulk: what ``tiers`` reads and
writes per event (the tier an event earns at, the metric after it, the upgrade), kept in
Python for the whole run from a few statements per tier set.

The metric of an upgrade is a sum (or a count of visit days) over ``member_activity`` from the
start of the window in force at the event, with no end: the history read once covers every
start the run's events can ask for, and each purchase of the run adds its own activity, so a
member who crosses a threshold mid-run earns their next purchase at the new tier exactly as
recording them one by one would. Everything runs under the wallet locks the run holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Connection, Select, and_, bindparam, func, select, update

from loyalty.adapters.db.bulk import insert_rows
from loyalty.adapters.db.keyed import KeyedRead, each_key, looks_up_each
from loyalty.adapters.db.tables import member_activity, member_tiers, tier_changes
from loyalty.adapters.ids import new_id
from loyalty.application.programs import ProgramContext
from loyalty.application.tiers import review_schedule
from loyalty.domain.tiers import TierMetric, TierSet, window_at

_COLUMN = {
    TierMetric.SPEND: member_activity.c.spend_minor,
    TierMetric.TIER_POINTS: member_activity.c.tier_points,
    TierMetric.PURCHASES: member_activity.c.purchases,
}


@dataclass(slots=True)
class _History:
    """One member's activity in one tier set as far as the run needs it."""

    total: int = 0
    """The metric over everything from the latest start the run asks for (additive metrics)."""
    rows: list[tuple[datetime, int]] = field(default_factory=list)
    """Earlier activity, one ``(occurred_at, amount)`` per row (additive metrics)."""
    days: dict[str, datetime] = field(default_factory=dict)
    """Visit day -> its latest activity (visits)."""


@dataclass(slots=True)
class _Member:
    enrolled_at: datetime
    held: dict[str, str | None]
    """Tier set -> the tier of record (None: no row, the lowest)."""
    history: dict[str, _History]
    run: list[dict[str, Any]] = field(default_factory=list)
    """The run's activity rows of the member so far."""


class RunTiers:
    """The tier state of a run's members; ``write`` adds the run's tier rows."""

    def __init__(self, ctx: ProgramContext, *, now: datetime, actor: str) -> None:
        self._ctx = ctx
        self._zone = ZoneInfo(ctx.settings.time_zone)
        self._now = now
        self._actor = actor
        self._members: dict[str, _Member] = {}
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._inserts: set[tuple[str, str]] = set()
        self._changes: list[dict[str, Any]] = []

    def load(
        self,
        conn: Connection,
        members: dict[str, datetime],
        fresh: set[str],
        moments: list[tuple[str, datetime]],
    ) -> None:
        """Read the tiers and history of ``members`` (id -> enrolled at) for purchases at
        ``moments`` ((member id, earned at)); ``fresh`` members were enrolled by the run."""
        sets = self._ctx.settings.tier_sets
        for member_id, enrolled_at in members.items():
            self._members[member_id] = _Member(
                enrolled_at,
                {tier_set.set_id: None for tier_set in sets},
                {tier_set.set_id: _History() for tier_set in sets},
            )
        known = sorted(set(members) - fresh)
        if not known:
            return
        params = {"program_id": self._ctx.program_id, "member_ids": known}
        for row in conn.execute(_HELD.on(conn, known), params):
            if row.tier_set in self._members[row.member_id].held:
                self._members[row.member_id].held[row.tier_set] = str(row.tier)
        for tier_set in sets:
            starts = [
                self._start(tier_set, member_id, at)
                for member_id, at in moments
                if member_id not in fresh
            ]
            if starts:
                self._load_history(conn, tier_set, params, starts)

    def _load_history(
        self,
        conn: Connection,
        tier_set: TierSet,
        params: dict[str, Any],
        starts: list[datetime | None],
    ) -> None:
        a = member_activity.c
        first = None if None in starts else min(s for s in starts if s is not None)
        set_id = tier_set.set_id
        if tier_set.metric is TierMetric.VISITS:

            def visits(member: ColumnElement[bool]) -> Select[Any]:
                stmt = (
                    select(a.member_id, a.visit_day, func.max(a.occurred_at).label("last"))
                    .where(and_(a.program_id == params["program_id"], member))
                    .where(a.visit_day.is_not(None))
                    .group_by(a.member_id, a.visit_day)
                )
                return stmt if first is None else stmt.where(a.occurred_at >= first)

            for row in _per_member(conn, visits, params):
                self._members[row.member_id].history[set_id].days[str(row.visit_day)] = row.last
            return
        column = _COLUMN[tier_set.metric]
        last = None if first is None else max(s for s in starts if s is not None)

        def totals(member: ColumnElement[bool]) -> Select[Any]:
            stmt = select(a.member_id, func.coalesce(func.sum(column), 0).label("total")).where(
                and_(a.program_id == params["program_id"], member)
            )
            if last is not None:
                stmt = stmt.where(a.occurred_at >= last)
            return stmt.group_by(a.member_id)

        for row in _per_member(conn, totals, params):
            self._members[row.member_id].history[set_id].total = int(row.total)
        if first is not None and last is not None and first < last:

            def between(member: ColumnElement[bool]) -> Select[Any]:
                return select(a.member_id, a.occurred_at, column.label("amount")).where(
                    and_(a.program_id == params["program_id"], member),
                    a.occurred_at >= first,
                    a.occurred_at < last,
                )

            for row in _per_member(conn, between, params):
                history = self._members[row.member_id].history[set_id]
                history.rows.append((row.occurred_at, int(row.amount)))

    def _start(self, tier_set: TierSet, member_id: str, at: datetime) -> datetime | None:
        enrolled_at = self._members[member_id].enrolled_at
        return window_at(tier_set.window, at, enrolled_at=enrolled_at, zone=self._zone)[0]

    def held(self, member_id: str) -> dict[str, str | None]:
        """The member's tier of record in each set, as the run has left it so far."""
        return dict(self._members[member_id].held)

    def record(self, member_id: str, activity: dict[str, Any]) -> None:
        """A purchase of the run added ``activity`` (its ``member_activity`` row)."""
        self._members[member_id].run.append(activity)

    def upgrade(self, member_id: str, *, at: datetime) -> dict[str, Any] | None:
        """``tiers.upgrade_if_qualified`` after the member's latest purchase of the run."""
        moves = [
            self._upgrade_in(tier_set, member_id, at=at)
            for tier_set in self._ctx.settings.tier_sets
        ]
        return moves[0] if moves else None

    def _metric(self, tier_set: TierSet, member: _Member, start: datetime | None) -> int:
        history = member.history[tier_set.set_id]
        if tier_set.metric is TierMetric.VISITS:
            days = {day for day, last in history.days.items() if start is None or last >= start}
            days.update(
                str(row["visit_day"])
                for row in member.run
                if row["visit_day"] is not None and (start is None or row["occurred_at"] >= start)
            )
            return len(days)
        name = _COLUMN[tier_set.metric].name
        return (
            history.total
            + sum(amount for at, amount in history.rows if start is None or at >= start)
            + sum(
                int(row[name]) for row in member.run if start is None or row["occurred_at"] >= start
            )
        )

    def _upgrade_in(
        self, tier_set: TierSet, member_id: str, *, at: datetime
    ) -> dict[str, Any] | None:
        member = self._members[member_id]
        previous = member.held[tier_set.set_id]
        current = previous if previous is not None else tier_set.lowest.tier_id
        metric = self._metric(tier_set, member, self._start(tier_set, member_id, at))
        qualified = tier_set.qualifying(metric)
        if tier_set.level(qualified.tier_id) <= tier_set.level(current):
            return None
        review_at, review_from = review_schedule(
            tier_set, at, enrolled_at=member.enrolled_at, zone=self._zone
        )
        key = (member_id, tier_set.set_id)
        if previous is None and key not in self._rows:
            self._inserts.add(key)
        self._rows[key] = {
            "tier": qualified.tier_id,
            "since": at,
            "review_at": review_at,
            "review_from": review_from,
            "manual": False,
            "reason": None,
            "updated_at": self._now,
        }
        member.held[tier_set.set_id] = qualified.tier_id
        if current != qualified.tier_id:
            self._changes.append(
                {
                    "id": new_id("tch"),
                    "program_id": self._ctx.program_id,
                    "member_id": member_id,
                    "tier_set": tier_set.set_id,
                    "from_tier": current,
                    "to_tier": qualified.tier_id,
                    "reason": "upgrade",
                    "note": None,
                    "metric": metric,
                    "at": self._now,
                    "actor": self._actor,
                }
            )
        return {"from": current, "to": qualified.tier_id, "metric": metric}

    def write(self, conn: Connection) -> None:
        """The run's upgrades: each member's final tier row per set, and every change."""
        program_id = self._ctx.program_id
        inserts = [
            {"program_id": program_id, "member_id": m, "tier_set": s, **self._rows[(m, s)]}
            for m, s in sorted(self._inserts)
        ]
        updates = [
            {"b_member_id": m, "b_tier_set": s, **{f"b_{k}": v for k, v in row.items()}}
            for (m, s), row in sorted(self._rows.items())
            if (m, s) not in self._inserts
        ]
        if inserts:
            insert_rows(conn, member_tiers, inserts)
        if updates:
            conn.execute(_UPDATE, [{"b_program_id": program_id, **row} for row in updates])
        if self._changes:
            insert_rows(conn, tier_changes, self._changes)


def from_records(
    ctx: ProgramContext, held: dict[str, str | None]
) -> tuple[str | None, dict[str, str]]:
    """The tier (main set) and tier by set of a member holding ``held`` (set -> tier of record,
    None or missing for none): a tier no longer in its set counts as the lowest."""
    main = ctx.settings.tier_set
    if main is None:
        return None, {}
    by_set = {}
    for tier_set in ctx.settings.tier_sets:
        own = held.get(tier_set.set_id)
        by_set[tier_set.set_id] = own if own in tier_set.index else tier_set.lowest.tier_id
    return by_set[main.set_id], by_set


_OF_PROGRAM = select(member_tiers.c.member_id, member_tiers.c.tier_set, member_tiers.c.tier).where(
    member_tiers.c.program_id == bindparam("program_id")
)
_HELD = KeyedRead(
    in_list=_OF_PROGRAM.where(
        member_tiers.c.member_id.in_(bindparam("member_ids", expanding=True))
    ),
    # OFFSET 0: a member has a row per set, and the read of one member must stay a subquery.
    # The primary key (program, member, set) is the one index it can take (migration 0019).
    each_key=each_key(
        lambda member_id: _OF_PROGRAM.where(member_tiers.c.member_id == member_id).offset(0),
        keys="member_ids",
    ),
)


def _per_member(
    conn: Connection, read: Callable[[ColumnElement[bool]], Select[Any]], params: dict[str, Any]
) -> Any:
    """``read`` of the members ``params["member_ids"]``, given the condition that picks one or
    all of them, in the form ``keyed.looks_up_each`` picks."""
    if not looks_up_each(conn, params["member_ids"]):
        member = member_activity.c.member_id.in_(bindparam("member_ids", expanding=True))
        return conn.execute(read(member), {"member_ids": params["member_ids"]})
    stmt = each_key(
        lambda member_id: read(member_activity.c.member_id == member_id).offset(0),
        keys="member_ids",
    )
    return conn.execute(stmt, {"member_ids": params["member_ids"]})


_UPDATE = (
    update(member_tiers)
    .where(
        and_(
            member_tiers.c.program_id == bindparam("b_program_id"),
            member_tiers.c.member_id == bindparam("b_member_id"),
            member_tiers.c.tier_set == bindparam("b_tier_set"),
        )
    )
    .values(
        {
            name: bindparam(f"b_{name}")
            for name in (
                "tier",
                "since",
                "review_at",
                "review_from",
                "manual",
                "reason",
                "updated_at",
            )
        }
    )
)
