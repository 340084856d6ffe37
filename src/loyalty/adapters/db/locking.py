"""Row locks, taken only here and always in sorted order so two transactions never wait on
each other in opposite orders.

On PostgreSQL the wallet row of a member is the lock that serialises every change to that
member's points (lots, debt, balance). On SQLite, write transactions start with
``BEGIN IMMEDIATE`` and are already serial, and ``FOR UPDATE`` is not emitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, select, text, tuple_

from loyalty.adapters.db.keyed import KeyedRead, each_key
from loyalty.adapters.db.reads import Read
from loyalty.adapters.db.tables import wallets
from loyalty.domain.ledger import POINTS


@dataclass(frozen=True, slots=True)
class WalletState:
    member_id: str
    balance: int
    debt: int


def lock_wallets(
    conn: Connection,
    program_id: str,
    member_ids: Iterable[str],
    asset: str = POINTS,
    *,
    skip_locked: bool = False,
) -> dict[str, WalletState]:
    """Lock the members' wallets, in member order. ``skip_locked``: without waiting for a
    wallet another transaction holds; that member is left out of the answer (on SQLite, where
    the write turn is the only lock, nothing is left out)."""
    ids = sorted(set(member_ids))
    if not ids:
        return {}
    params = {"program_id": program_id, "asset": asset, "member_ids": ids}
    read = _SKIP_LOCKED if skip_locked else _LOCK_MANY
    return wallets_locked(conn.execute(read.on(conn, ids), params).all())


def lock_wallets_read(
    conn: Connection, program_id: str, member_ids: Iterable[str], *, skip_locked: bool = False
) -> Read:
    """``lock_wallets``'s statement (points wallets) for ``read_together`` (``member_ids`` not
    empty): the reads after it in the same call see the wallets it locked as their holder
    does. Its rows go to ``wallets_locked``."""
    params = {"program_id": program_id, "asset": POINTS, "member_ids": sorted(set(member_ids))}
    return (_SKIP_LOCKED if skip_locked else _LOCK_MANY).together(conn), params


def wallets_locked(rows: Iterable[Any]) -> dict[str, WalletState]:
    """``lock_wallets``'s answer from its statement's rows."""
    return {r.member_id: WalletState(r.member_id, r.balance, r.debt) for r in rows}


_OF_PROGRAM = select(wallets.c.member_id, wallets.c.balance, wallets.c.debt).where(
    and_(wallets.c.program_id == bindparam("program_id"), wallets.c.asset == bindparam("asset"))
)
_LOCK_MANY = KeyedRead(
    in_list=_OF_PROGRAM.where(wallets.c.member_id.in_(bindparam("member_ids", expanding=True)))
    .order_by(wallets.c.member_id)
    .with_for_update(),
    # Each wallet locked as its member id comes out of the sorted list: in member order.
    each_key=each_key(
        lambda member_id: _OF_PROGRAM.where(wallets.c.member_id == member_id).with_for_update(),
        keys="member_ids",
    ),
)


_SKIP_LOCKED = KeyedRead(
    in_list=_OF_PROGRAM.where(wallets.c.member_id.in_(bindparam("member_ids", expanding=True)))
    .order_by(wallets.c.member_id)
    .with_for_update(skip_locked=True),
    each_key=each_key(
        lambda member_id: _OF_PROGRAM.where(wallets.c.member_id == member_id).with_for_update(
            skip_locked=True
        ),
        keys="member_ids",
    ),
)


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


def lock_second_wallet(
    conn: Connection, program_id: str, member_id: str, asset: str, *, now: datetime
) -> WalletState:
    """A member's wallet of another asset (cashback), created empty on first use. Taken only
    by a caller that already holds the member's points wallet (``lock_wallet``): that lock is
    what serialises every change to the member, so the order points-then-other always holds
    and two transactions never both create the row."""
    assert asset != POINTS
    params = {"program_id": program_id, "member_id": member_id, "asset": asset}
    row = conn.execute(_LOCK_ASSET, params).first()
    if row is None:
        conn.execute(insert(wallets).values(**params, balance=0, debt=0, updated_at=now))
        return WalletState(member_id, 0, 0)
    return WalletState(row.member_id, row.balance, row.debt)


_LOCK_ASSET = (
    select(wallets.c.member_id, wallets.c.balance, wallets.c.debt)
    .where(
        and_(
            wallets.c.program_id == bindparam("program_id"),
            wallets.c.member_id == bindparam("member_id"),
            wallets.c.asset == bindparam("asset"),
        )
    )
    .with_for_update()
)


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


_LOCK_KEYS_PG = text(
    """
    SELECT w.program_id, w.member_id
    FROM wallets AS w
    JOIN unnest(CAST(:program_ids AS text[]), CAST(:member_ids AS text[]))
         AS k (program_id, member_id)
      ON w.program_id = k.program_id AND w.member_id = k.member_id
    WHERE w.asset = :asset
    ORDER BY w.program_id, w.member_id
    FOR UPDATE OF w
    """
)


def lock_wallet_keys(
    conn: Connection, keys: Iterable[tuple[str, str]], asset: str = POINTS
) -> set[tuple[str, str]]:
    """Lock many wallets across programs, ordered by (program_id, member_id), for set-based
    jobs; returns the keys locked. On PostgreSQL the keys travel as two arrays joined to
    ``wallets``, so the statement costs the same to plan for 10 or 10,000 members (a row-value
    ``IN`` list of thousands of pairs spends most of its time in the planner). PostgreSQL locks
    the rows as the sorted rows leave the sort, so the order holds."""
    ordered = sorted(set(keys))
    if not ordered:
        return set()
    if conn.dialect.name != "postgresql":
        return set(lock_wallets_by_key(conn, ordered, asset))
    rows = conn.execute(
        _LOCK_KEYS_PG,
        {
            "program_ids": [p for p, _ in ordered],
            "member_ids": [m for _, m in ordered],
            "asset": asset,
        },
    ).all()
    return {(r.program_id, r.member_id) for r in rows}


def lock_wallet_range(
    conn: Connection, program_id: str, *, after_member: str, last_member: str, asset: str = POINTS
) -> int:
    """Lock the wallets of a program's members after ``after_member`` up to ``last_member``, in
    member order, with one statement: for set-based jobs that change a batch of members in
    place (a tier review), so no event or assignment on any of them runs in between. Returns
    how many were locked."""
    stmt = (
        select(wallets.c.member_id)
        .where(
            and_(
                wallets.c.program_id == program_id,
                wallets.c.asset == asset,
                wallets.c.member_id > after_member,
                wallets.c.member_id <= last_member,
            )
        )
        .order_by(wallets.c.member_id)
        .with_for_update()
    )
    return len(conn.execute(stmt).all())
