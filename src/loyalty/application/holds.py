"""Pay with points at checkout, in two phases: reserve points against an order (a hold with
a time-to-live), then capture them when the order completes (possibly fewer) or release them
when it is abandoned. The authorization/capture pattern card payments use.

A hold takes points out of the member's lots at once (earliest expiry first, like a
redemption), into the program's ``held`` account, so they can't be spent twice. A capture
moves what the order used from ``held`` to ``redeemed`` and gives the rest back; a release
gives everything back. Points go back to the very lots they came from, keeping their expiry.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, func, insert, select, update

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.ledger_store import (
    EntryRecord,
    lot_expiries,
    member_lots,
    move_lots,
    write_entry,
)
from loyalty.adapters.db.locking import lock_second_wallet, lock_wallet
from loyalty.adapters.db.tables import holds, journal_entries, lot_movements
from loyalty.adapters.ids import new_id
from loyalty.application.access import Principal, Scope
from loyalty.application.balances import WalletFigures, balance_view, wallet_figures
from loyalty.application.expiry import extend_on_activity, lock_for_burn
from loyalty.application.idempotency import Outcome, fingerprint, run_idempotent
from loyalty.application.ledger_ops import debit_lots
from loyalty.application.members import resolve_member
from loyalty.application.programs import ProgramContext, load_program
from loyalty.domain.cashback import check_payment, money_of, payment_room, wallet_name
from loyalty.domain.errors import (
    HoldExpired,
    HoldNotFound,
    HoldNotOpen,
    InsufficientCashback,
    LimitExceeded,
    PaymentNotAllowed,
)
from loyalty.domain.ledger import (
    CASH,
    POINTS,
    EntryKind,
    Lot,
    MovementKind,
    Posting,
    member_account,
    plan_debt_repayment,
    plan_redemption,
    plan_release,
    program_account,
)

HOLD_TTL_DEFAULT_S = 900
HOLD_TTL_MAX_S = 86_400


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "member_id": row.member_id,
        "wallet": wallet_name(row.asset),
        "points": int(row.points),
        "order_reference": row.order_reference,
        "status": row.status,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "captured_points": None if row.captured_points is None else int(row.captured_points),
        "released_points": None
        if row.captured_points is None and row.status in ("held", "captured")
        else int(row.points) - int(row.captured_points or 0),
        "settled_at": row.settled_at.isoformat() if row.settled_at else None,
        "entry_id": row.entry_id,
        "capture_entry_id": row.capture_entry_id,
        "release_entry_id": row.release_entry_id,
    }


def _row(conn: Connection, program_id: str, hold_id: str) -> Any:
    row = conn.execute(
        select(holds).where(and_(holds.c.id == hold_id, holds.c.program_id == program_id))
    ).first()
    if row is None:
        raise HoldNotFound(hold_id)
    return row


def _reserved_for_order(
    conn: Connection, program_id: str, order_reference: str | None, asset: str
) -> int:
    """What holds of one wallet already took for an order: held, or captured."""
    if order_reference is None:
        return 0
    amount = case(
        (holds.c.status == "held", holds.c.points),
        (holds.c.status == "captured", holds.c.captured_points),
        else_=0,
    )
    return int(
        conn.execute(
            select(func.coalesce(func.sum(amount), 0)).where(
                and_(
                    holds.c.program_id == program_id,
                    holds.c.order_reference == order_reference,
                    holds.c.asset == asset,
                )
            )
        ).scalar_one()
    )


def payment_options(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    *,
    order_total_minor: int,
    order_reference: str | None,
    now: datetime,
    figures: dict[str, WalletFigures] | None = None,
) -> list[dict[str, Any]]:
    """What the member could pay of an order with each wallet now, within the checkout rules
    and their spendable balance, and why not when they can't (for the quote). ``figures``:
    the member's ``wallet_figures`` if the caller has read them already."""
    if figures is None:
        figures = wallet_figures(conn, ctx.program_id, member_id, now=now)
    cash = figures.get(CASH)
    rules = ctx.settings.checkout
    options = []
    for asset, available in (
        (POINTS, figures[POINTS].available),
        (CASH, cash.available if cash else 0),
    ):
        if asset == CASH and ctx.settings.cashback is None and cash is None:
            continue
        room = payment_room(
            rules,
            asset=asset,
            value=ctx.settings.point_value,
            order_total_minor=order_total_minor,
            already_reserved=_reserved_for_order(conn, ctx.program_id, order_reference, asset),
        )
        most = available if room.max_amount is None else min(available, room.max_amount)
        reason = room.reason
        if reason is None and (most <= 0 or most < room.min_amount):
            reason = "balance_below_minimum" if available > 0 else "no_balance"
        if reason is not None:
            most = 0
        options.append(
            {
                "wallet": wallet_name(asset),
                "available": available,
                "min": room.min_amount,
                "max": most,
                "max_value_minor": money_of(asset, most, ctx.settings.point_value),
                "reason": reason,
            }
        )
    return options


