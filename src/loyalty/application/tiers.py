"""Tiers: metrics recorded with every event, upgrades inside the event that crosses a
threshold, reviews that downgrade at the review date, manual assignment, and an explicit
recalculation after thresholds change.

Metrics are sums over ``member_activity`` (append-only) within a window, so any window can be
measured after the fact and a return lowers the metric of the window its purchase was in.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Connection,
    Engine,
    Subquery,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    not_,
    null,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from loyalty.adapters.db import tier_dates
from loyalty.adapters.db.engine import reading, run_transaction
from loyalty.adapters.db.locking import lock_wallet, lock_wallet_keys, lock_wallet_range
from loyalty.adapters.db.tables import TS, member_activity, member_tiers, members, tier_changes
from loyalty.adapters.ids import new_id
from loyalty.application.access import Principal, Scope
from loyalty.application.members import find_member
from loyalty.application.programs import ProgramContext, all_programs, load_program
from loyalty.domain.errors import (
    MemberNotFound,
    TiersNotConfigured,
    UnknownTier,
    UnknownTierSet,
)
from loyalty.domain.tiers import (
    Tier,
    TierMetric,
    TierSet,
    WindowKind,
    next_review,
    review_window,
    window_at,
)


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


# Built once: the quote reads it on every request.
_LIFETIME_SPEND = select(func.coalesce(func.sum(member_activity.c.spend_minor), 0)).where(
    and_(
        member_activity.c.program_id == bindparam("program_id"),
        member_activity.c.member_id == bindparam("member_id"),
    )
)


def lifetime_spend(conn: Connection, program_id: str, member_id: str) -> int:
    """The member's spend so far, less returns (for the cumulative discount)."""
    params = {"program_id": program_id, "member_id": member_id}
    return int(conn.execute(_LIFETIME_SPEND, params).scalar_one())


def metric_between(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    start: datetime | None,
    end: datetime | None,
    tier_set: TierSet | None = None,
) -> int:
    """The member's metric (of ``tier_set``, by default the main set) over ``[start, end)``."""
    tier_set = tier_set or ctx.settings.tier_set
    assert tier_set is not None
    a = member_activity.c
    where = [a.program_id == ctx.program_id, a.member_id == member_id]
    if start is not None:
        where.append(a.occurred_at >= start)
    if end is not None:
        where.append(a.occurred_at < end)
    stmt = select(_metric_expr(tier_set.metric)).where(and_(*where))
    return int(conn.execute(stmt).scalar_one())


def _row(
    conn: Connection, ctx: ProgramContext, member_id: str, tier_set: TierSet | None = None
) -> Any:
    tier_set = tier_set or ctx.settings.tier_set
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


def with_granted(
    ctx: ProgramContext, tier: str | None, granted: list[str], tier_set: TierSet | None = None
) -> str | None:
    """The higher of the member's own tier and the tiers their memberships grant in
    ``tier_set`` (by default the main set)."""
    tier_set = tier_set or ctx.settings.tier_set
    if tier_set is None or tier is None:
        return tier
    candidates = [tier, *(t for t in granted if t in tier_set.index)]
    return max(candidates, key=tier_set.level)


def other_tiers(
    conn: Connection, ctx: ProgramContext, member_id: str, granted: list[str]
) -> dict[str, str]:
    """The member's tier in each tier set other than the main one (by set id), the higher of
    their own and what their memberships grant there."""
    others = ctx.settings.tier_sets[1:]
    if not others:
        return {}
    t = member_tiers.c
    rows: dict[str, str] = {
        str(row.tier_set): str(row.tier)
        for row in conn.execute(
            select(t.tier_set, t.tier).where(
                t.program_id == ctx.program_id,
                t.member_id == member_id,
                t.tier_set.in_([tier_set.set_id for tier_set in others]),
            )
        )
    }
    held: dict[str, str] = {}
    for tier_set in others:
        own = rows.get(tier_set.set_id)
        own = own if own in tier_set.index else tier_set.lowest.tier_id
        held[tier_set.set_id] = str(with_granted(ctx, own, granted, tier_set))
    return held


def set_of_tier(ctx: ProgramContext, tier_id: str) -> TierSet | None:
    """The tier set holding ``tier_id`` (tier ids are unique across a program's sets)."""
    return next((ts for ts in ctx.settings.tier_sets if tier_id in ts.index), None)


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
    tier_set: TierSet,
) -> None:
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


