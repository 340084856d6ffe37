"""The few ways points move, shared by every use case that moves them. Each runs inside the
caller's transaction, after the caller has locked the member's wallet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from loyalty.adapters.db.ledger_store import (
    EntryRecord,
    insert_lots,
    lot_row,
    move_lots,
    write_entry,
)
from loyalty.adapters.ids import new_id
from loyalty.domain.ledger import (
    POINTS,
    EntryKind,
    LotTake,
    MovementKind,
    Posting,
    member_account,
    plan_earn,
    program_account,
)


@dataclass(frozen=True, slots=True)
class CreditedLot:
    lot_id: str
    points: int
    available_at: datetime | None
    debt_repaid: int


@dataclass(frozen=True, slots=True)
class Credit:
    entry_id: str
    lots: tuple[CreditedLot, ...]
    points: int
    debt_repaid: int
    expires_at: datetime | None

    @property
    def lot_id(self) -> str:
        """The first lot: the one spendable soonest."""
        return self.lots[0].lot_id


@dataclass(frozen=True, slots=True)
class CreditRows:
    """What crediting points writes: the entry with its posting and debt change, and the new
    lots (each already net of the debt it repays) with their repayment movements."""

    entry: EntryRecord
    postings: list[Posting]
    debt_delta: dict[str, int] | None
    lots: list[dict[str, Any]]
    movements: list[dict[str, Any]]
    credit: Credit


def plan_credit(
    *,
    program_id: str,
    member_id: str,
    debt: int,
    points: int,
    kind: EntryKind,
    from_purpose: str,
    program_version: int,
    now: datetime,
    expires_at: datetime | None,
    earned_at: datetime | None = None,
    available_at: datetime | None = None,
    held: Sequence[tuple[int, datetime | None]] | None = None,
    reason: str | None = None,
    source_type: str | None = None,
    source_id: str | None = None,
    actor: str | None = None,
    details: dict[str, Any] | None = None,
    asset: str = POINTS,
) -> CreditRows:
    """Credit ``points`` (minor units for ``asset`` CASH) in one journal entry, earned at
    ``earned_at`` (default ``now``), for a member who owes ``debt``: the rows, not yet written
    (:func:`write_credit` writes them; a batch writes many runs' rows at once).

    By default the points make one lot, spendable from ``available_at`` (default at once).
    ``held`` splits them instead into one lot per ``(points, available_at)`` portion (rules
    with different pending periods); the portions must add up to ``points``. A debt left by an
    earlier return is repaid first, out of the lots spendable soonest."""
    assert points > 0
    portions = [(p, at) for p, at in (held or [(points, available_at)]) if p > 0]
    assert sum(p for p, _ in portions) == points
    portions.sort(key=lambda portion: (portion[1] is not None, portion[1] or now))
    plan = plan_earn(points, debt=debt)
    entry_id = new_id("ent")
    entry = EntryRecord(
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
    )
    posting = Posting(
        program_account(program_id, from_purpose, asset),
        member_account(member_id, asset),
        points,
        asset,
    )
    lots: list[dict[str, Any]] = []
    movements: list[dict[str, Any]] = []
    credited: list[CreditedLot] = []
    owed = plan.debt_repaid
    for portion, portion_available_at in portions:
        lot_id = new_id("lot")
        repaid = min(owed, portion)
        owed -= repaid
        lots.append(
            lot_row(
                lot_id=lot_id,
                program_id=program_id,
                member_id=member_id,
                entry_id=entry_id,
                amount=portion,
                remaining=portion - repaid,
                earned_at=earned_at or now,
                expires_at=expires_at,
                available_at=portion_available_at,
                asset=asset,
            )
        )
        if repaid:
            movements.append(
                {
                    "entry_id": entry_id,
                    "lot_id": lot_id,
                    "program_id": program_id,
                    "member_id": member_id,
                    "kind": MovementKind.DEBT_REPAYMENT.value,
                    "amount": -repaid,
                }
            )
        credited.append(CreditedLot(lot_id, portion, portion_available_at, repaid))
    return CreditRows(
        entry,
        [posting],
        {member_id: -plan.debt_repaid} if plan.debt_repaid else None,
        lots,
        movements,
        Credit(entry_id, tuple(credited), points, plan.debt_repaid, expires_at),
    )


def write_credit(conn: Connection, rows: CreditRows) -> Credit:
    """Write what :func:`plan_credit` planned, in the caller's transaction (under the wallet
    lock it read the debt under)."""
    asset = rows.postings[0].asset
    write_entry(conn, rows.entry, rows.postings, debt_delta=rows.debt_delta, debt_asset=asset)
    insert_lots(conn, rows.lots, rows.movements)
    return rows.credit


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
    asset: str = POINTS,
) -> str:
    """Debit ``points`` (or minor units of ``asset``) from the member: ``takes`` from lots plus
    ``debt_added`` as debt."""
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
        [
            Posting(
                member_account(member_id, asset),
                program_account(program_id, to_purpose, asset),
                points,
                asset,
            )
        ],
        debt_delta={member_id: debt_added} if debt_added else None,
        debt_asset=asset,
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