def reserve(
    engine: Engine,
    principal: Principal,
    program_id: str,
    member_ref: str,
    *,
    points: int,
    order_reference: str | None,
    ttl_seconds: int,
    idempotency_key: str,
    now: datetime,
    asset: str = POINTS,
    order_total_minor: int | None = None,
) -> Outcome:
    """Hold ``points`` (or, with ``asset`` CASH, minor units of cashback) for an order for
    ``ttl_seconds``, within the program's checkout rules for an order of
    ``order_total_minor`` (what earlier holds of the same ``order_reference`` took counts).
    Raises ``InsufficientPoints`` / ``InsufficientCashback`` (the checkout shows what is
    available), ``PaymentNotAllowed``, ``MemberNotFound``."""
    if not 1 <= ttl_seconds <= HOLD_TTL_MAX_S:
        raise LimitExceeded(
            f"A hold lives 1 to {HOLD_TTL_MAX_S} seconds.", limit="hold_ttl_seconds"
        )

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        member = resolve_member(conn, program_id, member_ref)

        def effect() -> tuple[int, dict[str, Any]]:
            wallet = lock_for_burn(conn, program_id, member.id, now=now)
            check_payment(
                ctx.settings.checkout,
                asset=asset,
                amount=points,
                value=ctx.settings.point_value,
                order_total_minor=order_total_minor,
                already_reserved=_reserved_for_order(conn, program_id, order_reference, asset),
            )
            if asset == CASH:
                wallet = lock_second_wallet(conn, program_id, member.id, CASH, now=now)
            lots = member_lots(conn, program_id, member.id, spendable_at=now, asset=asset)
            available = sum(lot.remaining for lot in lots) - wallet.debt
            if asset == CASH and available < points:
                raise InsufficientCashback(
                    amount_required_minor=points, amount_available_minor=max(available, 0)
                )
            takes = plan_redemption(lots, points=points, balance=available)
            extend_on_activity(conn, ctx.settings, program_id, member.id, at=now, now=now)
            hold_id = new_id("hld")
            details: dict[str, Any] = (
                {"order_reference": order_reference} if order_reference else {}
            )
            if order_total_minor is not None:
                details["order_total_minor"] = order_total_minor
            entry_id = debit_lots(
                conn,
                program_id=program_id,
                member_id=member.id,
                takes=takes,
                points=points,
                kind=EntryKind.HOLD,
                movement=MovementKind.HOLD,
                to_purpose="held",
                program_version=ctx.settings.version,
                now=now,
                source_type="hold",
                source_id=hold_id,
                actor=principal.key_id,
                details=details,
                asset=asset,
            )
            conn.execute(
                insert(holds),
                {
                    "id": hold_id,
                    "program_id": program_id,
                    "member_id": member.id,
                    "points": points,
                    "asset": asset,
                    "order_reference": order_reference,
                    "status": "held",
                    "entry_id": entry_id,
                    "created_at": now,
                    "expires_at": now + timedelta(seconds=ttl_seconds),
                },
            )
            return 201, {
                **_view(_row(conn, program_id, hold_id)),
                "balance": balance_view(conn, program_id, member.id, now=now),
            }

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=f"hold:{idempotency_key}",
            client_key=idempotency_key,
            # What was added later joins the fingerprint only when used, so a retry of a
            # request stored before keeps matching.
            request_fingerprint=fingerprint(
                member.id,
                points,
                order_reference,
                ttl_seconds,
                *(
                    [asset, order_total_minor]
                    if (asset, order_total_minor) != (POINTS, None)
                    else []
                ),
            ),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)


