"""The few ways points move, shared by every use case that moves them. Each runs inside the
caller's transaction, after the caller has locked the member's wallet."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from loyalty.adapters.db.ledger_store import EntryRecord, insert_lot, move_lots, write_entry
from loyalty.adapters.db.locking import WalletState
from loyalty.adapters.ids import new_id
from loyalty.domain.ledger import (
    EntryKind,
    LotTake,
    MovementKind,
    Posting,
    member_account,
    plan_earn,
    program_account,
)


@dataclass(frozen=True, slots=True)
class Credit:
    entry_id: str
    lot_id: str
    points: int
    debt_repaid: int
    expires_at: datetime | None


def credit_points(
    conn: Connection,
    *,
    program_id: str,
    member_id: str,
    wallet: WalletState,
    points: int,
    kind: EntryKind,
    from_purpose: str,
    program_version: int,
    now: datetime,
    expires_at: datetime | None,
    earned_at: datetime | None = None,
    available_at: datetime | None = None,
    reason: str | None = None,
    source_type: str | None = None,
    source_id: str | None = None,
    actor: str | None = None,
    details: dict[str, Any] | None = None,
) -> Credit:
    """Credit ``points`` as one new lot, earned at ``earned_at`` (default ``now``) and spendable
    from ``available_at`` (default at once). A debt left by an earlier return is repaid first,
    out of the new lot."""
    assert points > 0
    plan = plan_earn(points, debt=wallet.debt)
    entry_id = new_id("ent")
    write_entry(
        conn,
        EntryRecord(
            entry_id=entry_id,
            program_id=program_id,
            member_id=member_id,
            kind=kind,
            program_version=program_version,
            created_at=now,
            reason=reason,
            source_type=source_type,
            source_id=source_id,
            actor=actor,
            details={**(details or {}), "debt_repaid": plan.debt_repaid}
            if plan.debt_repaid
            else (details or {}),
        ),
        [Posting(program_account(program_id, from_purpose), member_account(member_id), points)],
        debt_delta={member_id: -plan.debt_repaid} if plan.debt_repaid else None,
    )
    lot_id = new_id("lot")
    insert_lot(
        conn,
        lot_id=lot_id,
        program_id=program_id,
        member_id=member_id,
        entry_id=entry_id,
        amount=points,
        remaining=points,
        earned_at=earned_at or now,
        expires_at=expires_at,
        available_at=available_at,
    )
    if plan.debt_repaid:
        move_lots(
            conn,
            entry_id=entry_id,
            program_id=program_id,
            member_id=member_id,
            kind=MovementKind.DEBT_REPAYMENT,
            changes=[(lot_id, -plan.debt_repaid)],
        )
    return Credit(entry_id, lot_id, points, plan.debt_repaid, expires_at)


def debit_lots(
    conn: Connection,
    *,
    program_id: str,
    member_id: str,
    takes: list[LotTake],
    points: int,
    kind: EntryKind,
    movement: MovementKind,
    to_purpose: str,
    program_version: int,
    now: datetime,
    debt_added: int = 0,
    reason: str | None = None,
    source_type: str | None = None,
    source_id: str | None = None,
    reverses_entry_id: str | None = None,
    actor: str | None = None,
    details: dict[str, Any] | None = None,
) -> str:
    """Debit ``points`` from the member: ``takes`` from lots plus ``debt_added`` as debt."""
    assert points == sum(t.points for t in takes) + debt_added and points > 0
    entry_id = new_id("ent")
    write_entry(
        conn,
        EntryRecord(
            entry_id=entry_id,
            program_id=program_id,
            member_id=member_id,
            kind=kind,
            program_version=program_version,
            created_at=now,
            reason=reason,
            source_type=source_type,
            source_id=source_id,
            reverses_entry_id=reverses_entry_id,
            actor=actor,
            details=details or {},
        ),
        [Posting(member_account(member_id), program_account(program_id, to_purpose), points)],
        debt_delta={member_id: debt_added} if debt_added else None,
    )
    move_lots(
        conn,
        entry_id=entry_id,
        program_id=program_id,
        member_id=member_id,
        kind=movement,
        changes=[(t.lot_id, -t.points) for t in takes],
    )
    return entry_id
