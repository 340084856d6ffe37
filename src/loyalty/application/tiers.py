"""Tiers: metrics recorded with every event, upgrades inside the event that crosses a
threshold, reviews that downgrade at the review date, manual assignment, and an explicit
recalculation after thresholds change.

Metrics are sums over ``member_activity`` (append-only) within a window, so any window can be
measured after the fact and a return lowers the metric of the window its purchase was in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from loyalty.adapters.db.engine import reading, run_transaction
from loyalty.adapters.db.locking import lock_wallet, lock_wallets
from loyalty.adapters.db.tables import member_activity, member_tiers, members, tier_changes
from loyalty.adapters.ids import new_id
from loyalty.application.access import Principal, Scope
from loyalty.application.members import find_member
from loyalty.application.programs import ProgramContext, all_programs, load_program
from loyalty.domain.errors import MemberNotFound, TiersNotConfigured, UnknownTier
from loyalty.domain.tiers import (
    Tier,
    TierMetric,
    TierSet,
    next_review,
    review_window,
    window_at,
)

RECALCULATE_CHUNK = 1_000
"""Members per statement when members' windows differ (anniversary windows)."""


def _zone(ctx: ProgramContext) -> ZoneInfo:
    return ZoneInfo(ctx.settings.time_zone)


def _metric_expr(metric: TierMetric) -> ColumnElement[Any]:
    a = member_activity.c
    if metric is TierMetric.SPEND:
        return func.coalesce(func.sum(a.spend_minor), 0)
    if metric is TierMetric.TIER_POINTS:
        return func.coalesce(func.sum(a.tier_points), 0)
    if metric is TierMetric.PURCHASES:
        return func.coalesce(func.sum(a.purchases), 0)
    return func.count(func.distinct(a.visit_day))


def record_activity(
    conn: Connection,
    ctx: ProgramContext,
    *,
    member_id: str,
    event_id: str,
    occurred_at: datetime,
    spend_minor: int,
    tier_points: int,
    purchases: int,
    visit: bool,
) -> None:
    """What one event adds to (or, for a return, takes from) the member's tier metrics."""
    conn.execute(
        insert(member_activity),
        activity_row(
            ctx,
            member_id=member_id,
            event_id=event_id,
            occurred_at=occurred_at,
            spend_minor=spend_minor,
            tier_points=tier_points,
            purchases=purchases,
            visit=visit,
        ),
    )


def activity_row(
    ctx: ProgramContext,
    *,
    member_id: str,
    event_id: str,
    occurred_at: datetime,
    spend_minor: int,
    tier_points: int,
    purchases: int,
    visit: bool,
) -> dict[str, Any]:
    """The ``member_activity`` row of ``record_activity`` (batches insert many at once)."""
    return {
        "id": new_id("act"),
        "program_id": ctx.program_id,
        "member_id": member_id,
        "event_id": event_id,
        "occurred_at": occurred_at,
        "spend_minor": spend_minor,
        "tier_points": tier_points,
        "purchases": purchases,
        "visit_day": occurred_at.astimezone(_zone(ctx)).date().isoformat() if visit else None,
    }


def lifetime_spend(conn: Connection, program_id: str, member_id: str) -> int:
    """The member's spend so far, less returns (for the cumulative discount)."""
    a = member_activity.c
    return int(
        conn.execute(
            select(func.coalesce(func.sum(a.spend_minor), 0)).where(
                and_(a.program_id == program_id, a.member_id == member_id)
            )
        ).scalar_one()
    )


def metric_between(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    start: datetime | None,
    end: datetime | None,
) -> int:
    tier_set = ctx.settings.tier_set
    assert tier_set is not None
    a = member_activity.c
    where = [a.program_id == ctx.program_id, a.member_id == member_id]
    if start is not None:
        where.append(a.occurred_at >= start)
    if end is not None:
        where.append(a.occurred_at < end)
    stmt = select(_metric_expr(tier_set.metric)).where(and_(*where))
    return int(conn.execute(stmt).scalar_one())


def _row(conn: Connection, ctx: ProgramContext, member_id: str) -> Any:
    tier_set = ctx.settings.tier_set
    assert tier_set is not None
    t = member_tiers.c
    return conn.execute(
        select(member_tiers).where(
            and_(
                t.program_id == ctx.program_id,
                t.member_id == member_id,
                t.tier_set == tier_set.set_id,
            )
        )
    ).first()


