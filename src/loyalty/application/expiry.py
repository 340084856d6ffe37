"""The expiry job: set-based, idempotent, and safe to run concurrently.

The job walks the due lots once, through the partial index ``ix_lots_due`` (lots with points
left and an expiry), in windows of ``(expires_at, program_id, member_id)``, so it never reads a
lot it already expired. Each batch of members from a window locks their wallets in sorted
order, re-reads their due lots under those locks (so a concurrent run, redemption or cancel is
seen), and writes one ``expire`` entry per member for everything due. Running it twice expires
nothing twice.

On PostgreSQL a batch is two statements (the lock, then one statement of data-modifying CTEs
that empties the lots and writes the movements, entries, postings and wallet changes from the
same rows); elsewhere the same rows are written from Python, row by row.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    insert,
    select,
    text,
    tuple_,
    update,
)

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.locking import WalletState, lock_wallet, lock_wallet_keys
from loyalty.adapters.db.tables import (
    LOT_HAS_POINTS,
    journal_entries,
    lot_movements,
    lots,
    postings,
    programs,
    wallets,
)
from loyalty.adapters.ids import new_id
from loyalty.domain.ledger import (
    CASH,
    POINTS,
    EntryKind,
    MovementKind,
    member_account,
    program_account,
)
from loyalty.domain.program import ExpiryPolicy, ProgramSettings

EXPIRY_BATCH_DEFAULT = 2_000
EXPIRY_BATCH_MAX = 50_000
EXPIRY_WORKERS_DEFAULT = 2
EXPIRY_WORKERS_MAX = 8


Counts = tuple[int, int, int]
"""Lots expired, points expired (cashback lots count as lots, not points), members touched."""

_EXPIRED_REASON = {POINTS: "points expired", CASH: "cashback expired"}


@dataclass(frozen=True, slots=True)
class ExpiryReport:
    lots_expired: int
    points_expired: int
    members_touched: int
    batches: int


EXPIRY_WINDOW_ROWS = 100_000
"""Due ``(expires_at, program_id, member_id)`` keys read per window: what bounds the job's
memory, whatever the number of due lots."""

_Cursor = tuple[datetime, str, str]


def _due_window(
    conn: Connection, *, now: datetime, after: _Cursor | None, rows_max: int
) -> list[tuple[datetime, str, str]]:
    """The next ``rows_max`` distinct due keys after ``after``, in index order. An index-only
    walk of ``ix_lots_due``: lots already expired or spent are not in it."""
    conditions = [
        LOT_HAS_POINTS,
        lots.c.expires_at.is_not(None),
        lots.c.expires_at <= now,
    ]
    if after is not None:
        conditions.append(
            tuple_(lots.c.expires_at, lots.c.program_id, lots.c.member_id)
            > tuple_(
                bindparam(None, after[0], type_=lots.c.expires_at.type),
                bindparam(None, after[1], type_=lots.c.program_id.type),
                bindparam(None, after[2], type_=lots.c.member_id.type),
            )
        )
    rows = conn.execute(
        select(lots.c.expires_at, lots.c.program_id, lots.c.member_id)
        .where(and_(*conditions))
        .distinct()
        .order_by(lots.c.expires_at, lots.c.program_id, lots.c.member_id)
        .limit(rows_max)
    ).all()
    return [(r.expires_at, r.program_id, r.member_id) for r in rows]


def _expire_batch(conn: Connection, keys: list[tuple[str, str]], *, now: datetime) -> Counts:
    locked = sorted(lock_wallet_keys(conn, keys))
    # May expire nothing if a burn or another run expired these lots while this waited for
    # the locks; the run goes on to the next batch.
    if conn.dialect.name == "postgresql":
        return _expire_locked_pg(conn, locked, now=now, trigger="job")
    return expire_locked(conn, locked, now=now)


_DUE_FOR_MEMBER = (
    select(lots.c.id)
    .where(
        and_(
            lots.c.program_id == bindparam("program_id"),
            lots.c.member_id == bindparam("member_id"),
            lots.c.expires_at <= bindparam("now"),
            LOT_HAS_POINTS,
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
                lots.c.asset == POINTS,
                LOT_HAS_POINTS,
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
) -> Counts:
    """Expire the due lots of members whose wallets the caller has locked. ``trigger`` is
    recorded as the entry's source: ``job`` for the expiry run, ``on_burn`` when a redemption,
    debit or return expired them first."""
    due = conn.execute(
        select(lots.c.id, lots.c.program_id, lots.c.member_id, lots.c.asset, lots.c.remaining)
        .where(
            and_(
                lots.c.expires_at <= now,
                LOT_HAS_POINTS,
                tuple_(lots.c.program_id, lots.c.member_id).in_(keys),
            )
        )
        .order_by(lots.c.program_id, lots.c.member_id, lots.c.asset, lots.c.id)
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
    # One entry per member and wallet (points, cashback).
    by_wallet: dict[tuple[str, str, str], list[tuple[str, int]]] = defaultdict(list)
    for r in due:
        by_wallet[(r.program_id, r.member_id, r.asset)].append((r.id, int(r.remaining)))
    entry_rows: list[dict[str, Any]] = []
    posting_rows: list[dict[str, Any]] = []
    movement_rows: list[dict[str, Any]] = []
    wallet_rows: list[dict[str, Any]] = []
    for (program_id, member_id, asset), member_lots in by_wallet.items():
        entry_id = new_id("ent")
        total = sum(points for _, points in member_lots)
        entry_rows.append(
            {
                "id": entry_id,
                "program_id": program_id,
                "member_id": member_id,
                "kind": EntryKind.EXPIRE.value,
                "program_version": versions[program_id],
                "reason": _EXPIRED_REASON[asset],
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
                "account": member_account(member_id, asset),
                "asset": asset,
                "amount": -total,
            }
        )
        posting_rows.append(
            {
                "entry_id": entry_id,
                "leg": 1,
                "program_id": program_id,
                "member_id": None,
                "account": program_account(program_id, "expired", asset),
                "asset": asset,
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
        wallet_rows.append(
            {"p": program_id, "m": member_id, "a": asset, "delta": total, "now": now}
        )
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
                wallets.c.asset == bindparam("a"),
            )
        )
        .values(balance=wallets.c.balance - bindparam("delta"), updated_at=bindparam("now")),
        wallet_rows,
    )
    points_due = sum(int(r.remaining) for r in due if r.asset == POINTS)
    return len(due), points_due, len({(p, m) for p, m, _ in by_wallet})


# One statement for a locked batch. ``due`` is read after the wallet locks were granted (READ
# COMMITTED: a new snapshot per statement), so it sees whatever a concurrent burn or run
# committed first; every later step is derived from the lots this statement actually emptied
# (``spent``), so movements, postings and wallets agree with the lots by construction. The
# ``remaining = due.remaining`` guard makes a lot changed under us (nothing should change it
# while we hold the wallet lock) drop out of ``spent`` instead of being expired for a stale
# amount. Each lot is emptied at the row address (``ctid``) the lookup found, not looked up
# again by id (a second index lookup per lot); a newer version of the row, which the wallet
# lock should make impossible, is still held to the same ``remaining`` guard.
# ``OFFSET 0`` keeps the lateral subquery a per-member index lookup: flattened into a join, the
# planner misjudges the batch's share of ``lots`` and hashes the whole table for every batch.
_EXPIRE_LOCKED_PG = text(
    """
    WITH batch AS (
        SELECT *
        FROM unnest(
            CAST(:program_ids AS text[]), CAST(:member_ids AS text[]),
            CAST(:entry_ids AS text[]), CAST(:cash_entry_ids AS text[]),
            CAST(:member_accounts AS text[]), CAST(:expired_accounts AS text[]),
            CAST(:cash_accounts AS text[]), CAST(:cash_expired_accounts AS text[])
        ) AS b (program_id, member_id, entry_id, cash_entry_id, member_account,
                expired_account, cash_account, cash_expired_account)
    ),
    due AS (
        SELECT l.tid, l.id, l.program_id, l.member_id, l.asset, l.remaining,
               CASE WHEN l.asset = :cash THEN b.cash_entry_id ELSE b.entry_id END AS entry_id
        FROM batch AS b
        CROSS JOIN LATERAL (
            SELECT lots.ctid AS tid, lots.id, lots.program_id, lots.member_id, lots.asset,
                   lots.remaining
            FROM lots
            WHERE lots.program_id = b.program_id AND lots.member_id = b.member_id
              AND lots.expires_at <= :now AND lots.remaining > 0
            OFFSET 0
        ) AS l
    ),
    spent AS (
        UPDATE lots SET remaining = 0
        FROM due
        WHERE lots.ctid = due.tid AND lots.remaining = due.remaining
        RETURNING due.id, due.program_id, due.member_id, due.asset, due.remaining, due.entry_id
    ),
    moved AS (
        INSERT INTO lot_movements (entry_id, lot_id, program_id, member_id, kind, amount)
        SELECT entry_id, id, program_id, member_id, :movement_kind, -remaining
        FROM spent
    ),
    totals AS (
        SELECT s.entry_id, s.program_id, s.member_id, s.asset,
               CASE WHEN s.asset = :cash THEN b.cash_account ELSE b.member_account END
                   AS member_account,
               CASE WHEN s.asset = :cash THEN b.cash_expired_account ELSE b.expired_account END
                   AS expired_account,
               sum(s.remaining) AS points, count(*) AS lots_n
        FROM spent AS s
        JOIN batch AS b ON b.program_id = s.program_id AND b.member_id = s.member_id
        GROUP BY s.entry_id, s.program_id, s.member_id, s.asset, b.member_account,
                 b.expired_account, b.cash_account, b.cash_expired_account
    ),
    entries AS (
        INSERT INTO journal_entries (id, program_id, member_id, kind, program_version, reason,
                                     source_type, source_id, reverses_entry_id, actor,
                                     created_at, details)
        SELECT t.entry_id, t.program_id, t.member_id, :entry_kind, p.current_version,
               CASE WHEN t.asset = :cash THEN 'cashback expired' ELSE 'points expired' END,
               'expiry', :trigger, NULL, NULL, :now, json_build_object('lots', t.lots_n)
        FROM totals AS t
        JOIN programs AS p ON p.id = t.program_id
    ),
    legs AS (
        INSERT INTO postings (entry_id, leg, program_id, member_id, account, asset, amount)
        SELECT entry_id, 0, program_id, member_id, member_account, asset, -points FROM totals
        UNION ALL
        SELECT entry_id, 1, program_id, NULL, expired_account, asset, points FROM totals
    ),
    debited AS (
        UPDATE wallets SET balance = wallets.balance - t.points, updated_at = :now
        FROM totals AS t
        WHERE wallets.program_id = t.program_id AND wallets.member_id = t.member_id
          AND wallets.asset = t.asset
        RETURNING wallets.member_id
    )
    SELECT coalesce(sum(lots_n), 0) AS lots_n,
           coalesce(sum(CASE WHEN asset = :cash THEN 0 ELSE points END), 0) AS points,
           count(DISTINCT (program_id, member_id)) AS members_n, count(*) AS wallets_n,
           (SELECT count(*) FROM debited) AS debited_n
    FROM totals
    """
).bindparams(bindparam("now", type_=lots.c.expires_at.type))


def _expire_locked_pg(
    conn: Connection, keys: list[tuple[str, str]], *, now: datetime, trigger: str
) -> Counts:
    """``expire_locked`` as one set-based statement, for PostgreSQL. Same rows, same shape: one
    ``expire`` entry per member and wallet with due lots, two postings, one movement per lot."""
    if not keys:
        return 0, 0, 0
    row = conn.execute(
        _EXPIRE_LOCKED_PG,
        {
            "program_ids": [p for p, _ in keys],
            "member_ids": [m for _, m in keys],
            "entry_ids": [new_id("ent") for _ in keys],
            "cash_entry_ids": [new_id("ent") for _ in keys],
            "member_accounts": [member_account(m) for _, m in keys],
            "expired_accounts": [program_account(p, "expired") for p, _ in keys],
            "cash_accounts": [member_account(m, CASH) for _, m in keys],
            "cash_expired_accounts": [program_account(p, "expired", CASH) for p, _ in keys],
            "now": now,
            "trigger": trigger,
            "entry_kind": EntryKind.EXPIRE.value,
            "movement_kind": MovementKind.EXPIRE.value,
            "cash": CASH,
        },
    ).one()
    # Every wallet with an entry was there to debit: the member's lock was taken first.
    assert row.debited_n == row.wallets_n, (row.debited_n, row.wallets_n)
    return int(row.lots_n), int(row.points), int(row.members_n)


def expire_due_lots(
    engine: Engine,
    *,
    now: datetime,
    batch_size: int = EXPIRY_BATCH_DEFAULT,
    on_batch: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> ExpiryReport:
    """Expire every lot whose ``expires_at`` is at or before ``now``, one transaction per batch
    of ``batch_size`` members. ``on_batch(lots, points)`` reports progress.

    One pass over the due lots: a lot that becomes due and unspent behind the pass while it
    runs (a backdated earn) is left to the next run, and to any burn before then, which
    expires a member's overdue lots before it spends.

    ``workers`` transactions run at once on PostgreSQL, each on its own batch: a window's
    batches hold disjoint members, so they never wait on each other's locks, and the next
    window starts once the current one is done (a member due on several days can appear in
    two windows, never in two running batches). SQLite serialises writers: one worker."""
    assert 1 <= batch_size <= EXPIRY_BATCH_MAX
    assert 1 <= workers <= EXPIRY_WORKERS_MAX
    if engine.dialect.name != "postgresql":
        workers = 1
    lots_total = points_total = members_total = batches = 0
    after: _Cursor | None = None
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        while True:
            window = run_transaction(
                engine,
                functools.partial(_due_window, now=now, after=after, rows_max=EXPIRY_WINDOW_ROWS),
                write=False,
            )
            if not window:
                break
            members = sorted({(p, m) for _, p, m in window})
            jobs = [
                functools.partial(_expire_batch, keys=members[start : start + batch_size], now=now)
                for start in range(0, len(members), batch_size)
            ]
            results = (
                pool.map(lambda job: run_transaction(engine, job), jobs)
                if pool is not None
                else (run_transaction(engine, job) for job in jobs)
            )
            for n_lots, n_points, n_members in results:
                if n_lots == 0:
                    continue
                batches += 1
                lots_total += n_lots
                points_total += n_points
                members_total += n_members
                if on_batch is not None:
                    on_batch(n_lots, n_points)
            if len(window) < EXPIRY_WINDOW_ROWS:
                break
            after = window[-1]
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return ExpiryReport(lots_total, points_total, members_total, batches)
