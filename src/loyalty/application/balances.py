"""A member's balance (with what expires when) and statement."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    case,
    cast,
    func,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.elements import ColumnElement

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.keyed import KeyedRead, each_key
from loyalty.adapters.db.reads import Read
from loyalty.adapters.db.tables import (
    LOT_HAS_POINTS,
    TS,
    journal_entries,
    lots,
    members,
    postings,
    wallets,
)
from loyalty.application.access import Principal, Scope
from loyalty.application.members import decode_cursor, encode_cursor, resolve_member
from loyalty.application.programs import load_program
from loyalty.domain.ledger import CASH, POINTS, member_account

EXPIRY_BUCKETS_MAX = 100
"""Expiry groups ``GET .../balance`` lists."""
EXPIRY_BUCKETS_ANSWERED = 3
"""Expiry groups the balance in a write's answer lists (a purchase, a redemption, a hold...):
the soonest, for a receipt or a checkout screen. Fewer than ``GET .../balance`` lists, so that
what a write reads and answers (and stores for its replay) does not grow with the member's
history: a member who buys every week holds a lot per purchase."""


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
            LOT_HAS_POINTS,
            lots.c.expires_at.is_not(None),
        )
    )
    .group_by(lots.c.expires_at)
    .order_by(lots.c.expires_at)
    .limit(bindparam("buckets"))
)


_PENDING = case(
    (
        and_(
            lots.c.available_at > bindparam("now"),
            or_(lots.c.expires_at.is_(None), lots.c.expires_at > bindparam("now")),
        ),
        lots.c.remaining,
    ),
    else_=0,
)
"""What a lot holds that is still in its pending period (and not past its expiry)."""
_HELD = select(
    # One pass over the member's live lots for both figures (this runs on every event).
    func.coalesce(
        func.sum(case((lots.c.expires_at <= bindparam("now"), lots.c.remaining), else_=0)), 0
    ).label("overdue"),
    func.coalesce(func.sum(_PENDING), 0).label("pending"),
).where(
    and_(
        lots.c.program_id == bindparam("program_id"),
        lots.c.member_id == bindparam("member_id"),
        lots.c.asset == bindparam("asset"),
        LOT_HAS_POINTS,
    )
)


def _available_pending(
    conn: Connection, params: dict[str, Any], *, balance: int, now: datetime
) -> tuple[int, int]:
    """``(available, pending)`` of one wallet of a member."""
    # Lots past their expiry that the expiry job has not reached yet are not spendable (the
    # next burn expires them first), so they are not shown as available.
    held = conn.execute(_HELD, {**params, "now": now}).one()
    overdue, pending = int(held.overdue), int(held.pending)
    return max(balance - overdue - pending, 0), pending


@dataclass(frozen=True, slots=True)
class WalletFigures:
    """What ``balance_view`` says of one wallet, without its expiry buckets."""

    balance: int
    available: int
    pending: int
    debt: int


def wallet_figures(
    conn: Connection, program_id: str, member_id: str, *, now: datetime
) -> dict[str, WalletFigures]:
    """The figures of each of the member's wallets, by asset, as ``balance_view`` computes
    them but without reading the expiry buckets (a quote shows, and a checkout pays with,
    only these): one statement for the wallets and one per wallet."""
    params = {"program_id": program_id, "member_id": member_id}
    figures = {}
    for row in conn.execute(_WALLETS, params).all():
        available, pending = _available_pending(
            conn, {**params, "asset": row.asset}, balance=row.balance, now=now
        )
        figures[row.asset] = WalletFigures(row.balance, available, pending, row.debt)
    return figures


def _expiring(
    conn: Connection,
    params: dict[str, Any],
    asset: str,
    unit: str,
    *,
    now: datetime,
    buckets: int,
) -> list[dict[str, Any]]:
    """What expires when in one wallet of a member, ``unit`` naming the amount: the first
    ``buckets`` expiry times."""
    return [
        {
            "expires_at": r.expires_at.isoformat(),
            unit: int(r.points),
            "expired": r.expires_at <= now,
        }
        for r in conn.execute(_EXPIRING, {**params, "asset": asset, "buckets": buckets}).all()
    ]


def balance_view(
    conn: Connection,
    program_id: str,
    member_id: str,
    *,
    now: datetime,
    buckets: int = EXPIRY_BUCKETS_ANSWERED,
) -> dict[str, Any]:
    """``balance`` is the account's signed total; ``pending`` the points still in their
    pending period; ``available`` what can be spent now (the balance less pending points and
    lots already past their expiry); ``debt`` what a return took back after it was spent,
    repaid by the next earnings; ``expiring`` the first ``buckets`` expiry times (the
    totals count every lot). ``cashback`` gives the same figures for the member's cashback
    wallet, in minor units (``None`` before the member's first cashback)."""
    params = {"program_id": program_id, "member_id": member_id}
    rows = {r.asset: r for r in conn.execute(_WALLETS, params).all()}
    points = rows[POINTS]
    available, pending = _available_pending(
        conn, {**params, "asset": POINTS}, balance=points.balance, now=now
    )
    cash = rows.get(CASH)
    return {
        "member_id": member_id,
        "balance": points.balance,
        "available": available,
        "pending": pending,
        "debt": points.debt,
        "expiring": _expiring(conn, params, POINTS, "points", now=now, buckets=buckets),
        "cashback": None
        if cash is None
        else _cashback_view(
            conn, params, balance=cash.balance, debt=cash.debt, now=now, buckets=buckets
        ),
        "as_of": now.isoformat(),
    }


def _cashback_view(
    conn: Connection,
    params: dict[str, Any],
    *,
    balance: int,
    debt: int,
    now: datetime,
    buckets: int,
) -> dict[str, Any]:
    available, pending = _available_pending(
        conn, {**params, "asset": CASH}, balance=balance, now=now
    )
    return {
        "balance_minor": balance,
        "available_minor": available,
        "pending_minor": pending,
        "debt_minor": debt,
        "expiring": _expiring(conn, params, CASH, "amount_minor", now=now, buckets=buckets),
    }


@dataclass(slots=True)
class RunningBalance:
    """One member's ``balance_view`` kept in Python while a batch credits new lots under the
    wallet's lock, so each event can answer its balance without reading it back: the figures
    are those ``balance_view`` would read after the event (the wallet lock keeps every other
    writer of the member's points out until commit, and ``now`` is the batch's)."""

    member_id: str
    balance: int
    debt: int
    expiring: dict[datetime, int]
    """Points left in live lots with an expiry, by when they expire: at least the first
    ``EXPIRY_BUCKETS_ANSWERED`` expiry times (read), and those of the lots credited since
    (a later time than these cannot be among the first, so ``view`` is still exact)."""
    overdue: int
    """Points left in lots already past their expiry (not spendable)."""
    pending: int
    """Points left in lots still in their pending period (and not past their expiry)."""
    cashback: dict[str, Any] | None
    """The cashback figures, which a batch of purchases without cashback leaves as they are."""

    @property
    def available(self) -> int:
        """What ``balance_view`` calls available: less pending and overdue points, never < 0."""
        return max(self.balance - self.overdue - self.pending, 0)

    def figures(self) -> dict[str, WalletFigures]:
        """What ``wallet_figures`` would read for these figures: the points wallet, and the
        cashback wallet if the member has one."""
        figures = {POINTS: WalletFigures(self.balance, self.available, self.pending, self.debt)}
        if self.cashback is not None:
            figures[CASH] = WalletFigures(
                self.cashback["balance_minor"],
                self.cashback["available_minor"],
                self.cashback["pending_minor"],
                self.cashback["debt_minor"],
            )
        return figures

    def credit(self, points: int, *, debt_repaid: int) -> None:
        """An entry credited ``points`` to the account, of which ``debt_repaid`` repaid debt."""
        self.balance += points
        self.debt -= debt_repaid

    def add_lot(
        self,
        remaining: int,
        *,
        expires_at: datetime | None,
        available_at: datetime | None,
        now: datetime,
    ) -> None:
        if remaining <= 0:
            return
        if expires_at is not None:
            at = expires_at.astimezone(UTC)
            self.expiring[at] = self.expiring.get(at, 0) + remaining
            if at <= now:
                self.overdue += remaining
                return
        if available_at is not None and available_at > now:
            self.pending += remaining

    def view(self, *, now: datetime) -> dict[str, Any]:
        """What ``balance_view`` answers for these figures."""
        expiring = sorted(self.expiring.items())[:EXPIRY_BUCKETS_ANSWERED]
        return {
            "member_id": self.member_id,
            "balance": self.balance,
            "available": self.available,
            "pending": self.pending,
            "debt": self.debt,
            "expiring": [
                {"expires_at": at.isoformat(), "points": points, "expired": at <= now}
                for at, points in expiring
            ],
            "cashback": self.cashback,
            "as_of": now.isoformat(),
        }


_OVERDUE = case((lots.c.expires_at <= bindparam("now"), lots.c.remaining), else_=0)


def _live_lots(member: ColumnElement[bool], *, lateral: bool = False) -> Select[Any]:
    """The live points lots of the members ``member`` selects, by expiry time, soonest first
    and at most ``:buckets`` of them per member, each row with its member's totals
    (``pending``, ``overdue``) over every lot: what is read and handled grows with the
    buckets answered, not with the member's history. ``lateral``: ``member`` names a column
    of a table earlier in the enclosing ``FROM`` (``each_key``'s key)."""
    grouped = (
        select(
            lots.c.member_id,
            lots.c.expires_at,
            func.sum(lots.c.remaining).label("points"),
            func.row_number()
            .over(
                partition_by=lots.c.member_id,
                order_by=(lots.c.expires_at.is_(None), lots.c.expires_at),
            )
            .label("n"),
            func.sum(func.sum(_PENDING)).over(partition_by=lots.c.member_id).label("pending"),
            func.sum(func.sum(_OVERDUE)).over(partition_by=lots.c.member_id).label("overdue"),
        )
        .where(
            and_(
                lots.c.program_id == bindparam("program_id"),
                lots.c.asset == POINTS,
                LOT_HAS_POINTS,
                member,
            )
        )
        .group_by(lots.c.member_id, lots.c.expires_at)
    )
    by_expiry = (
        grouped.correlate_except(lots).lateral("by_expiry")
        if lateral
        else grouped.subquery("by_expiry")
    )
    return select(
        by_expiry.c.member_id,
        by_expiry.c.expires_at,
        by_expiry.c.points,
        by_expiry.c.pending,
        by_expiry.c.overdue,
        cast(null(), BigInteger).label("cash_balance"),
        cast(null(), BigInteger).label("cash_debt"),
    ).where(by_expiry.c.n <= bindparam("buckets"))


_CASH_WALLETS = select(
    wallets.c.member_id,
    cast(null(), TS).label("expires_at"),
    cast(null(), BigInteger).label("points"),
    cast(null(), BigInteger).label("pending"),
    cast(null(), BigInteger).label("overdue"),
    wallets.c.balance.label("cash_balance"),
    wallets.c.debt.label("cash_debt"),
).where(and_(wallets.c.program_id == bindparam("program_id"), wallets.c.asset == CASH))
_MEMBERS: BindParameter[Any] = bindparam("member_ids", expanding=True)
_LIVE_LOTS_AND_CASH = KeyedRead(
    in_list=union_all(
        _live_lots(lots.c.member_id.in_(_MEMBERS)),
        _CASH_WALLETS.where(wallets.c.member_id.in_(_MEMBERS)),
    ),
    each_key=union_all(
        each_key(
            lambda member_id: _live_lots(lots.c.member_id == member_id, lateral=True),
            keys="member_ids",
        ),
        each_key(
            lambda member_id: _CASH_WALLETS.where(wallets.c.member_id == member_id).limit(1),
            keys="member_ids",
        ),
    ),
)
"""The points wallets' first expiry times with their totals, then (``cash_balance`` set) the
members' cashback wallets: one round trip for both."""


def running_balances(
    conn: Connection, program_id: str, locked: dict[str, tuple[int, int]], *, now: datetime
) -> dict[str, RunningBalance]:
    """The balance figures of members whose points wallets the caller holds locked (``locked``:
    member id -> (balance, debt) as read under the lock), read in two statements for all of
    them (plus ``balance_view``'s for the cashback of the few who have a cashback wallet)."""
    if not locked:
        return {}
    _, params = live_lots_read(conn, program_id, locked, now=now)
    rows = conn.execute(_LIVE_LOTS_AND_CASH.on(conn, locked), params).all()
    return balances_from_rows(conn, program_id, locked, rows, now=now)


def live_lots_read(
    conn: Connection, program_id: str, member_ids: Iterable[str], *, now: datetime
) -> Read:
    """``running_balances``'s read of the members' live lots and cashback wallets, for
    ``read_together`` (``member_ids`` not empty; after the statement locking their wallets).
    Its rows go to ``balances_from_rows``."""
    params = {
        "program_id": program_id,
        "member_ids": sorted(member_ids),
        "now": now,
        "buckets": EXPIRY_BUCKETS_ANSWERED,
    }
    return _LIVE_LOTS_AND_CASH.together(conn), params


def balances_from_rows(
    conn: Connection,
    program_id: str,
    locked: dict[str, tuple[int, int]],
    rows: Iterable[Any],
    *,
    now: datetime,
) -> dict[str, RunningBalance]:
    """``running_balances``'s answer from the rows of ``live_lots_read``; rows of members not
    in ``locked`` (a wallet another transaction held) are left out."""
    running = {
        member_id: RunningBalance(member_id, balance, debt, {}, 0, 0, None)
        for member_id, (balance, debt) in locked.items()
    }
    cash_wallets = []
    for row in rows:
        figures = running.get(row.member_id)
        if figures is None:
            continue
        if row.cash_balance is not None:
            cash_wallets.append(row)
            continue
        figures.pending = int(row.pending)
        figures.overdue = int(row.overdue)
        if row.expires_at is not None:
            figures.expiring[row.expires_at] = int(row.points)
    for cash in cash_wallets:
        running[cash.member_id].cashback = _cashback_view(
            conn,
            {"program_id": program_id, "member_id": cash.member_id},
            balance=cash.cash_balance,
            debt=cash.cash_debt,
            now=now,
            buckets=EXPIRY_BUCKETS_ANSWERED,
        )
    return running


def get_balance(
    engine: Engine, principal: Principal, program_id: str, member_ref: str, *, now: datetime
) -> dict[str, Any]:
    def work(conn: Connection) -> dict[str, Any]:
        load_program(conn, principal, program_id, Scope.READ)
        member = resolve_member(conn, program_id, member_ref)
        return balance_view(conn, program_id, member.id, now=now, buckets=EXPIRY_BUCKETS_MAX)

    # One snapshot: the wallet and the lots are read by separate statements, and a purchase
    # committing between them must not show as a balance from before it with lots from after.
    return run_transaction(engine, work, write=False, snapshot=True)


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
                    LOT_HAS_POINTS,
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