def current_tier(conn: Connection, ctx: ProgramContext, member_id: str) -> str | None:
    """The member's tier id (None when the program has no tiers). A member without a tier of
    record, or whose tier is no longer in the set, is in the lowest tier."""
    tier_set = ctx.settings.tier_set
    if tier_set is None:
        return None
    row = _row(conn, ctx, member_id)
    if row is None or row.tier not in tier_set.index:
        return tier_set.lowest.tier_id
    return str(row.tier)


def with_granted(ctx: ProgramContext, tier: str | None, granted: list[str]) -> str | None:
    """The higher of the member's own tier and the tiers their memberships grant."""
    tier_set = ctx.settings.tier_set
    if tier_set is None or tier is None:
        return tier
    candidates = [tier, *(t for t in granted if t in tier_set.index)]
    return max(candidates, key=tier_set.level)


def _set_tier(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    *,
    previous: Any,
    tier: Tier,
    since: datetime,
    review_at: datetime | None,
    review_from: datetime | None,
    manual: bool,
    reason: str,
    note: str | None,
    metric: int | None,
    now: datetime,
    actor: str | None,
) -> None:
    tier_set = ctx.settings.tier_set
    assert tier_set is not None
    values = {
        "tier": tier.tier_id,
        "since": since,
        "review_at": review_at,
        "review_from": review_from,
        "manual": manual,
        "reason": note,
        "updated_at": now,
    }
    t = member_tiers.c
    if previous is None:
        conn.execute(
            insert(member_tiers),
            {
                "program_id": ctx.program_id,
                "member_id": member_id,
                "tier_set": tier_set.set_id,
                **values,
            },
        )
    else:
        conn.execute(
            update(member_tiers)
            .where(
                and_(
                    t.program_id == ctx.program_id,
                    t.member_id == member_id,
                    t.tier_set == tier_set.set_id,
                )
            )
            .values(**values)
        )
    from_tier = previous.tier if previous is not None else tier_set.lowest.tier_id
    if from_tier != tier.tier_id:
        conn.execute(
            insert(tier_changes),
            {
                "id": new_id("tch"),
                "program_id": ctx.program_id,
                "member_id": member_id,
                "tier_set": tier_set.set_id,
                "from_tier": from_tier,
                "to_tier": tier.tier_id,
                "reason": reason,
                "note": note,
                "metric": metric,
                "at": now,
                "actor": actor,
            },
        )


def _enrolled_at(conn: Connection, ctx: ProgramContext, member_id: str) -> datetime:
    row = find_member(conn, ctx.program_id, member_id)
    return row.enrolled_at if row is not None else datetime(1970, 1, 1, tzinfo=UTC)


def _schedule(
    tier_set: TierSet,
    after: datetime,
    *,
    enrolled_at: datetime,
    zone: ZoneInfo,
    review_at: datetime | None = None,
) -> tuple[datetime | None, datetime | None]:
    """The next review after ``after`` (or the given ``review_at``) and the start of the
    window it will measure."""
    review_at = review_at or next_review(tier_set.window, after, enrolled_at=enrolled_at, zone=zone)
    if review_at is None:
        return None, None
    start, _ = review_window(tier_set.window, review_at, enrolled_at=enrolled_at, zone=zone)
    return review_at, start


def upgrade_if_qualified(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    *,
    at: datetime,
    now: datetime,
    actor: str | None,
) -> dict[str, Any] | None:
    """Inside an event's transaction, after its activity is recorded: move the member up at
    once if the metric in the current window reaches a higher tier. Never moves down."""
    tier_set = ctx.settings.tier_set
    if tier_set is None:
        return None
    lock_wallet(conn, ctx.program_id, member_id)  # one tier change at a time per member
    previous = _row(conn, ctx, member_id)
    current = previous.tier if previous is not None else tier_set.lowest.tier_id
    enrolled_at = _enrolled_at(conn, ctx, member_id)
    zone = _zone(ctx)
    start, _ = window_at(tier_set.window, at, enrolled_at=enrolled_at, zone=zone)
    metric = metric_between(conn, ctx, member_id, start, None)
    qualified = tier_set.qualifying(metric)
    if tier_set.level(qualified.tier_id) <= tier_set.level(current):
        return None
    review_at, review_from = _schedule(tier_set, at, enrolled_at=enrolled_at, zone=zone)
    _set_tier(
        conn,
        ctx,
        member_id,
        previous=previous,
        tier=qualified,
        since=at,
        review_at=review_at,
        review_from=review_from,
        manual=False,
        reason="upgrade",
        note=None,
        metric=metric,
        now=now,
        actor=actor,
    )
    return {"from": current, "to": qualified.tier_id, "metric": metric}


