"""Writing and reading the ledger with SQLAlchemy Core.

``write_entry`` is the only function that inserts postings. It checks the entry balances before
writing, and updates each member wallet it touches in the same statement batch, so a wallet is
always the sum of its postings (the audit proves it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update

from loyalty.adapters.db.bulk import execute_raw, insert_rows
from loyalty.adapters.db.tables import (
    LOT_HAS_POINTS,
    journal_entries,
    lot_movements,
    lots,
    postings,
    wallets,
)
from loyalty.domain.ledger import POINTS, EntryKind, Lot, MovementKind, Posting, account_deltas
from loyalty.domain.ledger import assert_balanced as _assert_balanced

# Statements on the earn path are built once: building and cache-keying a Core statement costs
# more than executing it.
_MOVE_WALLET = (
    update(wallets)
    .where(
        and_(
            wallets.c.program_id == bindparam("w_program_id"),
            wallets.c.member_id == bindparam("w_member_id"),
            wallets.c.asset == bindparam("w_asset"),
        )
    )
    .values(
        balance=wallets.c.balance + bindparam("balance_change"),
        debt=wallets.c.debt + bindparam("debt_change"),
        updated_at=bindparam("w_updated_at"),
    )
)
_MOVE_LOT = (
    update(lots)
    .where(lots.c.id == bindparam("m_lot_id"))
    .values(remaining=lots.c.remaining + bindparam("m_amount"))
)
_MEMBER_LOTS = select(lots.c.id, lots.c.remaining, lots.c.earned_at, lots.c.expires_at).where(
    and_(
        lots.c.program_id == bindparam("program_id"),
        lots.c.member_id == bindparam("member_id"),
        lots.c.asset == bindparam("asset"),
        LOT_HAS_POINTS,
    )
)
_ENTRY_LOTS = _MEMBER_LOTS.where(lots.c.entry_id == bindparam("entry_id"))
_SPENDABLE_LOTS = _MEMBER_LOTS.where(
    or_(lots.c.available_at.is_(None), lots.c.available_at <= bindparam("spendable_at"))
)


@dataclass(frozen=True, slots=True)
class EntryRecord:
    entry_id: str
    program_id: str
    member_id: str | None
    kind: EntryKind
    program_version: int
    created_at: datetime
    reason: str | None = None
    source_type: str | None = None
    source_id: str | None = None
    reverses_entry_id: str | None = None
    actor: str | None = None
    details: dict[str, Any] | None = None


def member_of_account(account: str) -> str | None:
    if account.startswith("member:"):
        return account.split(":", 2)[1]
    return None


def write_entry(
    conn: Connection,
    entry: EntryRecord,
    entry_postings: Sequence[Posting],
    *,
    debt_delta: dict[str, int] | None = None,
    debt_asset: str = POINTS,
) -> dict[str, int]:
    """Insert a journal entry and its postings, and move member wallets by the same amounts.

    Returns the net change of points per member. ``debt_delta`` changes members' debt in the
    wallet of ``debt_asset`` in the same update.
    """
    return write_entries(conn, [(entry, entry_postings, debt_delta)], debt_asset=debt_asset)


def write_entries(
    conn: Connection,
    entries: Sequence[tuple[EntryRecord, Sequence[Posting], dict[str, int] | None]],
    *,
    debt_asset: str = POINTS,
) -> dict[str, int]:
    """``write_entry`` for many entries of one program at once: each entry is checked to
    balance, each wallet is moved once, in member order, by the sum of what the entries change
    on it (the caller holds the wallets' locks), and the entries and their postings are
    inserted with one statement each. Returns the net change of points per member."""
    planned = plan_entries(entries, debt_asset=debt_asset)
    move_wallets(conn, planned)
    insert_entries(conn, planned)
    return planned.net


@dataclass(frozen=True)
class PlannedEntries:
    """What ``write_entries`` writes: rows of entries and postings, and wallet moves."""

    entry_rows: list[dict[str, Any]]
    legs: list[dict[str, Any]]
    moves: list[dict[str, Any]]
    net: dict[str, int]
    """The net change of points per member."""


def plan_entries(
    entries: Sequence[tuple[EntryRecord, Sequence[Posting], dict[str, int] | None]],
    *,
    debt_asset: str = POINTS,
) -> PlannedEntries:
    """Check each entry balances and build ``write_entries``'s rows, for a caller that moves
    the wallets (``send_wallet_moves``) apart from inserting the rows (``insert_entries``);
    both can go in one ``pipelined`` block."""
    entry_rows: list[dict[str, Any]] = []
    legs: list[dict[str, Any]] = []
    wallet_deltas: dict[tuple[str, str], int] = defaultdict(int)
    debts: dict[tuple[str, str], int] = defaultdict(int)
    program_id = entries[0][0].program_id if entries else ""
    for entry, entry_postings, debt_delta in entries:
        assert entry.program_id == program_id
        _assert_balanced(entry_postings)
        deltas = account_deltas(entry_postings)
        entry_rows.append(
            {
                "id": entry.entry_id,
                "program_id": entry.program_id,
                "member_id": entry.member_id,
                "kind": entry.kind.value,
                "program_version": entry.program_version,
                "reason": entry.reason,
                "source_type": entry.source_type,
                "source_id": entry.source_id,
                "reverses_entry_id": entry.reverses_entry_id,
                "actor": entry.actor,
                "created_at": entry.created_at,
                "details": entry.details or {},
            }
        )
        legs.extend(
            {
                "entry_id": entry.entry_id,
                "leg": leg,
                "program_id": entry.program_id,
                "member_id": member_of_account(account),
                "account": account,
                "asset": asset,
                "amount": amount,
            }
            for leg, ((account, asset), amount) in enumerate(sorted(deltas.items()))
            if amount != 0
        )
        for (account, asset), amount in deltas.items():
            member = member_of_account(account)
            if member is not None:
                wallet_deltas[(member, asset)] += amount
        for member, debt in (debt_delta or {}).items():
            debts[(member, debt_asset)] += debt
    if not entry_rows:
        return PlannedEntries([], [], [], {})
    updated_at = max(entry.created_at for entry, _, _ in entries)
    moves = [
        {
            "w_program_id": program_id,
            "w_member_id": member_id,
            "w_asset": asset,
            "balance_change": wallet_deltas.get((member_id, asset), 0),
            "debt_change": debts.get((member_id, asset), 0),
            "w_updated_at": updated_at,
        }
        for member_id, asset in sorted(set(wallet_deltas) | set(debts))
        if wallet_deltas.get((member_id, asset), 0) or debts.get((member_id, asset), 0)
    ]
    net = {m: d for (m, asset), d in wallet_deltas.items() if asset == POINTS}
    return PlannedEntries(entry_rows, legs, moves, net)


def move_wallets(conn: Connection, planned: PlannedEntries) -> None:
    """Move each wallet of ``planned`` once, and check every one of them was there."""
    send_wallet_moves(conn, planned).check()


_PG_MOVE_WALLETS = """
UPDATE wallets AS w
SET balance = w.balance + v.balance_change, debt = w.debt + v.debt_change, updated_at = $1
FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[])
    AS v(member_id, asset, balance_change, debt_change)
