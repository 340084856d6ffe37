"""The expiry job: set-based, idempotent, and safe to run concurrently.

Each batch picks due lots, locks the wallets of their members in sorted order, re-reads the
due lots under those locks (so a concurrent run, redemption or cancel is seen), and writes one
``expire`` entry per member for everything due. Running it twice expires nothing twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, insert, select, tuple_, update

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.locking import WalletState, lock_wallet, lock_wallets_by_key
from loyalty.adapters.db.tables import (
    journal_entries,
    lot_movements,
    lots,
    postings,
    programs,
    wallets,
)
from loyalty.adapters.ids import new_id
from loyalty.domain.ledger import POINTS, EntryKind, MovementKind, member_account, program_account
from loyalty.domain.program import ExpiryPolicy, ProgramSettings

EXPIRY_BATCH_DEFAULT = 2_000
EXPIRY_BATCH_MAX = 50_000


@dataclass(frozen=True, slots=True)
class ExpiryReport:
    lots_expired: int
    points_expired: int
    members_touched: int
    batches: int


def _expire_batch(
    conn: Connection, *, now: datetime, batch_size: int
) -> tuple[int, int, int] | None:
    due_members = conn.execute(
        select(lots.c.program_id, lots.c.member_id)
        .where(and_(lots.c.expires_at <= now, lots.c.remaining > 0))
        .group_by(lots.c.program_id, lots.c.member_id)
        .order_by(lots.c.program_id, lots.c.member_id)
        .limit(batch_size)
    ).all()
    if not due_members:
        return None
    keys = [(r.program_id, r.member_id) for r in due_members]
    lock_wallets_by_key(conn, keys)
    # May expire nothing if a burn expired these lots while this waited for the locks; that is
    # not the end of the run, which ends only when no member has a due lot.
    return expire_locked(conn, keys, now=now)


_DUE_FOR_MEMBER = (
    select(lots.c.id)
    .where(
        and_(
            lots.c.program_id == bindparam("program_id"),
            lots.c.member_id == bindparam("member_id"),
            lots.c.expires_at <= bindparam("now"),
            lots.c.remaining > 0,
        )
    )
    .limit(1)
)


def extend_on_activity(
    conn: Connection,
    settings: ProgramSettings,
    program_id: str,
    member_id: str,
    *,
    at: datetime,
    now: datetime,
) -> None:
    """Under the ``inactivity`` policy, a qualifying activity at ``at`` pushes the expiry of
    every live lot of the member to ``at`` plus the policy's days. Lots already past their
    expiry stay expired (the member was inactive too long), and no expiry is ever shortened."""
    if settings.expiry.policy is not ExpiryPolicy.INACTIVITY:
        return
    until = settings.expiry.expires_at(at)
    conn.execute(
        update(lots)
        .where(
            and_(
                lots.c.program_id == program_id,
                lots.c.member_id == member_id,
                lots.c.remaining > 0,
                lots.c.expires_at > now,
                lots.c.expires_at < until,
            )
        )
        .values(expires_at=until)
    )


def lock_for_burn(
    conn: Connection, program_id: str, member_id: str, *, now: datetime
) -> WalletState:
    """Lock a member's wallet and expire their overdue lots, so what follows (a burn, a debit,
    a return) never spends points already past their expiry. Returns the wallet as it is now."""
    wallet = lock_wallet(conn, program_id, member_id)
    if expire_member_now(conn, program_id, member_id, now=now):
        wallet = lock_wallet(conn, program_id, member_id)
    return wallet


def expire_member_now(conn: Connection, program_id: str, member_id: str, *, now: datetime) -> int:
    """Expire one member's overdue lots inside the caller's transaction (the caller holds the
    member's wallet lock), so a burn never spends points that are already past their expiry.
    Returns the points expired."""
    params = {"program_id": program_id, "member_id": member_id, "now": now}
    if conn.execute(_DUE_FOR_MEMBER, params).first() is None:
        return 0
    return expire_locked(conn, [(program_id, member_id)], now=now, trigger="on_burn")[1]


def expire_locked(
    conn: Connection, keys: list[tuple[str, str]], *, now: datetime, trigger: str = "job"
) -> tuple[int, int, int]:
    """Expire the due lots of members whose wallets the caller has locked. ``trigger`` is
    recorded as the entry's source: ``job`` for the expiry run, ``on_burn`` when a redemption,
    debit or return expired them first."""
    due = conn.execute(
        select(lots.c.id, lots.c.program_id, lots.c.member_id, lots.c.remaining)
        .where(
            and_(
                lots.c.expires_at <= now,
                lots.c.remaining > 0,
                tuple_(lots.c.program_id, lots.c.member_id).in_(keys),
            )
        )
        .order_by(lots.c.program_id, lots.c.member_id, lots.c.id)
    ).all()
    if not due:
        return 0, 0, 0
    versions: dict[str, int] = {
        r.id: int(r.current_version)
        for r in conn.execute(
            select(programs.c.id, programs.c.current_version).where(
                programs.c.id.in_({r.program_id for r in due})
            )
        ).all()
    }
    by_member: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for r in due:
        by_member[(r.program_id, r.member_id)].append((r.id, int(r.remaining)))
    entry_rows: list[dict[str, Any]] = []
    posting_rows: list[dict[str, Any]] = []
    movement_rows: list[dict[str, Any]] = []
    wallet_rows: list[dict[str, Any]] = []
    for (program_id, member_id), member_lots in by_member.items():
        entry_id = new_id("ent")
        total = sum(points for _, points in member_lots)
        entry_rows.append(
            {
                "id": entry_id,
                "program_id": program_id,
                "member_id": member_id,
                "kind": EntryKind.EXPIRE.value,
                "program_version": versions[program_id],
                "reason": "points expired",
                "source_type": "expiry",
                "source_id": trigger,
                "reverses_entry_id": None,
                "actor": None,
                "created_at": now,
                "details": {"lots": len(member_lots)},
            }
        )
        posting_rows.append(
            {
                "entry_id": entry_id,
                "leg": 0,
                "program_id": program_id,
                "member_id": member_id,
                "account": member_account(member_id),
                "asset": POINTS,
                "amount": -total,
            }
        )
        posting_rows.append(
            {
                "entry_id": entry_id,
                "leg": 1,
                "program_id": program_id,
                "member_id": None,
                "account": program_account(program_id, "expired"),
                "asset": POINTS,
                "amount": total,
            }
        )
        movement_rows.extend(
            {
                "entry_id": entry_id,
                "lot_id": lot_id,
                "program_id": program_id,
                "member_id": member_id,
                "kind": MovementKind.EXPIRE.value,
                "amount": -points,
            }
            for lot_id, points in member_lots
        )
        wallet_rows.append({"p": program_id, "m": member_id, "delta": total, "now": now})
    conn.execute(insert(journal_entries), entry_rows)
    conn.execute(insert(postings), posting_rows)
    conn.execute(insert(lot_movements), movement_rows)
    conn.execute(
        update(lots).where(lots.c.id == bindparam("lid")).values(remaining=0),
        [{"lid": r.id} for r in due],
    )
    conn.execute(
        update(wallets)
        .where(
            and_(
                wallets.c.program_id == bindparam("p"),
                wallets.c.member_id == bindparam("m"),
                wallets.c.asset == POINTS,
            )
        )
        .values(balance=wallets.c.balance - bindparam("delta"), updated_at=bindparam("now")),
        wallet_rows,
    )
    return len(due), sum(int(r.remaining) for r in due), len(by_member)


def expire_due_lots(
    engine: Engine,
    *,
    now: datetime,
    batch_size: int = EXPIRY_BATCH_DEFAULT,
    on_batch: Callable[[int, int], None] | None = None,
) -> ExpiryReport:
    """Expire every lot whose ``expires_at`` is at or before ``now``, one transaction per batch
    of members. ``on_batch(lots, points)`` reports progress."""
    assert 1 <= batch_size <= EXPIRY_BATCH_MAX
    lots_total = points_total = members_total = batches = 0
    while True:
        result = run_transaction(
            engine, lambda conn: _expire_batch(conn, now=now, batch_size=batch_size)
        )
        if result is None:
            break
        n_lots, n_points, n_members = result
        if n_lots == 0:
            continue
        batches += 1
        lots_total += n_lots
        points_total += n_points
        members_total += n_members
        if on_batch is not None:
            on_batch(n_lots, n_points)
    return ExpiryReport(lots_total, points_total, members_total, batches)