def _tier_view(tier_set: TierSet, tier: Tier) -> dict[str, Any]:
    return {
        "id": tier.tier_id,
        "name": tier.name,
        "threshold": tier.threshold,
        "level": tier_set.level(tier.tier_id),
        "benefits": {
            "earn_multiplier_percent": tier.earn_multiplier_percent,
            "discount_percent": tier.discount_percent,
            "perks": list(tier.perks),
        },
    }


def _context(engine: Engine, principal: Principal, program_id: str, scope: Scope) -> ProgramContext:
    with reading(engine) as conn:
        ctx = load_program(conn, principal, program_id, scope)
    if ctx.settings.tier_set is None:
        raise TiersNotConfigured(program_id)
    return ctx


def get_member_tier(
    engine: Engine, principal: Principal, program_id: str, member_ref: str, *, now: datetime
) -> dict[str, Any]:
    """Everything a progress bar needs: the tier, since and until when, the metric so far,
    what the next tier needs, what keeping this one needs by the review, and the tier the
    member would get at the review if nothing more happened."""
    ctx = _context(engine, principal, program_id, Scope.READ)
    tier_set = ctx.settings.tier_set
    assert tier_set is not None
    zone = _zone(ctx)
    with reading(engine) as conn:
        member = find_member(conn, program_id, member_ref)
        if member is None:
            raise MemberNotFound(member_ref)
        row = _row(conn, ctx, member.id)
        tier_id = row.tier if row is not None and row.tier in tier_set.index else None
        tier = tier_set.tiers[tier_set.level(tier_id)] if tier_id else tier_set.lowest
        start, _ = window_at(tier_set.window, now, enrolled_at=member.enrolled_at, zone=zone)
        metric = metric_between(conn, ctx, member.id, start, None)
        review_at = row.review_at if row is not None else None
        review_metric: int | None = None
        projected: Tier | None = None
        if review_at is not None:
            review_from = row.review_from
            review_metric = metric_between(conn, ctx, member.id, review_from, review_at)
            projected = tier_set.after_review(tier.tier_id, review_metric)
        changes = conn.execute(
            select(tier_changes)
            .where(
                and_(
                    tier_changes.c.program_id == program_id,
                    tier_changes.c.member_id == member.id,
                )
            )
            .order_by(tier_changes.c.id.desc())
            .limit(10)
        ).all()
    upcoming = tier_set.next_above(tier.tier_id)
    grace = timedelta(days=tier_set.grace_days)
    return {
        "member_id": member.id,
        "tier_set": tier_set.set_id,
        "metric": tier_set.metric.value,
        "window": {
            "type": tier_set.window.kind.value,
            "months": tier_set.window.months
            if tier_set.window.kind.value == "rolling_months"
            else None,
            "from": start.astimezone(UTC).isoformat() if start else None,
        },
        "tier": _tier_view(tier_set, tier),
        "since": row.since.isoformat() if row is not None else member.enrolled_at.isoformat(),
        "until": (review_at + grace).isoformat() if review_at is not None else None,
        "manual": bool(row.manual) if row is not None else False,
        "metric_value": metric,
        "next": None
        if upcoming is None
        else {
            "tier": _tier_view(tier_set, upcoming),
            "needed": max(0, upcoming.threshold - metric),
            "progress_percent": min(100, metric * 100 // upcoming.threshold),
        },
        "keep": None
        if review_at is None or review_metric is None
        else {
            "review_at": review_at.isoformat(),
            "metric_value": review_metric,
            "needed": max(0, tier.threshold - review_metric),
        },
        "projected": None if projected is None else _tier_view(tier_set, projected),
        "history": [
            {
                "from": c.from_tier,
                "to": c.to_tier,
                "reason": c.reason,
                "note": c.note,
                "metric": c.metric,
                "at": c.at.isoformat(),
            }
            for c in changes
        ],
    }


def assign_tier(
    engine: Engine,
    principal: Principal,
    program_id: str,
    member_ref: str,
    *,
    tier_id: str,
    reason: str,
    until: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    """Put a member in a tier by hand, with a reason and an optional end: at ``until`` the
    member is reviewed like anyone else (without one, at the set's usual next review)."""
    ctx = _context(engine, principal, program_id, Scope.ADMIN)
    tier_set = ctx.settings.tier_set
    assert tier_set is not None
    if tier_id not in tier_set.index:
        raise UnknownTier(tier_id, known=[t.tier_id for t in tier_set.tiers])
    zone = _zone(ctx)

    def work(conn: Connection) -> str:
        member = find_member(conn, program_id, member_ref)
        if member is None:
            raise MemberNotFound(member_ref)
        lock_wallet(conn, program_id, member.id)
        previous = _row(conn, ctx, member.id)
        review_at, review_from = _schedule(
            tier_set, now, enrolled_at=member.enrolled_at, zone=zone, review_at=until
        )
        _set_tier(
            conn,
            ctx,
            member.id,
            previous=previous,
            tier=tier_set.tiers[tier_set.level(tier_id)],
            since=now,
            review_at=review_at,
            review_from=review_from,
            manual=True,
            reason="manual",
            note=reason,
            metric=None,
            now=now,
            actor=principal.key_id,
        )
        return str(member.id)

    member_id = run_transaction(engine, work)
    return get_member_tier(engine, principal, program_id, member_id, now=now)


_UPDATE_REVIEWED = (
    update(member_tiers)
    .where(
        and_(
            member_tiers.c.program_id == bindparam("m_program_id"),
            member_tiers.c.member_id == bindparam("m_member_id"),
            member_tiers.c.tier_set == bindparam("m_tier_set"),
        )
    )
    .values(
        tier=bindparam("tier"),
        since=bindparam("since"),
        review_at=bindparam("review_at"),
        review_from=bindparam("review_from"),
        manual=False,
        reason=None,
        updated_at=bindparam("updated_at"),
    )
)


def _apply_reviews(
    conn: Connection, ctx: ProgramContext, rows: Iterable[Any], *, now: datetime
) -> Counter[tuple[str, str]]:
    """Review a batch of due members, whose wallets the caller has locked (so an upgrade
    can't change a tier under the review). One statement for the batch's updates, one for
    its tier changes."""
    tier_set = ctx.settings.tier_set
    assert tier_set is not None
    zone = _zone(ctx)
    moves: Counter[tuple[str, str]] = Counter()
    updates: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    for row in rows:
        current = row.tier if row.tier in tier_set.index else tier_set.lowest.tier_id
        outcome = tier_set.after_review(current, int(row.metric))
        review_at, review_from = _schedule(
            tier_set, row.review_at, enrolled_at=row.enrolled_at, zone=zone
        )
        updates.append(
            {
                "m_program_id": ctx.program_id,
                "m_member_id": row.member_id,
                "m_tier_set": tier_set.set_id,
                "tier": outcome.tier_id,
                "since": row.since if outcome.tier_id == current else now,
                "review_at": review_at,
                "review_from": review_from,
                "updated_at": now,
            }
        )
        if outcome.tier_id != row.tier:
            changes.append(
                {
                    "id": new_id("tch"),
                    "program_id": ctx.program_id,
                    "member_id": row.member_id,
                    "tier_set": tier_set.set_id,
                    "from_tier": row.tier,
                    "to_tier": outcome.tier_id,
                    "reason": "review",
                    "note": None,
                    "metric": int(row.metric),
                    "at": now,
                    "actor": "job:tier-review",
                }
            )
        moves[(current, outcome.tier_id)] += 1
    if updates:
        conn.execute(_UPDATE_REVIEWED, updates)
    if changes:
        conn.execute(insert(tier_changes), changes)
    return moves


REVIEW_BATCH = 500


def review_tiers(engine: Engine, ctx: ProgramContext, *, now: datetime) -> dict[str, int]:
    """Review every member whose tier is due (review date plus grace days at or before
    ``now``): keep, renew or move down by at most ``max_levels_down``. Each batch is one
    transaction; a member reviewed once is not due again until the next review date, so
    running it twice changes nothing."""
    tier_set = ctx.settings.tier_set
    if tier_set is None:
        return {}
    cutoff = now - timedelta(days=tier_set.grace_days)
    t, a, m = member_tiers.c, member_activity.c, members.c
    due = (
        select(
            t.member_id,
            t.tier,
            t.since,
            t.review_at,
            t.review_from,
            t.manual,
            m.enrolled_at,
            _metric_expr(tier_set.metric).label("metric"),
        )
        .select_from(
            member_tiers.join(members, m.id == t.member_id).outerjoin(
                member_activity,
                and_(
                    a.program_id == t.program_id,
                    a.member_id == t.member_id,
                    a.occurred_at < t.review_at,
                    (t.review_from.is_(None)) | (a.occurred_at >= t.review_from),
                ),
            )
        )
        .where(
            and_(
                t.program_id == ctx.program_id,
                t.tier_set == tier_set.set_id,
                t.review_at.is_not(None),
                t.review_at <= cutoff,
            )
        )
        .group_by(t.member_id, t.tier, t.since, t.review_at, t.review_from, t.manual, m.enrolled_at)
        .order_by(t.member_id)
        .limit(REVIEW_BATCH)
    )
    totals: Counter[str] = Counter()
    # Each pass walks the due members in id order, a batch after the last member of the one
    # before (so a batch reads what it reviews, not everything reviewed so far). A member
    # whose review date is still past after a review (the job didn't run for a year or more)
    # is caught up by the next pass.
    reviewed_in_pass = 1
    while reviewed_in_pass:
        reviewed_in_pass = 0
        after_member = ""
        while True:

            def batch(conn: Connection, start: str = after_member) -> tuple[Counter[Any], str]:
                rows = conn.execute(due.where(t.member_id > start)).all()
                if not rows:
                    return Counter(), start
                last = rows[-1].member_id
                # Lock the batch's wallets (sorted), as an upgrade does before it reads a tier,
                # then read the batch again: what is reviewed can't change underneath.
                ids = [r.member_id for r in rows]
                lock_wallets(conn, ctx.program_id, ids)
                rows = conn.execute(due.where(t.member_id.in_(ids))).all()
                return _apply_reviews(conn, ctx, rows, now=now), last

            moves, after_member = run_transaction(engine, batch)
            if not moves:
                break
            reviewed_in_pass += sum(moves.values())
            _tally(totals, tier_set, moves)
    return dict(totals)


def _tally(totals: Counter[str], tier_set: TierSet, moves: Counter[tuple[str, str]]) -> None:
    for (before, after), count in moves.items():
        totals["reviewed"] += count
        if tier_set.level(after) < tier_set.level(before):
            totals["downgraded"] += count
        elif before == after:
            totals["kept"] += count
        else:
            totals["upgraded"] += count


def _metrics_now(
    conn: Connection, ctx: ProgramContext, *, now: datetime
) -> list[tuple[str, datetime, int]]:
    """Every member's metric over the window in force now: one grouped statement when the
    window is the same for all, else one per group of members sharing a window."""
    tier_set = ctx.settings.tier_set
    assert tier_set is not None
    zone = _zone(ctx)
    m, a = members.c, member_activity.c
    roster = conn.execute(
        select(m.id, m.enrolled_at).where(m.program_id == ctx.program_id).order_by(m.id)
    ).all()
    starts: dict[datetime | None, list[tuple[str, datetime]]] = {}
    for member_id, enrolled_at in roster:
        start, _ = window_at(tier_set.window, now, enrolled_at=enrolled_at, zone=zone)
        starts.setdefault(start, []).append((member_id, enrolled_at))
    result: list[tuple[str, datetime, int]] = []
    for start, group in starts.items():
        where = [a.program_id == ctx.program_id]
        if start is not None:
            where.append(a.occurred_at >= start)
        grouped = select(a.member_id, _metric_expr(tier_set.metric).label("metric")).group_by(
            a.member_id
        )
        sums: dict[str, int] = {}
        if len(starts) == 1:
            for member_id, metric in conn.execute(grouped.where(and_(*where))).all():
                sums[member_id] = int(metric)
        else:
            for i in range(0, len(group), RECALCULATE_CHUNK):
                ids = [member_id for member_id, _ in group[i : i + RECALCULATE_CHUNK]]
                stmt = grouped.where(and_(*where, a.member_id.in_(ids)))
                for member_id, metric in conn.execute(stmt).all():
                    sums[member_id] = int(metric)
        result.extend(
            (member_id, enrolled_at, sums.get(member_id, 0)) for member_id, enrolled_at in group
        )
    return result


def recalculate_tiers(
    engine: Engine,
    principal: Principal,
    program_id: str,
    *,
    now: datetime,
    apply: bool,
) -> dict[str, Any]:
    """What the current thresholds say each member's tier is, measured over the window in
    force now, against the tier they have: the moves, by from and to tier. With ``apply``,
    the moves are made (in one transaction, set-based) and recorded with the reason
    ``recalculated``; members assigned by hand keep their tier until their assignment ends."""
    ctx = _context(engine, principal, program_id, Scope.ADMIN if apply else Scope.READ)
    tier_set = ctx.settings.tier_set
    assert tier_set is not None
    zone = _zone(ctx)

    def work(conn: Connection) -> dict[str, Any]:
        t = member_tiers.c
        current = {
            r.member_id: r
            for r in conn.execute(
                select(member_tiers).where(
                    and_(t.program_id == program_id, t.tier_set == tier_set.set_id)
                )
            ).all()
        }
        moves: Counter[tuple[str, str]] = Counter()
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        changes: list[dict[str, Any]] = []
        measured = 0
        for member_id, enrolled_at, metric in _metrics_now(conn, ctx, now=now):
            measured += 1
            row = current.get(member_id)
            if row is not None and row.manual and (row.review_at is None or row.review_at > now):
                continue
            before = row.tier if row is not None and row.tier in tier_set.index else None
            before = before or tier_set.lowest.tier_id
            after = tier_set.qualifying(metric).tier_id
            if after == before:
                continue
            moves[(before, after)] += 1
            if not apply:
                continue
            review_at, review_from = _schedule(tier_set, now, enrolled_at=enrolled_at, zone=zone)
            values = {
                "m_member_id": member_id,
                "tier": after,
                "since": now,
                "review_at": review_at,
                "review_from": review_from,
                "manual": False,
                "reason": None,
                "updated_at": now,
            }
            (updates if row is not None else inserts).append(values)
            changes.append(
                {
                    "id": new_id("tch"),
                    "program_id": program_id,
                    "member_id": member_id,
                    "tier_set": tier_set.set_id,
                    "from_tier": before,
                    "to_tier": after,
                    "reason": "recalculated",
                    "note": None,
                    "metric": metric,
                    "at": now,
                    "actor": principal.key_id,
                }
            )
        if inserts:
            conn.execute(
                insert(member_tiers),
                [
                    {
                        **{k: v for k, v in row.items() if k != "m_member_id"},
                        "program_id": program_id,
                        "member_id": row["m_member_id"],
                        "tier_set": tier_set.set_id,
                    }
                    for row in inserts
                ],
            )
        if updates:
            conn.execute(
                update(member_tiers)
                .where(
                    and_(
                        t.program_id == program_id,
                        t.tier_set == tier_set.set_id,
                        t.member_id == bindparam("m_member_id"),
                    )
                )
                .values(
                    tier=bindparam("tier"),
                    since=bindparam("since"),
                    review_at=bindparam("review_at"),
                    review_from=bindparam("review_from"),
                    manual=bindparam("manual"),
                    reason=bindparam("reason"),
                    updated_at=bindparam("updated_at"),
                ),
                updates,
            )
        if changes:
            conn.execute(insert(tier_changes), changes)
        return {
            "members": measured,
            "changes": [
                {"from": before, "to": after, "members": count}
                for (before, after), count in sorted(moves.items())
            ],
            "members_moving": sum(moves.values()),
            "applied": apply,
        }

    if apply:
        return run_transaction(engine, work)
    with reading(engine) as conn:
        return work(conn)


def review_all(engine: Engine, *, now: datetime) -> dict[str, dict[str, int]]:
    """Run the review for every program that has tiers; by program id."""
    with reading(engine) as conn:
        contexts = [ctx for ctx in all_programs(conn) if ctx.settings.tier_set is not None]
    return {ctx.program_id: review_tiers(engine, ctx, now=now) for ctx in contexts}
