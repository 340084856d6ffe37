"""Burning points (redemptions), cancelling a burn, and manual adjustments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, select

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.ledger_store import (
    EntryRecord,
    lot_expiries,
    member_lots,
    move_lots,
    write_entry,
)
from loyalty.adapters.db.locking import WalletState, lock_wallet
from loyalty.adapters.db.tables import lot_movements, redemption_cancellations, redemptions
from loyalty.adapters.ids import new_id
from loyalty.application.access import Principal, Scope
from loyalty.application.balances import balance_view
from loyalty.application.expiry import extend_on_activity, lock_for_burn
from loyalty.application.idempotency import Outcome, fingerprint, run_idempotent
from loyalty.application.ledger_ops import debit_lots, plan_credit, write_credit
from loyalty.application.members import resolve_member
from loyalty.application.programs import ProgramContext, load_program
from loyalty.domain.errors import ExpiryInPast, RedemptionAlreadyCancelled, RedemptionNotFound
from loyalty.domain.ledger import (
    EntryKind,
    Lot,
    LotTake,
    MovementKind,
    Posting,
    member_account,
    plan_debt_repayment,
    plan_redemption,
    program_account,
)


def _spendable(lots: list[Lot], wallet: WalletState) -> int:
    """Points that can be burnt now: lots out of their pending period, less any debt (a member
    with a debt holds no points at all)."""
    return sum(lot.remaining for lot in lots) - wallet.debt


def _lots_view(conn: Connection, takes: list[LotTake]) -> list[dict[str, Any]]:
    expiries = lot_expiries(conn, [t.lot_id for t in takes])
    return [
        {
            "lot_id": t.lot_id,
            "points": t.points,
            "expires_at": expiries[t.lot_id].isoformat() if expiries[t.lot_id] else None,  # type: ignore[union-attr]
        }
        for t in takes
    ]


def burn_points(
    conn: Connection,
    ctx: ProgramContext,
    member_id: str,
    *,
    points: int,
    reason: str | None,
    reference: str | None,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Burn ``points`` in the caller's transaction: lock the wallet (expiring overdue lots
    first), take earliest-expiring lots, record the redemption. Raises
    ``InsufficientPoints``."""
    program_id = ctx.program_id
    wallet = lock_for_burn(conn, program_id, member_id, now=now)
    lots = member_lots(conn, program_id, member_id, spendable_at=now)
    takes = plan_redemption(lots, points=points, balance=_spendable(lots, wallet))
    # A redemption is activity: under the inactivity policy, what is left lives on.
    extend_on_activity(conn, ctx.settings, program_id, member_id, at=now, now=now)
    redemption_id = new_id("red")
    entry_id = debit_lots(
        conn,
        program_id=program_id,
        member_id=member_id,
        takes=takes,
        points=points,
        kind=EntryKind.REDEEM,
        movement=MovementKind.REDEEM,
        to_purpose="redeemed",
        program_version=ctx.settings.version,
        now=now,
        reason=reason,
        source_type="redemption",
        source_id=redemption_id,
        actor=actor,
        details={"reference": reference} if reference else {},
    )
    conn.execute(
        insert(redemptions).values(
            id=redemption_id,
            program_id=program_id,
            member_id=member_id,
            entry_id=entry_id,
            points=points,
            reason=reason,
            reference=reference,
            created_at=now,
        )
    )
    return {
        "id": redemption_id,
        "member_id": member_id,
        "points": points,
        "reason": reason,
        "reference": reference,
        "status": "completed",
        "entry_id": entry_id,
        "created_at": now.isoformat(),
        "lots": _lots_view(conn, takes),
        "balance": balance_view(conn, program_id, member_id, now=now),
    }