def _credit_back(
    conn: Connection,
    ctx: ProgramContext,
    *,
    member_id: str,
    asset: str,
    lots: list[Lot],
    amount: int,
    from_purpose: str,
    kind: EntryKind,
    movement: MovementKind,
    now: datetime,
    actor: str,
    reason: str,
    source_type: str,
    source_id: str,
    reverses_entry_id: str | None,
    details: dict[str, Any],
) -> str:
    """Give ``amount`` back to ``lots`` (each with what it may still take back as its
    ``remaining``), latest-expiring first, so the points keep their original expiry; a debt is
    repaid first, as any credit does. The caller holds the member's lock."""
    wallet = lock_wallet(conn, ctx.program_id, member_id)
    if asset == CASH:
        wallet = lock_second_wallet(conn, ctx.program_id, member_id, CASH, now=now)
    back = plan_release(lots, amount)
    repaid = plan_debt_repayment(
        (
            Lot(t.lot_id, t.points, now, lot.expires_at)
            for t in back
            for lot in lots
            if lot.lot_id == t.lot_id
        ),
        wallet.debt,
    )
    debt_repaid = sum(repaid.values())
    entry_id = new_id("ent")
    write_entry(
        conn,
        EntryRecord(
            entry_id=entry_id,
            program_id=ctx.program_id,
            member_id=member_id,
            kind=kind,
            program_version=ctx.settings.version,
            created_at=now,
            reason=reason,
            source_type=source_type,
            source_id=source_id,
            reverses_entry_id=reverses_entry_id,
            actor=actor,
            details={**details, "debt_repaid": debt_repaid} if debt_repaid else details,
        ),
        [
            Posting(
                program_account(ctx.program_id, from_purpose, asset),
                member_account(member_id, asset),
                amount,
                asset,
            )
        ],
        debt_delta={member_id: -debt_repaid} if debt_repaid else None,
        debt_asset=asset,
    )
    move_lots(
        conn,
        entry_id=entry_id,
        program_id=ctx.program_id,
        member_id=member_id,
        kind=movement,
        changes=[(t.lot_id, t.points - repaid.get(t.lot_id, 0)) for t in back],
    )
    return entry_id


def _taken_lots(conn: Connection, entry_ids: list[str]) -> dict[str, int]:
    """Per lot, the net amount the given entries moved (negative: taken from the lot)."""
    moved: dict[str, int] = {}
    for r in conn.execute(
        select(lot_movements.c.lot_id, func.sum(lot_movements.c.amount).label("amount"))
        .where(lot_movements.c.entry_id.in_(entry_ids))
        .group_by(lot_movements.c.lot_id)
    ).all():
        moved[r.lot_id] = int(r.amount)
    return moved


def _as_lots(conn: Connection, outstanding: dict[str, int], *, now: datetime) -> list[Lot]:
    expiries = lot_expiries(conn, [lot_id for lot_id, n in outstanding.items() if n > 0])
    return [Lot(lot_id, n, now, expiries[lot_id]) for lot_id, n in outstanding.items() if n > 0]


def _give_back(
    conn: Connection,
    ctx: ProgramContext,
    row: Any,
    points: int,
    *,
    now: datetime,
    actor: str,
    reason: str,
) -> str:
    """Return ``points`` of a hold to the lots it took them from (latest-expiring first).
    The caller holds the wallet lock."""
    taken = _taken_lots(conn, [row.entry_id])
    return _credit_back(
        conn,
        ctx,
        member_id=row.member_id,
        asset=row.asset,
        lots=_as_lots(conn, {lot_id: -n for lot_id, n in taken.items()}, now=now),
        amount=points,
        from_purpose="held",
        kind=EntryKind.HOLD_RELEASE,
        movement=MovementKind.HOLD_RELEASE,
        now=now,
        actor=actor,
        reason=reason,
        source_type="hold",
        source_id=row.id,
        reverses_entry_id=row.entry_id,
        details={},
    )