WHERE w.program_id = $6 AND w.member_id = v.member_id AND w.asset = v.asset
"""
"""Every wallet move of one program in one statement (arrays of the same length)."""


@dataclass(frozen=True, slots=True)
class WalletMoves:
    """Wallet moves sent; ``check`` (once they are answered) that every wallet was there."""

    expected: int
    counted: Any
    """What holds the row count: psycopg's cursor (read once it is answered), or the number
    itself (-1: a driver that can't count the rows of many statements)."""

    def check(self) -> None:
        rowcount = self.counted if isinstance(self.counted, int) else self.counted.rowcount
        if rowcount == -1 and isinstance(self.counted, int):
            return
        assert rowcount == self.expected, (
            f"{self.expected - rowcount} of {self.expected} wallets are missing"
        )


def send_wallet_moves(conn: Connection, planned: PlannedEntries) -> WalletMoves:
    """Move each wallet of ``planned`` once: on PostgreSQL in one statement, which may be sent
    inside a ``pipelined`` block (call ``check`` after the block); elsewhere one statement
    per wallet, checked as it goes."""
    moves = planned.moves
    if not moves:
        return WalletMoves(0, 0)
    if conn.dialect.name == "postgresql":
        (program_id,) = {move["w_program_id"] for move in moves}
        (updated_at,) = {move["w_updated_at"] for move in moves}
        params = [
            updated_at,
            [move["w_member_id"] for move in moves],
            [move["w_asset"] for move in moves],
            [move["balance_change"] for move in moves],
            [move["debt_change"] for move in moves],
            program_id,
        ]
        return WalletMoves(len(moves), execute_raw(conn, _PG_MOVE_WALLETS, params))
    result = conn.execute(_MOVE_WALLET, moves)
    sane = len(moves) == 1 or conn.dialect.supports_sane_multi_rowcount
    return WalletMoves(len(moves), result.rowcount if sane else -1)


def insert_entries(conn: Connection, planned: PlannedEntries) -> None:
    """Insert the entries and postings of ``planned``, one statement each."""
    if planned.entry_rows:
        insert_rows(conn, journal_entries, planned.entry_rows)
        insert_rows(conn, postings, planned.legs)


def lot_row(
    *,
    lot_id: str,
    program_id: str,
    member_id: str,
    entry_id: str,
    amount: int,
    remaining: int,
    earned_at: datetime,
    expires_at: datetime | None,
    available_at: datetime | None = None,
    asset: str = POINTS,
) -> dict[str, Any]:
    return {
        "id": lot_id,
        "program_id": program_id,
        "member_id": member_id,
        "entry_id": entry_id,
        "asset": asset,
        "amount": amount,
        "remaining": remaining,
        "earned_at": earned_at,
        "expires_at": expires_at,
        "available_at": available_at,
    }


def insert_lots(
    conn: Connection, lot_rows: Sequence[dict[str, Any]], movements: Sequence[dict[str, Any]]
) -> None:
    """Many new lots (``lot_row``s) in one statement, each already holding what is left after
    ``movements`` (the debt repayments made from them, as ``lot_movements`` rows): the same
    rows as inserting the lots whole and then moving them, in two statements instead of
    three per lot."""
    if lot_rows:
        insert_rows(conn, lots, lot_rows)
    if movements:
        insert_rows(conn, lot_movements, movements)


def move_lots(
    conn: Connection,
    *,
    entry_id: str,
    program_id: str,
    member_id: str,
    kind: MovementKind,
    changes: Iterable[tuple[str, int]],
) -> None:
    """Record signed changes to lots (negative: points leave the lot) and apply them to
    ``lots.remaining``. The CHECK on ``lots`` refuses a lot below zero or above its amount."""
    rows = [
        {
            "entry_id": entry_id,
            "lot_id": lot_id,
            "program_id": program_id,
            "member_id": member_id,
            "kind": kind.value,
            "amount": amount,
        }
        for lot_id, amount in changes
        if amount != 0
    ]
    if not rows:
        return
    insert_rows(conn, lot_movements, rows)
    conn.execute(_MOVE_LOT, [{"m_lot_id": r["lot_id"], "m_amount": r["amount"]} for r in rows])


def member_lots(
    conn: Connection,
    program_id: str,
    member_id: str,
    *,
    entry_id: str | None = None,
    spendable_at: datetime | None = None,
    asset: str = POINTS,
) -> list[Lot]:
    """Lots of one of a member's wallets that still hold something: all of them, only those an
    entry created, or only those out of their pending period at ``spendable_at``."""
    params = {"program_id": program_id, "member_id": member_id, "asset": asset}
    if entry_id is not None:
        rows = conn.execute(_ENTRY_LOTS, {**params, "entry_id": entry_id}).all()
    elif spendable_at is not None:
        rows = conn.execute(_SPENDABLE_LOTS, {**params, "spendable_at": spendable_at}).all()
    else:
        rows = conn.execute(_MEMBER_LOTS, params).all()
    return [Lot(r.id, r.remaining, r.earned_at, r.expires_at) for r in rows]


def lot_expiries(conn: Connection, lot_ids: Sequence[str]) -> dict[str, datetime | None]:
    if not lot_ids:
        return {}
    rows = conn.execute(select(lots.c.id, lots.c.expires_at).where(lots.c.id.in_(lot_ids))).all()
    return {r.id: r.expires_at for r in rows}


def expired_from_entry(conn: Connection, entry_id: str) -> int:
    """What expired, unspent, from the lots an entry created."""
    return int(
        conn.execute(
            select(func.coalesce(func.sum(-lot_movements.c.amount), 0))
            .select_from(lot_movements.join(lots, lots.c.id == lot_movements.c.lot_id))
            .where(
                and_(
                    lots.c.entry_id == entry_id,
                    lot_movements.c.kind == MovementKind.EXPIRE.value,
                )
            )
        ).scalar_one()
    )
