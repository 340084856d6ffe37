"""Row locks, taken only here and always in sorted order so two transactions never wait on
each other in opposite orders.

On PostgreSQL the wallet row of a member is the lock that serialises every change to that
member's points (lots, debt, balance). On SQLite, write transactions start with
``BEGIN IMMEDIATE`` and are already serial, and ``FOR UPDATE`` is not emitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, select, tuple_

from loyalty.adapters.db.tables import wallets
from loyalty.domain.ledger import POINTS


@dataclass(frozen=True, slots=True)
class WalletState:
    member_id: str
    balance: int
    debt: int


def lock_wallets(
    conn: Connection, program_id: str, member_ids: Iterable[str], asset: str = POINTS
) -> dict[str, WalletState]:
    ids = sorted(set(member_ids))
    if not ids:
        return {}
    stmt = (
        select(wallets.c.member_id, wallets.c.balance, wallets.c.debt)
        .where(
            and_(
                wallets.c.program_id == program_id,
                wallets.c.asset == asset,
                wallets.c.member_id.in_(ids),
            )
        )
        .order_by(wallets.c.member_id)
        .with_for_update()
    )
    rows = conn.execute(stmt).all()
    return {r.member_id: WalletState(r.member_id, r.balance, r.debt) for r in rows}


_LOCK_ONE = (
    select(wallets.c.member_id, wallets.c.balance, wallets.c.debt)
    .where(
        and_(
            wallets.c.program_id == bindparam("program_id"),
            wallets.c.member_id == bindparam("member_id"),
            wallets.c.asset == POINTS,
        )
    )
    .with_for_update()
)


def lock_wallet(conn: Connection, program_id: str, member_id: str) -> WalletState:
    """One member's wallet: a single lock needs no ordering."""
    row = conn.execute(_LOCK_ONE, {"program_id": program_id, "member_id": member_id}).first()
    if row is None:
        raise LookupError(f"member {member_id} has no wallet")
    return WalletState(row.member_id, row.balance, row.debt)


def lock_wallets_by_key(
    conn: Connection, keys: Iterable[tuple[str, str]], asset: str = POINTS
) -> dict[tuple[str, str], WalletState]:
    """Lock wallets across programs, ordered by (program_id, member_id)."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    stmt = (
        select(wallets.c.program_id, wallets.c.member_id, wallets.c.balance, wallets.c.debt)
        .where(
            and_(
                wallets.c.asset == asset,
                tuple_(wallets.c.program_id, wallets.c.member_id).in_(ordered),
            )
        )
        .order_by(wallets.c.program_id, wallets.c.member_id)
        .with_for_update()
    )
    return {
        (r.program_id, r.member_id): WalletState(r.member_id, r.balance, r.debt)
        for r in conn.execute(stmt).all()
    }