def redeem_points(
    engine: Engine,
    principal: Principal,
    program_id: str,
    member_ref: str,
    *,
    points: int,
    reason: str | None,
    reference: str | None,
    idempotency_key: str,
    now: datetime,
) -> Outcome:
    """Burn ``points``, earliest-expiring lots first. Raises ``InsufficientPoints`` (nothing is
    clamped), ``MemberNotFound``, ``IdempotencyConflict``."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        member = resolve_member(conn, program_id, member_ref)

        def effect() -> tuple[int, dict[str, Any]]:
            return 201, burn_points(
                conn,
                ctx,
                member.id,
                points=points,
                reason=reason,
                reference=reference,
                actor=principal.key_id,
                now=now,
            )

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=f"redeem:{idempotency_key}",
            client_key=idempotency_key,
            request_fingerprint=fingerprint(member.id, points, reason, reference),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)


def restore_redemption(
    conn: Connection,
    ctx: ProgramContext,
    red: Any,
    *,
    reason: str | None,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Cancel redemption ``red`` (a row of ``redemptions``) in the caller's transaction: every
    lot gets back what it gave, with its expiry, debt repaid first."""
    program_id = ctx.program_id
    redemption_id = red.id
    wallet = lock_wallet(conn, program_id, red.member_id)
    already = conn.execute(
        select(redemption_cancellations.c.entry_id).where(
            redemption_cancellations.c.redemption_id == redemption_id
        )
    ).first()
    if already is not None:
        raise RedemptionAlreadyCancelled(redemption_id)
    taken = conn.execute(
        select(lot_movements.c.lot_id, lot_movements.c.amount).where(
            lot_movements.c.entry_id == red.entry_id
        )
    ).all()
    restored = {r.lot_id: -int(r.amount) for r in taken}
    # A member with a debt holds no points; restored points repay the debt first,
    # earliest-expiring lot first, and the lot keeps only the rest.
    repaid_by_lot: dict[str, int] = {}
    if wallet.debt:
        expiries = lot_expiries(conn, list(restored))
        repaid_by_lot = plan_debt_repayment(
            (Lot(lot_id, pts, now, expiries[lot_id]) for lot_id, pts in restored.items()),
            wallet.debt,
        )
    repaid = sum(repaid_by_lot.values())
    entry_id = new_id("ent")
    write_entry(
        conn,
        EntryRecord(
            entry_id=entry_id,
            program_id=program_id,
            member_id=red.member_id,
            kind=EntryKind.REDEEM_CANCEL,
            program_version=ctx.settings.version,
            created_at=now,
            reason=reason,
            source_type="redemption",
            source_id=redemption_id,
            reverses_entry_id=red.entry_id,
            actor=actor,
            details={"debt_repaid": repaid} if repaid else {},
        ),
        [
            Posting(
                program_account(program_id, "redeemed"),
                member_account(red.member_id),
                int(red.points),
            )
        ],
        debt_delta={red.member_id: -repaid} if repaid else None,
    )
    move_lots(
        conn,
        entry_id=entry_id,
        program_id=program_id,
        member_id=red.member_id,
        kind=MovementKind.REDEEM_CANCEL,
        changes=[(lot_id, pts - repaid_by_lot.get(lot_id, 0)) for lot_id, pts in restored.items()],
    )
    conn.execute(
        insert(redemption_cancellations).values(
            redemption_id=redemption_id,
            program_id=program_id,
            member_id=red.member_id,
            entry_id=entry_id,
            reason=reason,
            cancelled_at=now,
        )
    )
    return {
        "id": redemption_id,
        "member_id": red.member_id,
        "points": int(red.points),
        "status": "cancelled",
        "cancel_entry_id": entry_id,
        "cancelled_at": now.isoformat(),
        "lots": _lots_view(conn, [LotTake(lot_id, pts) for lot_id, pts in restored.items()]),
        "balance": balance_view(conn, program_id, red.member_id, now=now),
    }