def review_schedule(
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
    once, in every tier set, if the metric in the set's current window reaches a higher tier.
    Never moves down. Returns the main set's move (None: no move there)."""
    if not ctx.settings.tier_sets:
        return None
    lock_wallet(conn, ctx.program_id, member_id)  # one tier change at a time per member
    enrolled_at = _enrolled_at(conn, ctx, member_id)
    moves = [
        _upgrade_in(
            conn, ctx, tier_set, member_id, at=at, now=now, actor=actor, enrolled_at=enrolled_at
        )
        for tier_set in ctx.settings.tier_sets
    ]
    return moves[0]


def _upgrade_in(
    conn: Connection,
    ctx: ProgramContext,
    tier_set: TierSet,
    member_id: str,
    *,
    at: datetime,
    now: datetime,
    actor: str | None,
    enrolled_at: datetime,
) -> dict[str, Any] | None:
    previous = _row(conn, ctx, member_id, tier_set)
    current = previous.tier if previous is not None else tier_set.lowest.tier_id
    zone = _zone(ctx)
    start, _ = window_at(tier_set.window, at, enrolled_at=enrolled_at, zone=zone)
    metric = metric_between(conn, ctx, member_id, start, None, tier_set)
    qualified = tier_set.qualifying(metric)
    if tier_set.level(qualified.tier_id) <= tier_set.level(current):
        return None
    review_at, review_from = review_schedule(tier_set, at, enrolled_at=enrolled_at, zone=zone)
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
        tier_set=tier_set,
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
    """Everything a progress bar needs, for the main tier set: the tier, since and until
    when, the metric so far, what the next tier needs, what keeping this one needs by the
    review, and the tier the member would get at the review if nothing more happened; the
    same for each other tier set in ``other_sets``."""
    ctx = _context(engine, principal, program_id, Scope.READ)
    with reading(engine) as conn:
        member = find_member(conn, program_id, member_ref)
        if member is None:
            raise MemberNotFound(member_ref)
        main, *others = (
            _member_tier_in(conn, ctx, tier_set, member, now=now)
            for tier_set in ctx.settings.tier_sets
        )
    return {**main, "other_sets": others}


def _member_tier_in(
    conn: Connection, ctx: ProgramContext, tier_set: TierSet, member: Any, *, now: datetime
) -> dict[str, Any]:
    zone = _zone(ctx)
    row = _row(conn, ctx, member.id, tier_set)
    tier_id = row.tier if row is not None and row.tier in tier_set.index else None
    tier = tier_set.tiers[tier_set.level(tier_id)] if tier_id else tier_set.lowest
    start, _ = window_at(tier_set.window, now, enrolled_at=member.enrolled_at, zone=zone)
    metric = metric_between(conn, ctx, member.id, start, None, tier_set)
    review_at = row.review_at if row is not None else None
    review_metric: int | None = None
    projected: Tier | None = None
    if review_at is not None:
        review_from = row.review_from
        review_metric = metric_between(conn, ctx, member.id, review_from, review_at, tier_set)
        projected = tier_set.after_review(tier.tier_id, review_metric)
    changes = conn.execute(
        select(tier_changes)
        .where(
            and_(
                tier_changes.c.program_id == ctx.program_id,
                tier_changes.c.member_id == member.id,
                tier_changes.c.tier_set == tier_set.set_id,
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
    """Put a member in a tier (of whichever set holds it) by hand, with a reason and an
    optional end: at ``until`` the member is reviewed like anyone else (without one, at the
    set's usual next review)."""
    ctx = _context(engine, principal, program_id, Scope.ADMIN)
    tier_set = set_of_tier(ctx, tier_id)
    if tier_set is None:
        known = [t.tier_id for ts in ctx.settings.tier_sets for t in ts.tiers]
        raise UnknownTier(tier_id, known=known)
    zone = _zone(ctx)

    def work(conn: Connection) -> str:
        member = find_member(conn, program_id, member_ref)
        if member is None:
            raise MemberNotFound(member_ref)
        lock_wallet(conn, program_id, member.id)
        previous = _row(conn, ctx, member.id, tier_set)
        review_at, review_from = review_schedule(
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
            tier_set=tier_set,
        )
        return str(member.id)

    member_id = run_transaction(engine, work)
    return get_member_tier(engine, principal, program_id, member_id, now=now)


REVIEW_BATCH = 10_000
"""Members reviewed per transaction (and per lock on their wallets)."""
RECALCULATE_BATCH = 10_000
"""Members measured per transaction when a recalculation is applied."""


def _level_of(tier_set: TierSet, tier: ColumnElement[Any]) -> ColumnElement[int]:
    """``TierSet.level`` in SQL: a tier's position, 0 (the lowest) for a tier no longer in the
    set or none at all."""
    return case({t.tier_id: i for i, t in enumerate(tier_set.tiers)}, value=tier, else_=0)


def _qualifying_level(tier_set: TierSet, metric: ColumnElement[Any]) -> ColumnElement[int]:
    """``TierSet.qualifying`` in SQL: the highest level whose threshold ``metric`` reaches."""
    whens = [
        (metric >= tier.threshold, level)
        for level, tier in reversed(list(enumerate(tier_set.tiers)))
        if level > 0
    ]
    return case(*whens, else_=0) if whens else literal(0)


def _tier_at(tier_set: TierSet, level: ColumnElement[Any]) -> ColumnElement[str]:
    return case(
        {i: t.tier_id for i, t in enumerate(tier_set.tiers)},
        value=level,
        else_=tier_set.lowest.tier_id,
    )


def _due(ctx: ProgramContext, tier_set: TierSet, *, cutoff: datetime) -> ColumnElement[bool]:
    t = member_tiers.c
    return and_(
        t.program_id == ctx.program_id,
        t.tier_set == tier_set.set_id,
        t.review_at.is_not(None),
        t.review_at <= cutoff,
    )


def _reviews(
    tier_set: TierSet, due: ColumnElement[bool], *, after_member: str, last: str
) -> Subquery:
    """For each due ``member_tiers`` row after ``after_member`` up to ``last``: the tier held
    and its level, the metric over the window the review measures (``[review_from,
    review_at)``), and the level and tier the review gives (``TierSet.after_review``), all in
    one grouped statement."""
    t, a, m = member_tiers.c, member_activity.c, members.c
    joined = member_tiers.outerjoin(
        member_activity,
        and_(
            a.program_id == t.program_id,
            a.member_id == t.member_id,
            # The batch's bounds on activity too, so it is read by range, not scanned whole.
            a.member_id > after_member,
            a.member_id <= last,
            a.occurred_at < t.review_at,
            or_(t.review_from.is_(None), a.occurred_at >= t.review_from),
        ),
    )
    enrolled_at: ColumnElement[Any] = type_coerce(null(), TS)
    grouping: list[ColumnElement[Any]] = [t.member_id, t.tier]
    if tier_set.window.kind is WindowKind.ANNIVERSARY:
        joined = joined.join(members, m.id == t.member_id)
        enrolled_at = m.enrolled_at
        grouping.append(m.enrolled_at)
    measured = (
        select(
            t.member_id,
            t.tier,
            enrolled_at.label("enrolled_at"),
            _metric_expr(tier_set.metric).label("metric"),
        )
        .select_from(joined)
        .where(due, t.member_id > after_member, t.member_id <= last)
        .group_by(*grouping)
        .subquery("measured")
    )
    held = _level_of(tier_set, measured.c.tier)
    qualified = _qualifying_level(tier_set, measured.c.metric)
    floor = held - tier_set.max_levels_down
    level = case((qualified > floor, qualified), else_=floor)
    return select(
        measured.c.member_id,
        measured.c.tier.label("from_tier"),
        measured.c.enrolled_at,
        measured.c.metric,
        held.label("held_level"),
        level.label("level"),
        _tier_at(tier_set, level).label("to_tier"),
    ).subquery("reviewed")


def _review_batch(
    conn: Connection,
    ctx: ProgramContext,
    tier_set: TierSet,
    *,
    cutoff: datetime,
    after_member: str,
    now: datetime,
) -> tuple[Counter[str], str | None]:
    """Review the next ``REVIEW_BATCH`` due members after ``after_member`` (in id order), set
    based: one statement finds the batch, one locks the wallets of every member in its range
    of ids (sorted, as an event or an assignment locks one before it reads a tier, so nothing
    in the range changes underneath or falls due meanwhile), one reads the members whose tier
    changes (for ``tier_changes``), one updates every reviewed row with its tier and next
    review date computed in SQL. Returns the tally and the batch's last member (None: no
    one left)."""
    t = member_tiers.c
    due = _due(ctx, tier_set, cutoff=cutoff)
    upcoming = (
        select(t.member_id)
        .where(due, t.member_id > after_member)
        .order_by(t.member_id)
        .limit(REVIEW_BATCH)
        .subquery()
    )
    last = conn.execute(select(func.max(upcoming.c.member_id))).scalar()
    if last is None:
        return Counter(), None
    lock_wallet_range(conn, ctx.program_id, after_member=after_member, last_member=last)
    tier_dates.prepare(conn)
    reviewed = _reviews(tier_set, due, after_member=after_member, last=last)
    r = reviewed.c
    changed = conn.execute(
        select(r.member_id, r.from_tier, r.to_tier, r.metric, r.held_level, r.level).where(
            r.to_tier != r.from_tier
        )
    ).all()
    at = literal(now, TS)
    review_at, review_from = tier_dates.schedule(
        conn,
        tier_set.window,
        ctx.settings.time_zone,
        after=t.review_at,
        enrolled_at=r.enrolled_at,
    )
    updated = conn.execute(
        update(member_tiers)
        .where(
            t.program_id == ctx.program_id,
            t.tier_set == tier_set.set_id,
            t.member_id == r.member_id,
        )
        .values(
            tier=r.to_tier,
            since=case((r.level == r.held_level, t.since), else_=at),
            review_at=review_at,
            review_from=review_from,
            manual=False,
            reason=None,
            updated_at=at,
        )
    ).rowcount
    if changed:
        conn.execute(
            insert(tier_changes),
            [
                _change(ctx, tier_set, row.member_id, row.from_tier, row.to_tier, row.metric)
                | {"reason": "review", "at": now, "actor": "job:tier-review"}
                for row in changed
            ],
        )
    tally: Counter[str] = Counter(reviewed=updated, kept=updated - len(changed))
    for row in changed:
        if row.level < row.held_level:
            tally["downgraded"] += 1
        elif row.level == row.held_level:
            tally["kept"] += 1  # a tier no longer in the set, now the lowest: not a move
        else:
            tally["upgraded"] += 1
    return tally, str(last)


def _change(
    ctx: ProgramContext,
    tier_set: TierSet,
    member_id: str,
    from_tier: str,
    to_tier: str,
    metric: int,
) -> dict[str, Any]:
    return {
        "id": new_id("tch"),
        "program_id": ctx.program_id,
        "member_id": member_id,
        "tier_set": tier_set.set_id,
        "from_tier": from_tier,
        "to_tier": to_tier,
        "note": None,
        "metric": int(metric),
    }


def review_tiers(engine: Engine, ctx: ProgramContext, *, now: datetime) -> dict[str, int]:
    """Review every member whose tier is due (review date plus the set's grace days at or
    before ``now``), in each tier set on its own: keep, renew or move down by at most
    ``max_levels_down``. Each batch is one transaction; a member reviewed once is not due
    again until the next review date, so running it twice changes nothing. Returns the
    members reviewed, kept, downgraded and upgraded, over all the sets."""
    totals: Counter[str] = Counter()
    for tier_set in ctx.settings.tier_sets:
        totals.update(_review_set(engine, ctx, tier_set, now=now))
    return {key: count for key, count in totals.items() if count}


def _review_set(
    engine: Engine, ctx: ProgramContext, tier_set: TierSet, *, now: datetime
) -> Counter[str]:
    cutoff = now - timedelta(days=tier_set.grace_days)
    totals: Counter[str] = Counter()
    # Each pass walks the due members in id order, a batch after the last member of the one
    # before (so a batch reads what it reviews, not everything reviewed so far). A member
    # whose review date is still past after a review (the job didn't run for a year or more)
    # is caught up by the next pass.
    reviewed_in_pass = 1
    while reviewed_in_pass:
        reviewed_in_pass = 0
        after_member: str | None = ""
        while after_member is not None:

            def batch(
                conn: Connection, start: str = after_member
            ) -> tuple[Counter[str], str | None]:
                return _review_batch(
                    conn, ctx, tier_set, cutoff=cutoff, after_member=start, now=now
                )

            tally, after_member = run_transaction(engine, batch)
            reviewed_in_pass += tally["reviewed"]
            totals.update(tally)
    return totals


def _moving(
    conn: Connection,
    ctx: ProgramContext,
    tier_set: TierSet,
    *,
    now: datetime,
    after_member: str | None = None,
    last: str | None = None,
) -> Subquery:
    """The members (all, or those after ``after_member`` up to ``last``) whose tier differs
    from what the current thresholds give for the metric over the window in force ``now``:
    member, enrolment, whether they have a ``member_tiers`` row, metric, from and to tier.
    Members assigned by hand keep their tier until their assignment ends."""
    m, t, a = members.c, member_tiers.c, member_activity.c

    def within(member_id: ColumnElement[Any]) -> list[ColumnElement[bool]]:
        bounds = []
        if after_member is not None:
            bounds.append(member_id > after_member)
        if last is not None:
            bounds.append(member_id <= last)
        return bounds

    # Each member's metric, grouped by member alone before anything is joined to it.
    window = tier_set.window
    spent = select(a.member_id, _metric_expr(tier_set.metric).label("metric")).where(
        a.program_id == ctx.program_id, *within(a.member_id)
    )
    if window.kind is WindowKind.ANNIVERSARY:  # each member's own membership year
        tier_dates.prepare(conn)
        start = tier_dates.window_start(
            conn, window, ctx.settings.time_zone, at=literal(now, TS), enrolled_at=m.enrolled_at
        )
        spent = spent.join_from(member_activity, members, m.id == a.member_id).where(
            a.occurred_at >= start
        )
    else:  # the same window for every member
        shared, _ = window_at(window, now, enrolled_at=now, zone=_zone(ctx))
        if shared is not None:
            spent = spent.where(a.occurred_at >= literal(shared, TS))
    activity = spent.group_by(a.member_id).subquery("activity")
    measured = (
        select(
            m.id.label("member_id"),
            m.enrolled_at,
            t.tier,
            t.manual,
            t.review_at,
            func.coalesce(activity.c.metric, 0).label("metric"),
        )
        .select_from(
            members.outerjoin(
                member_tiers,
                and_(
                    t.program_id == m.program_id,
                    t.member_id == m.id,
                    t.tier_set == tier_set.set_id,
                    *within(t.member_id),  # so the batch reads its own rows, not all
                ),
            ).outerjoin(activity, activity.c.member_id == m.id)
        )
        .where(m.program_id == ctx.program_id, *within(m.id))
        .subquery("measured")
    )
    c = measured.c
    before = _tier_at(tier_set, _level_of(tier_set, c.tier))
    after = _tier_at(tier_set, _qualifying_level(tier_set, c.metric))
    held = and_(
        func.coalesce(c.manual, False), or_(c.review_at.is_(None), c.review_at > literal(now, TS))
    )
    return (
        select(
            c.member_id,
            c.enrolled_at,
            c.tier.is_not(None).label("has_row"),
            c.metric,
            before.label("from_tier"),
            after.label("to_tier"),
        )
        .where(after != before, not_(held))
        .subquery("moving")
    )


def _apply_moves(
    conn: Connection,
    ctx: ProgramContext,
    tier_set: TierSet,
    moving: list[Any],
    *,
    now: datetime,
    actor: str | None,
) -> None:
    """Write a batch of recalculated tiers: one statement for the rows that change, one for
    the members who get their first row, one for the tier changes."""
    zone = _zone(ctx)
    values: list[dict[str, Any]] = []
    for row in moving:
        review_at, review_from = review_schedule(
            tier_set, now, enrolled_at=row.enrolled_at, zone=zone
        )
        values.append(
            {
                "m_member_id": row.member_id,
                "has_row": row.has_row,
                "tier": row.to_tier,
                "since": now,
                "review_at": review_at,
                "review_from": review_from,
                "manual": False,
                "reason": None,
                "updated_at": now,
            }
        )
    updates = [v for v in values if v["has_row"]]
    inserts = [
        {
            **{k: v for k, v in row.items() if k not in {"m_member_id", "has_row"}},
            "program_id": ctx.program_id,
            "member_id": row["m_member_id"],
            "tier_set": tier_set.set_id,
        }
        for row in values
        if not row["has_row"]
    ]
    t = member_tiers.c
    if inserts:
        conn.execute(insert(member_tiers), inserts)
    if updates:
        conn.execute(
            update(member_tiers)
            .where(
                t.program_id == ctx.program_id,
                t.tier_set == tier_set.set_id,
                t.member_id == bindparam("m_member_id"),
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
    conn.execute(
        insert(tier_changes),
        [
            _change(ctx, tier_set, row.member_id, row.from_tier, row.to_tier, row.metric)
            | {"reason": "recalculated", "at": now, "actor": actor}
            for row in moving
        ],
    )


def _recalculate_batch(
    conn: Connection,
    ctx: ProgramContext,
    tier_set: TierSet,
    *,
    after_member: str,
    now: datetime,
    actor: str | None,
) -> tuple[int, Counter[tuple[str, str]], str | None]:
    """Recalculate the next ``RECALCULATE_BATCH`` members after ``after_member``: find who
    moves (one grouped statement; no one: done), lock their wallets (sorted), find them again
    under the locks and write the moves of those still moving. Returns the members measured,
    the moves by from and to tier, and the batch's last member (None: no one left)."""
    m = members.c
    upcoming = (
        select(m.id)
        .where(m.program_id == ctx.program_id, m.id > after_member)
        .order_by(m.id)
        .limit(RECALCULATE_BATCH)
        .subquery()
    )
    measured, last = conn.execute(
        select(func.count(), func.max(upcoming.c.id)).select_from(upcoming)
    ).one()
    if last is None:
        return 0, Counter(), None
    moving = select(_moving(conn, ctx, tier_set, now=now, after_member=after_member, last=last))
    first_look = conn.execute(moving).all()
    if not first_look:
        return int(measured), Counter(), str(last)
    locked = lock_wallet_keys(conn, [(ctx.program_id, row.member_id) for row in first_look])
    # Read again under the locks: an event may have moved someone in between. A member who
    # started moving only since the first look is not locked and is left for the next run.
    rows = [row for row in conn.execute(moving).all() if (ctx.program_id, row.member_id) in locked]
    if rows:
        _apply_moves(conn, ctx, tier_set, rows, now=now, actor=actor)
    return int(measured), Counter((row.from_tier, row.to_tier) for row in rows), str(last)


def recalculate_tiers(
    engine: Engine,
    principal: Principal,
    program_id: str,
    *,
    now: datetime,
    apply: bool,
    set_id: str | None = None,
) -> dict[str, Any]:
    """What the current thresholds of one tier set (by default the main one) say each
    member's tier is, measured over the window in force now, against the tier they have: the
    moves, by from and to tier. With ``apply``, the moves are made, in batches of members
    (one transaction each, set-based), and recorded with the reason ``recalculated``; members
    assigned by hand keep their tier until their assignment ends. A second run finds no one
    left to move. Raises ``UnknownTierSet``."""
    ctx = _context(engine, principal, program_id, Scope.ADMIN if apply else Scope.READ)
    sets = {tier_set.set_id: tier_set for tier_set in ctx.settings.tier_sets}
    tier_set = sets.get(set_id) if set_id is not None else ctx.settings.tier_set
    if tier_set is None:
        raise UnknownTierSet(str(set_id), known=list(sets))
    moves: Counter[tuple[str, str]] = Counter()
    measured = 0
    if apply:
        after_member: str | None = ""
        while after_member is not None:

            def batch(
                conn: Connection, start: str = after_member
            ) -> tuple[int, Counter[tuple[str, str]], str | None]:
                return _recalculate_batch(
                    conn, ctx, tier_set, after_member=start, now=now, actor=principal.key_id
                )

            count, batch_moves, after_member = run_transaction(engine, batch)
            measured += count
            moves.update(batch_moves)
    else:
        with reading(engine) as conn:
            moving = _moving(conn, ctx, tier_set, now=now)
            counted = select(moving.c.from_tier, moving.c.to_tier, func.count()).group_by(
                moving.c.from_tier, moving.c.to_tier
            )
            moves.update({(before, after): n for before, after, n in conn.execute(counted)})
            measured = conn.execute(
                select(func.count()).where(members.c.program_id == program_id)
            ).scalar_one()
    return {
        "tier_set": tier_set.set_id,
        "members": measured,
        "changes": [
            {"from": before, "to": after, "members": count}
            for (before, after), count in sorted(moves.items())
        ],
        "members_moving": sum(moves.values()),
        "applied": apply,
    }


def review_all(engine: Engine, *, now: datetime) -> dict[str, dict[str, int]]:
    """Run the review for every program that has tiers; by program id."""
    with reading(engine) as conn:
        contexts = [ctx for ctx in all_programs(conn) if ctx.settings.tier_sets]
    return {ctx.program_id: review_tiers(engine, ctx, now=now) for ctx in contexts}
