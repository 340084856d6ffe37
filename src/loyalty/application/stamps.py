"""Stamp cards: stamps given inside the purchase that earns them, rewards issued the moment a
card is full, and stamps (and, if need be, rewards) taken back by returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, func, insert, select, update

from loyalty.adapters.db.engine import reading
from loyalty.adapters.db.ledger_store import member_lots
from loyalty.adapters.db.locking import lock_wallet
from loyalty.adapters.db.tables import member_activity, stamp_cards, stamp_events
from loyalty.adapters.ids import new_id
from loyalty.application.access import Principal, Scope
from loyalty.application.ledger_ops import debit_lots, plan_credit, write_credit
from loyalty.application.members import find_member
from loyalty.application.programs import ProgramContext, load_program
from loyalty.domain.errors import MemberNotFound
from loyalty.domain.ledger import EntryKind, MovementKind, plan_takeback
from loyalty.domain.purchase import Purchase, PurchaseLine
from loyalty.domain.stamps import StampCard, rewards_due, stamps_for


def _lines(purchase: Purchase) -> list[PurchaseLine]:
    # An order sent without lines is one product line of its total, as rules see it.
    return list(purchase.lines) or [PurchaseLine("order", None, 1, purchase.total_minor)]


def _state(conn: Connection, ctx: ProgramContext, member_id: str, card_id: str) -> Any:
    s = stamp_cards.c
    return conn.execute(
        select(s.stamps_total, s.rewards_issued).where(
            and_(s.program_id == ctx.program_id, s.member_id == member_id, s.card_id == card_id)
        )
    ).first()


def _save(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    card_id: str,
    *,
    existed: bool,
    total: int,
    rewarded: int,
    now: datetime,
) -> None:
    values = {"stamps_total": total, "rewards_issued": rewarded, "updated_at": now}
    s = stamp_cards.c
    if existed:
        conn.execute(
            update(stamp_cards)
            .where(
                and_(s.program_id == ctx.program_id, s.member_id == member_id, s.card_id == card_id)
            )
            .values(**values)
        )
    else:
        conn.execute(
            insert(stamp_cards),
            {"program_id": ctx.program_id, "member_id": member_id, "card_id": card_id, **values},
        )


def _record(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    card: StampCard,
    *,
    event_id: str,
    purchase_event_id: str,
    stamps: int,
    day: str,
    now: datetime,
) -> None:
    conn.execute(
        insert(stamp_events),
        {
            "id": new_id("stp"),
            "program_id": ctx.program_id,
            "member_id": member_id,
            "card_id": card.card_id,
            "event_id": event_id,
            "purchase_event_id": purchase_event_id,
            "stamps": stamps,
            "visit_day": day,
            "at": now,
        },
    )


def _view(card: StampCard, total: int, rewarded: int) -> dict[str, Any]:
    return {
        "card": card.card_id,
        "name": card.name,
        "stamps_per_card": card.stamps,
        "on_card": total % card.stamps,
        "needed": card.stamps - total % card.stamps,
        "cards_completed": total // card.stamps,
        "rewards_issued": rewarded,
        "reward_points": card.reward_points,
    }


def stamp_purchase(
    conn: Connection,
    ctx: ProgramContext,
    *,
    member_id: str,
    event_id: str,
    purchase: Purchase,
    at: datetime,
    now: datetime,
    actor: str,
) -> list[dict[str, Any]]:
    """Give the purchase's stamps on every card of the program and issue a reward (points,
    in the same transaction) for every card they fill."""
    settings = ctx.settings
    if not settings.stamp_cards:
        return []
    lock_wallet(conn, ctx.program_id, member_id)  # one member's cards change one at a time
    day = at.astimezone(ZoneInfo(settings.time_zone)).date().isoformat()
    results = []
    for card in settings.stamp_cards:
        today = 0
        if card.max_per_day is not None:
            e = stamp_events.c
            today = int(
                conn.execute(
                    select(func.coalesce(func.sum(e.stamps), 0)).where(
                        and_(
                            e.program_id == ctx.program_id,
                            e.member_id == member_id,
                            e.card_id == card.card_id,
                            e.visit_day == day,
                            e.stamps > 0,
                        )
                    )
                ).scalar_one()
            )
        stamps = stamps_for(
            card, _lines(purchase), total_minor=purchase.total_minor, stamped_today=today
        )
        state = _state(conn, ctx, member_id, card.card_id)
        total = int(state.stamps_total) if state else 0
        rewarded = int(state.rewards_issued) if state else 0
        rewards: list[str] = []
        if stamps > 0:
            _record(
                conn,
                ctx,
                member_id,
                card,
                event_id=event_id,
                purchase_event_id=event_id,
                stamps=stamps,
                day=day,
                now=now,
            )
            total += stamps
            for _ in range(rewards_due(card, total=total, rewarded=rewarded)):
                rewarded += 1
                credit = write_credit(
                    conn,
                    plan_credit(
                        program_id=ctx.program_id,
                        member_id=member_id,
                        debt=lock_wallet(conn, ctx.program_id, member_id).debt,
                        points=card.reward_points,
                        kind=EntryKind.EARN,
                        from_purpose="issued",
                        program_version=settings.version,
                        now=now,
                        expires_at=settings.expiry.expires_at(at),
                        earned_at=at,
                        source_type="stamp_card",
                        source_id=f"{card.card_id}:{rewarded}",
                        actor=actor,
                        details={
                            "event_id": event_id,
                            "card": card.card_id,
                            "card_number": rewarded,
                        },
                    ),
                )
                rewards.append(credit.entry_id)
            _save(
                conn,
                ctx,
                member_id,
                card.card_id,
                existed=state is not None,
                total=total,
                rewarded=rewarded,
                now=now,
            )
        results.append(
            {**_view(card, total, rewarded), "stamps": stamps, "reward_entries": rewards}
        )
    return results


def unstamp_return(
    conn: Connection,
    ctx: ProgramContext,
    *,
    member_id: str,
    event_id: str,
    purchase_event_id: str,
    rest: Purchase | None,
    now: datetime,
    actor: str,
) -> list[dict[str, Any]]:
    """Take back the stamps the returned goods gave: what the purchase's stamps were, less
    what the rest of the basket (``rest``; None when nothing is left) would earn. If that
    leaves a completed card short, its reward's points are taken back too, under the
    program's negative-balance policy. The caller holds the member's wallet lock."""
    settings = ctx.settings
    results = []
    for card in settings.stamp_cards:
        e = stamp_events.c
        given = int(
            conn.execute(
                select(func.coalesce(func.sum(e.stamps), 0)).where(
                    and_(e.purchase_event_id == purchase_event_id, e.card_id == card.card_id)
                )
            ).scalar_one()
        )
        if given <= 0:
            continue
        keep = 0
        if rest is not None:
            keep = min(given, stamps_for(card, _lines(rest), total_minor=rest.total_minor))
        remove = given - keep
        if remove <= 0:
            continue
        state = _state(conn, ctx, member_id, card.card_id)
        total = int(state.stamps_total) - remove
        rewarded = int(state.rewards_issued)
        day = now.astimezone(ZoneInfo(settings.time_zone)).date().isoformat()
        _record(
            conn,
            ctx,
            member_id,
            card,
            event_id=event_id,
            purchase_event_id=purchase_event_id,
            stamps=-remove,
            day=day,
            now=now,
        )
        taken_back = 0
        for _ in range(-rewards_due(card, total=total, rewarded=rewarded)):
            rewarded -= 1
            taken_back += card.reward_points
        if taken_back:
            plan = plan_takeback(
                points=taken_back,
                own_lots=[],
                other_lots=member_lots(conn, ctx.program_id, member_id),
                policy=settings.negative_balance,
            )
            if plan.points_taken > 0:
                debit_lots(
                    conn,
                    program_id=ctx.program_id,
                    member_id=member_id,
                    takes=plan.takes,
                    points=plan.points_taken,
                    kind=EntryKind.RETURN,
                    movement=MovementKind.RETURN,
                    to_purpose="issued",
                    program_version=settings.version,
                    now=now,
                    debt_added=plan.debt_added,
                    source_type="stamp_card",
                    source_id=f"{card.card_id}:{rewarded + 1}:returned",
                    actor=actor,
                    details={
                        "event_id": event_id,
                        "card": card.card_id,
                        "points_written_off": plan.points_written_off,
                    },
                )
        _save(
            conn,
            ctx,
            member_id,
            card.card_id,
            existed=True,
            total=total,
            rewarded=rewarded,
            now=now,
        )
        results.append(
            {**_view(card, total, rewarded), "stamps": -remove, "reward_points_taken": taken_back}
        )
    return results


def member_stamp_cards(
    engine: Engine, principal: Principal, program_id: str, member_ref: str
) -> dict[str, Any]:
    """The member's cards (stamps on the current card, cards completed, rewards issued) and
    their visit counts: distinct local days with a purchase, and purchases."""
    with reading(engine) as conn:
        ctx = load_program(conn, principal, program_id, Scope.READ)
        member = find_member(conn, program_id, member_ref)
        if member is None:
            raise MemberNotFound(member_ref)
        cards = []
        for card in ctx.settings.stamp_cards:
            state = _state(conn, ctx, member.id, card.card_id)
            cards.append(
                _view(
                    card,
                    int(state.stamps_total) if state else 0,
                    int(state.rewards_issued) if state else 0,
                )
            )
        a = member_activity.c
        visits = conn.execute(
            select(
                func.count(func.distinct(a.visit_day)), func.coalesce(func.sum(a.purchases), 0)
            ).where(and_(a.program_id == program_id, a.member_id == member.id))
        ).one()
    return {
        "member_id": member.id,
        "cards": cards,
        "visits": {"days": int(visits[0]), "purchases": int(visits[1])},
    }