def restore_payments(
    conn: Connection,
    ctx: ProgramContext,
    *,
    member_id: str,
    order_id: str,
    returned_share: tuple[int, int] | None,
    return_id: str,
    now: datetime,
    actor: str,
) -> list[dict[str, Any]]:
    """After a return, give back the points and cashback that paid for what was returned:
    of what captured holds of the order (``order_reference``) took, the share
    ``returned_share = (value returned so far, order value)`` (all of it when ``None``: the
    whole order is back), less what earlier returns restored. They go back to the lots they
    came from, with their original expiry. The caller holds the member's lock."""
    captured = conn.execute(
        select(holds).where(
            and_(
                holds.c.program_id == ctx.program_id,
                holds.c.order_reference == order_id,
                holds.c.member_id == member_id,
                holds.c.status == "captured",
                holds.c.captured_points > 0,
            )
        )
    ).all()
    restored: list[dict[str, Any]] = []
    for asset in (POINTS, CASH):
        paid_holds = [h for h in captured if h.asset == asset]
        paid = sum(int(h.captured_points) for h in paid_holds)
        if paid == 0:
            continue
        earlier = conn.execute(
            select(journal_entries.c.id, journal_entries.c.details).where(
                and_(
                    journal_entries.c.program_id == ctx.program_id,
                    journal_entries.c.member_id == member_id,
                    journal_entries.c.kind == EntryKind.PAYMENT_RESTORE.value,
                    journal_entries.c.source_type == "order",
                    journal_entries.c.source_id == order_id,
                )
            )
        ).all()
        earlier = [e for e in earlier if e.details.get("wallet") == wallet_name(asset)]
        restored_before = sum(int(e.details["amount"]) for e in earlier)
        if returned_share is None:
            target = paid
        else:
            returned_value, order_value = returned_share
            target = paid * min(returned_value, order_value) // order_value if order_value else 0
        amount = target - restored_before
        if amount <= 0:
            continue
        moved = _taken_lots(
            conn,
            [h.entry_id for h in paid_holds]
            + [h.release_entry_id for h in paid_holds if h.release_entry_id]
            + [e.id for e in earlier],
        )
        entry_id = _credit_back(
            conn,
            ctx,
            member_id=member_id,
            asset=asset,
            lots=_as_lots(conn, {lot_id: -n for lot_id, n in moved.items()}, now=now),
            amount=amount,
            from_purpose="redeemed",
            kind=EntryKind.PAYMENT_RESTORE,
            movement=MovementKind.PAYMENT_RESTORE,
            now=now,
            actor=actor,
            reason="paid for returned items",
            source_type="order",
            source_id=order_id,
            reverses_entry_id=None,
            details={"wallet": wallet_name(asset), "amount": amount, "return_id": return_id},
        )
        restored.append({"wallet": wallet_name(asset), "amount": amount, "entry_id": entry_id})
    return restored


