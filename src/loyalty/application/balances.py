"""A member's balance (with what expires when) and statement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, case, func, or_, select

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.tables import journal_entries, lots, members, postings, wallets
from loyalty.application.access import Principal, Scope
from loyalty.application.members import decode_cursor, encode_cursor, resolve_member
from loyalty.application.programs import load_program
from loyalty.domain.ledger import CASH, POINTS, member_account

EXPIRY_BUCKETS_MAX = 100


_WALLETS = select(wallets.c.asset, wallets.c.balance, wallets.c.debt).where(
    and_(
        wallets.c.program_id == bindparam("program_id"),
        wallets.c.member_id == bindparam("member_id"),
    )
)
_EXPIRING = (
    select(lots.c.expires_at, func.sum(lots.c.remaining).label("points"))
    .where(
        and_(
            lots.c.program_id == bindparam("program_id"),
            lots.c.member_id == bindparam("member_id"),
            lots.c.asset == bindparam("asset"),
            lots.c.remaining > 0,
            lots.c.expires_at.is_not(None),
        )
    )
    .group_by(lots.c.expires_at)
    .order_by(lots.c.expires_at)
    .limit(EXPIRY_BUCKETS_MAX)
)


_HELD = select(
    # One pass over the member's live lots for both figures (this runs on every event).
    func.coalesce(
        func.sum(case((lots.c.expires_at <= bindparam("now"), lots.c.remaining), else_=0)), 0
    ).label("overdue"),
    func.coalesce(
        func.sum(
            case(
                (
                    and_(
                        lots.c.available_at > bindparam("now"),
                        or_(lots.c.expires_at.is_(None), lots.c.expires_at > bindparam("now")),
                    ),
                    lots.c.remaining,
                ),
                else_=0,
            )
        ),
        0,
    ).label("pending"),
).where(
    and_(
        lots.c.program_id == bindparam("program_id"),
        lots.c.member_id == bindparam("member_id"),
        lots.c.asset == bindparam("asset"),
        lots.c.remaining > 0,
    )
)


def _wallet_figures(
    conn: Connection, params: dict[str, Any], *, balance: int, now: datetime
) -> tuple[int, int, Sequence[Any]]:
    """``(available, pending, expiring)`` of one wallet of a member."""
    expiring = conn.execute(_EXPIRING, params).all()
    # Lots past their expiry that the expiry job has not reached yet are not spendable (the
    # next burn expires them first), so they are not shown as available.
    held = conn.execute(_HELD, {**params, "now": now}).one()
    overdue, pending = int(held.overdue), int(held.pending)
    return max(balance - overdue - pending, 0), pending, expiring


def _buckets(rows: Sequence[Any], unit: str, *, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "expires_at": r.expires_at.isoformat(),
            unit: int(r.points),
            "expired": r.expires_at <= now,
        }
        for r in rows
    ]


def balance_view(
    conn: Connection, program_id: str, member_id: str, *, now: datetime
) -> dict[str, Any]:
    """``balance`` is the account's signed total; ``pending`` the points still in their
    pending period; ``available`` what can be spent now (the balance less pending points and
    lots already past their expiry); ``debt`` what a return took back after it was spent,
    repaid by the next earnings. ``cashback`` gives the same figures for the member's
    cashback wallet, in minor units (``None`` before the member's first cashback)."""
    params = {"program_id": program_id, "member_id": member_id}
    wallet_rows = {r.asset: r for r in conn.execute(_WALLETS, params).all()}
    wallet = wallet_rows[POINTS]
    available, pending, expiring = _wallet_figures(
        conn, {**params, "asset": POINTS}, balance=wallet.balance, now=now
    )
    cash = wallet_rows.get(CASH)
    cashback: dict[str, Any] | None = None
    if cash is not None:
        cash_available, cash_pending, cash_expiring = _wallet_figures(
            conn, {**params, "asset": CASH}, balance=cash.balance, now=now
        )
        cashback = {
            "balance_minor": cash.balance,
            "available_minor": cash_available,
            "pending_minor": cash_pending,
            "debt_minor": cash.debt,
            "expiring": _buckets(cash_expiring, "amount_minor", now=now),
        }
    return {
        "member_id": member_id,
        "balance": wallet.balance,
        "available": available,
        "pending": pending,
        "debt": wallet.debt,
        "expiring": _buckets(expiring, "points", now=now),
        "cashback": cashback,
        "as_of": now.isoformat(),
    }


def get_balance(
    engine: Engine, principal: Principal, program_id: str, member_ref: str, *, now: datetime
) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.READ)
        member = resolve_member(conn, program_id, member_ref)
        return balance_view(conn, program_id, member.id, now=now)

    return run_transaction(engine, work, write=False)