def cancel_redemption(
    engine: Engine,
    principal: Principal,
    program_id: str,
    redemption_id: str,
    *,
    reason: str | None,
    idempotency_key: str | None,
    now: datetime,
) -> Outcome:
    """Reverse a redemption: every lot gets back what the redemption took, keeping its original
    expiry (a lot already past it is expired again by the next expiry run). Raises
    ``RedemptionNotFound``, ``RedemptionAlreadyCancelled``."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        red = conn.execute(
            select(redemptions).where(
                and_(redemptions.c.id == redemption_id, redemptions.c.program_id == program_id)
            )
        ).first()
        if red is None:
            raise RedemptionNotFound(redemption_id)

        def effect() -> tuple[int, dict[str, Any]]:
            return 200, restore_redemption(
                conn, ctx, red, reason=reason, actor=principal.key_id, now=now
            )

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=None if idempotency_key is None else f"cancel:{idempotency_key}",
            client_key=idempotency_key,
            request_fingerprint=fingerprint(redemption_id, reason),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)


def get_redemption(
    engine: Engine, principal: Principal, program_id: str, redemption_id: str
) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.READ)
        red = conn.execute(
            select(redemptions, redemption_cancellations.c.cancelled_at)
            .outerjoin(
                redemption_cancellations,
                redemption_cancellations.c.redemption_id == redemptions.c.id,
            )
            .where(and_(redemptions.c.id == redemption_id, redemptions.c.program_id == program_id))
        ).first()
        if red is None:
            raise RedemptionNotFound(redemption_id)
        return {
            "id": red.id,
            "member_id": red.member_id,
            "points": red.points,
            "reason": red.reason,
            "reference": red.reference,
            "status": "cancelled" if red.cancelled_at else "completed",
            "entry_id": red.entry_id,
            "created_at": red.created_at.isoformat(),
            "cancelled_at": red.cancelled_at.isoformat() if red.cancelled_at else None,
        }

    return run_transaction(engine, work, write=False)


def adjust_points(
    engine: Engine,
    principal: Principal,
    program_id: str,
    member_ref: str,
    *,
    points: int,
    reason: str,
    reference: str | None,
    expires_at: datetime | None,
    idempotency_key: str,
    now: datetime,
) -> Outcome:
    """A manual credit (``points`` > 0, a new lot with the program's expiry unless
    ``expires_at`` is given) or debit (``points`` < 0, consumed like a redemption and never
    below zero). The acting key is recorded. Raises ``InsufficientPoints``."""
    assert points != 0
    if points > 0 and expires_at is not None and expires_at <= now:
        raise ExpiryInPast(expires_at=expires_at.isoformat())

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        member = resolve_member(conn, program_id, member_ref)

        def effect() -> tuple[int, dict[str, Any]]:
            wallet = lock_for_burn(conn, program_id, member.id, now=now)
            details: dict[str, Any] = {"reference": reference} if reference else {}
            lots_view: list[dict[str, Any]]
            if points > 0:
                credit = write_credit(
                    conn,
                    plan_credit(
                        program_id=program_id,
                        member_id=member.id,
                        debt=wallet.debt,
                        points=points,
                        kind=EntryKind.ADJUST_CREDIT,
                        from_purpose="adjustments",
                        program_version=ctx.settings.version,
                        now=now,
                        expires_at=expires_at or ctx.settings.expiry.expires_at(now),
                        reason=reason,
                        source_type="adjustment",
                        actor=principal.key_id,
                        details=details,
                    ),
                )
                entry_id = credit.entry_id
                lots_view = [
                    {
                        "lot_id": credit.lot_id,
                        "points": points,
                        "expires_at": credit.expires_at.isoformat() if credit.expires_at else None,
                    }
                ]
            else:
                lots = member_lots(conn, program_id, member.id, spendable_at=now)
                takes = plan_redemption(lots, points=-points, balance=_spendable(lots, wallet))
                entry_id = debit_lots(
                    conn,
                    program_id=program_id,
                    member_id=member.id,
                    takes=takes,
                    points=-points,
                    kind=EntryKind.ADJUST_DEBIT,
                    movement=MovementKind.ADJUST_DEBIT,
                    to_purpose="adjustments",
                    program_version=ctx.settings.version,
                    now=now,
                    reason=reason,
                    source_type="adjustment",
                    actor=principal.key_id,
                    details=details,
                )
                lots_view = _lots_view(conn, takes)
            return 201, {
                "entry_id": entry_id,
                "member_id": member.id,
                "points": points,
                "reason": reason,
                "reference": reference,
                "actor": principal.key_id,
                "lots": lots_view,
                "balance": balance_view(conn, program_id, member.id, now=now),
            }

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=f"adjust:{idempotency_key}",
            client_key=idempotency_key,
            request_fingerprint=fingerprint(
                member.id, points, reason, reference, expires_at.isoformat() if expires_at else None
            ),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)
