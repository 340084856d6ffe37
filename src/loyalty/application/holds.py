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

from sqlalchemy import Connection, Engine, and_, insert, select, update

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.ledger_store import (
    EntryRecord,
    lot_expiries,
    member_lots,
    move_lots,
    write_entry,
)
from loyalty.adapters.db.locking import lock_wallet
from loyalty.adapters.db.tables import holds, lot_movements
from loyalty.adapters.ids import new_id
from loyalty.application.access import Principal, Scope
from loyalty.application.balances import balance_view
from loyalty.application.expiry import extend_on_activity, lock_for_burn
from loyalty.application.idempotency import Outcome, fingerprint, run_idempotent
from loyalty.application.ledger_ops import debit_lots
from loyalty.application.members import resolve_member
from loyalty.application.programs import ProgramContext, load_program
from loyalty.domain.errors import HoldExpired, HoldNotFound, HoldNotOpen, LimitExceeded
from loyalty.domain.ledger import (
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
) -> Outcome:
    """Hold ``points`` for an order for ``ttl_seconds``. Raises ``InsufficientPoints`` (the
    checkout shows what is available), ``MemberNotFound``."""
    if not 1 <= ttl_seconds <= HOLD_TTL_MAX_S:
        raise LimitExceeded(
            f"A hold lives 1 to {HOLD_TTL_MAX_S} seconds.", limit="hold_ttl_seconds"
        )

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        member = resolve_member(conn, program_id, member_ref)

        def effect() -> tuple[int, dict[str, Any]]:
            wallet = lock_for_burn(conn, program_id, member.id, now=now)
            lots = member_lots(conn, program_id, member.id, spendable_at=now)
            takes = plan_redemption(
                lots, points=points, balance=sum(lot.remaining for lot in lots) - wallet.debt
            )
            extend_on_activity(conn, ctx.settings, program_id, member.id, at=now, now=now)
            hold_id = new_id("hld")
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
                details={"order_reference": order_reference} if order_reference else {},
            )
            conn.execute(
                insert(holds),
                {
                    "id": hold_id,
                    "program_id": program_id,
                    "member_id": member.id,
                    "points": points,
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
            request_fingerprint=fingerprint(member.id, points, order_reference, ttl_seconds),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)


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
    """Return ``points`` of a hold to the lots it took them from (latest-expiring first),
    repaying a debt first as any credit does. The caller holds the wallet lock."""
    wallet = lock_wallet(conn, ctx.program_id, row.member_id)
    taken = conn.execute(
        select(lot_movements.c.lot_id, lot_movements.c.amount).where(
            lot_movements.c.entry_id == row.entry_id
        )
    ).all()
    expiries = lot_expiries(conn, [r.lot_id for r in taken])
    lots = [Lot(r.lot_id, -int(r.amount), now, expiries[r.lot_id]) for r in taken]
    back = plan_release(lots, points)
    repaid = plan_debt_repayment(
        (Lot(t.lot_id, t.points, now, expiries[t.lot_id]) for t in back), wallet.debt
    )
    debt_repaid = sum(repaid.values())
    entry_id = new_id("ent")
    write_entry(
        conn,
        EntryRecord(
            entry_id=entry_id,
            program_id=ctx.program_id,
            member_id=row.member_id,
            kind=EntryKind.HOLD_RELEASE,
            program_version=ctx.settings.version,
            created_at=now,
            reason=reason,
            source_type="hold",
            source_id=row.id,
            reverses_entry_id=row.entry_id,
            actor=actor,
            details={"debt_repaid": debt_repaid} if debt_repaid else {},
        ),
        [Posting(program_account(ctx.program_id, "held"), member_account(row.member_id), points)],
        debt_delta={row.member_id: -debt_repaid} if debt_repaid else None,
    )
    move_lots(
        conn,
        entry_id=entry_id,
        program_id=ctx.program_id,
        member_id=row.member_id,
        kind=MovementKind.HOLD_RELEASE,
        changes=[(t.lot_id, t.points - repaid.get(t.lot_id, 0)) for t in back],
    )
    return entry_id


def capture(
    engine: Engine,
    principal: Principal,
    program_id: str,
    hold_id: str,
    *,
    points: int | None,
    idempotency_key: str,
    now: datetime,
) -> Outcome:
    """Capture ``points`` of a hold (all of it by default) for the completed order; the rest
    goes back to the member. Raises ``HoldExpired`` after its time-to-live, ``HoldNotOpen``
    when it was already captured or released."""

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
                            program_account(program_id, "held"),
                            program_account(program_id, "redeemed"),
                            amount,
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
            request_fingerprint=fingerprint(hold_id, points),
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