def get_statement(
    engine: Engine,
    principal: Principal,
    program_id: str,
    member_ref: str,
    *,
    limit: int,
    cursor: str | None,
    asset: str = POINTS,
) -> dict[str, Any]:
    """Every journal entry that touched the member's points (or another wallet), newest
    first."""

    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.READ)
        member = resolve_member(conn, program_id, member_ref)
        account = member_account(member.id, asset)
        stmt = (
            select(journal_entries, postings.c.amount.label("points"))
            .join(postings, postings.c.entry_id == journal_entries.c.id)
            .where(
                and_(
                    postings.c.program_id == program_id,
                    postings.c.account == account,
                    postings.c.asset == asset,
                )
            )
        )
        if cursor:
            stmt = stmt.where(journal_entries.c.id < decode_cursor(cursor))
        rows = conn.execute(stmt.order_by(journal_entries.c.id.desc()).limit(limit + 1)).all()
        page = rows[:limit]
        return {
            "items": [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "points": r.points,
                    "created_at": r.created_at.isoformat(),
                    "program_version": r.program_version,
                    "reason": r.reason,
                    "source": {"type": r.source_type, "id": r.source_id} if r.source_type else None,
                    "reverses_entry_id": r.reverses_entry_id,
                    "actor": r.actor,
                    "details": r.details,
                }
                for r in page
            ],
            "next_cursor": encode_cursor(page[-1].id) if len(rows) > limit else None,
        }

    return run_transaction(engine, work, write=False)


EXPIRING_WITHIN_DAYS_MAX = 366


def expiring_soon(
    engine: Engine,
    principal: Principal,
    program_id: str,
    *,
    within_days: int,
    now: datetime,
    limit: int,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Members with points that expire within ``within_days`` days from ``now`` (for
    reminders): the points, and the first of those expiries, in member order, paged."""
    assert 1 <= within_days <= EXPIRING_WITHIN_DAYS_MAX

    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.READ)
        stmt = (
            select(
                lots.c.member_id,
                members.c.external_id,
                members.c.email,
                func.sum(lots.c.remaining).label("points"),
                func.min(lots.c.expires_at).label("first_expires_at"),
            )
            .join(members, members.c.id == lots.c.member_id)
            .where(
                and_(
                    lots.c.program_id == program_id,
                    lots.c.asset == POINTS,
                    lots.c.remaining > 0,
                    lots.c.expires_at > now,
                    lots.c.expires_at <= now + timedelta(days=within_days),
                )
            )
            .group_by(lots.c.member_id, members.c.external_id, members.c.email)
            .order_by(lots.c.member_id)
            .limit(limit + 1)
        )
        if cursor:
            stmt = stmt.where(lots.c.member_id > decode_cursor(cursor))
        rows = conn.execute(stmt).all()
        page = rows[:limit]
        return {
            "within_days": within_days,
            "as_of": now.isoformat(),
            "items": [
                {
                    "member_id": r.member_id,
                    "external_id": r.external_id,
                    "email": r.email,
                    "points": int(r.points),
                    "first_expires_at": r.first_expires_at.isoformat(),
                }
                for r in page
            ],
            "next_cursor": encode_cursor(page[-1].member_id) if len(rows) > limit else None,
        }

    return run_transaction(engine, work, write=False)