def capture(
    engine: Engine,
    principal: Principal,
    program_id: str,
    hold_id: str,
    *,
    points: int | None,
    idempotency_key: str,
    now: datetime,
    asset: str | None = None,
) -> Outcome:
    """Capture ``points`` of a hold (all of it by default; minor units for a cashback hold,
    whose wallet ``asset`` names when given) for the completed order; the rest goes back to
    the member. Raises ``HoldExpired`` after its time-to-live, ``HoldNotOpen`` when it was
    already captured or released, ``PaymentNotAllowed`` when ``asset`` is not the hold's."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        first = _row(conn, program_id, hold_id)

        def effect() -> tuple[int, dict[str, Any]]:
            lock_wallet(conn, program_id, first.member_id)
            row = _row(conn, program_id, hold_id)
            if row.status != "held":
                raise HoldNotOpen(hold_id, status=row.status)
            if now >= row.expires_at:
                raise HoldExpired(hold_id, expires_at=row.expires_at.isoformat())
            if asset is not None and asset != row.asset:
                raise PaymentNotAllowed(
                    f"Hold {hold_id!r} holds {wallet_name(row.asset)}; capture it with "
                    f"{'cashback_minor' if row.asset == CASH else 'points'}.",
                    wallet=wallet_name(row.asset),
                    reason="wrong_wallet",
                    limit=None,
                )
            amount = int(row.points) if points is None else points
            if amount > int(row.points):
                raise LimitExceeded(
                    f"The hold is for {int(row.points)} points; it can't capture {amount}.",
                    limit="capture_points",
                    points_max=int(row.points),
                )
            capture_entry = None
            if amount > 0:
                capture_entry = new_id("ent")
                write_entry(
                    conn,
                    EntryRecord(
                        entry_id=capture_entry,
                        program_id=program_id,
                        member_id=row.member_id,
                        kind=EntryKind.HOLD_CAPTURE,
                        program_version=ctx.settings.version,
                        created_at=now,
                        source_type="hold",
                        source_id=hold_id,
                        actor=principal.key_id,
                        details={"order_reference": row.order_reference}
                        if row.order_reference
                        else {},
                    ),
                    [
                        Posting(
                            program_account(program_id, "held", row.asset),
                            program_account(program_id, "redeemed", row.asset),
                            amount,
                            row.asset,
                        )
                    ],
                )
            release_entry = None
            if amount < int(row.points):
                release_entry = _give_back(
                    conn,
                    ctx,
                    row,
                    int(row.points) - amount,
                    now=now,
                    actor=principal.key_id,
                    reason="not captured",
                )
            conn.execute(
                update(holds)
                .where(holds.c.id == hold_id)
                .values(
                    status="captured",
                    captured_points=amount,
                    settled_at=now,
                    capture_entry_id=capture_entry,
                    release_entry_id=release_entry,
                )
            )
            return 200, {
                **_view(_row(conn, program_id, hold_id)),
                "balance": balance_view(conn, program_id, row.member_id, now=now),
            }

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=f"capture:{idempotency_key}",
            client_key=idempotency_key,
            request_fingerprint=fingerprint(hold_id, points, *([asset] if asset else [])),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)


def _release_locked(
    conn: Connection, ctx: ProgramContext, row: Any, *, status: str, now: datetime, actor: str
) -> None:
    entry = _give_back(conn, ctx, row, int(row.points), now=now, actor=actor, reason=status)
    conn.execute(
        update(holds)
        .where(holds.c.id == row.id)
        .values(status=status, captured_points=0, settled_at=now, release_entry_id=entry)
    )


def release(
    engine: Engine, principal: Principal, program_id: str, hold_id: str, *, now: datetime
) -> dict[str, Any]:
    """Give a hold's points back (the order was abandoned). Releasing a released or expired
    hold answers the same; a captured one is ``HoldNotOpen``."""

    def work(conn: Connection) -> dict[str, Any]:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        first = _row(conn, program_id, hold_id)
        lock_wallet(conn, program_id, first.member_id)
        row = _row(conn, program_id, hold_id)
        if row.status == "captured":
            raise HoldNotOpen(hold_id, status=row.status)
        if row.status == "held":
            _release_locked(conn, ctx, row, status="released", now=now, actor=principal.key_id)
        return {
            **_view(_row(conn, program_id, hold_id)),
            "balance": balance_view(conn, program_id, row.member_id, now=now),
        }

    return run_transaction(engine, work)


def get_hold(engine: Engine, principal: Principal, program_id: str, hold_id: str) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.READ)
        return _view(_row(conn, program_id, hold_id))

    return run_transaction(engine, work, write=False)


def release_expired(engine: Engine, *, now: datetime, batch_size: int = 500) -> int:
    """The job: release every hold past its time-to-live (status ``expired``), a batch per
    transaction; safe to run twice or concurrently (each hold is rechecked under its member's
    lock)."""
    from loyalty.application.programs import all_programs

    released = 0
    while True:

        def batch(conn: Connection) -> int:
            due = conn.execute(
                select(holds.c.id, holds.c.program_id, holds.c.member_id)
                .where(and_(holds.c.status == "held", holds.c.expires_at <= now))
                .order_by(holds.c.member_id, holds.c.id)
                .limit(batch_size)
            ).all()
            if not due:
                return 0
            contexts = {ctx.program_id: ctx for ctx in all_programs(conn)}
            done = 0
            for hold in due:
                lock_wallet(conn, hold.program_id, hold.member_id)
                row = _row(conn, hold.program_id, hold.id)
                if row.status != "held":
                    continue
                _release_locked(
                    conn,
                    contexts[hold.program_id],
                    row,
                    status="expired",
                    now=now,
                    actor="job:release-holds",
                )
                done += 1
            return done if done else -1

        done = run_transaction(engine, batch)
        if done == 0:
            return released
        released += max(done, 0)
