"""``loyalty ledger audit``: prove the ledger's invariants with set-based queries.

Each check returns the first few offending rows; an empty list means the invariant holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.tables import (
    journal_entries,
    lot_movements,
    lots,
    postings,
    redemption_cancellations,
    redemptions,
    wallets,
)

SAMPLE_MAX = 5


@dataclass(frozen=True, slots=True)
class Finding:
    invariant: str
    description: str
    examples: list[dict[str, Any]] = field(default_factory=list)


def _rows(conn: Connection, stmt: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(stmt.limit(SAMPLE_MAX)).all()]


def _entries_balance(conn: Connection) -> list[dict[str, Any]]:
    return _rows(
        conn,
        select(postings.c.entry_id, postings.c.asset, func.sum(postings.c.amount).label("sum"))
        .group_by(postings.c.entry_id, postings.c.asset)
        .having(func.sum(postings.c.amount) != 0),
    )


def _entries_have_postings(conn: Connection) -> list[dict[str, Any]]:
    return _rows(
        conn,
        select(journal_entries.c.id)
        .outerjoin(postings, postings.c.entry_id == journal_entries.c.id)
        .where(postings.c.entry_id.is_(None)),
    )


def _wallets_match_postings(conn: Connection) -> list[dict[str, Any]]:
    sums = (
        select(
            postings.c.program_id,
            postings.c.member_id,
            postings.c.asset,
            func.sum(postings.c.amount).label("posted"),
        )
        .where(postings.c.member_id.is_not(None))
        .group_by(postings.c.program_id, postings.c.member_id, postings.c.asset)
        .subquery()
    )
    posted = func.coalesce(sums.c.posted, 0)
    return _rows(
        conn,
        select(
            wallets.c.program_id,
            wallets.c.member_id,
            wallets.c.asset,
            wallets.c.balance,
            posted.label("posted"),
        )
        .outerjoin(
            sums,
            and_(
                sums.c.program_id == wallets.c.program_id,
                sums.c.member_id == wallets.c.member_id,
                sums.c.asset == wallets.c.asset,
            ),
        )
        .where(wallets.c.balance != posted),
    )


def _postings_have_wallets(conn: Connection) -> list[dict[str, Any]]:
    return _rows(
        conn,
        select(postings.c.program_id, postings.c.member_id)
        .outerjoin(
            wallets,
            and_(
                wallets.c.program_id == postings.c.program_id,
                wallets.c.member_id == postings.c.member_id,
                wallets.c.asset == postings.c.asset,
            ),
        )
        .where(and_(postings.c.member_id.is_not(None), wallets.c.member_id.is_(None)))
        .distinct(),
    )


def _movements_have_lots_and_entries(conn: Connection) -> list[dict[str, Any]]:
    """What the foreign keys of ``lot_movements`` would have refused, and more: a movement
    whose lot or entry is missing, or belongs to another program or member."""
    return _rows(
        conn,
        select(lot_movements.c.entry_id, lot_movements.c.lot_id, lot_movements.c.member_id)
        .outerjoin(lots, lots.c.id == lot_movements.c.lot_id)
        .outerjoin(journal_entries, journal_entries.c.id == lot_movements.c.entry_id)
        .where(
            or_(
                lots.c.id.is_(None),
                journal_entries.c.id.is_(None),
                lots.c.program_id != lot_movements.c.program_id,
                lots.c.member_id != lot_movements.c.member_id,
                journal_entries.c.program_id != lot_movements.c.program_id,
                journal_entries.c.member_id.is_distinct_from(lot_movements.c.member_id),
            )
        ),
    )


def _lots_match_movements(conn: Connection) -> list[dict[str, Any]]:
    moved = (
        select(lot_movements.c.lot_id, func.sum(lot_movements.c.amount).label("moved"))
        .group_by(lot_movements.c.lot_id)
        .subquery()
    )
    expected = lots.c.amount + func.coalesce(moved.c.moved, 0)
    return _rows(
        conn,
        select(lots.c.id, lots.c.amount, lots.c.remaining, expected.label("expected"))
        .outerjoin(moved, moved.c.lot_id == lots.c.id)
        .where(
            or_(
                lots.c.remaining != expected, lots.c.remaining < 0, lots.c.remaining > lots.c.amount
            )
        ),
    )


def _wallets_match_lots(conn: Connection) -> list[dict[str, Any]]:
    held = (
        select(
            lots.c.program_id,
            lots.c.member_id,
            lots.c.asset,
            func.sum(lots.c.remaining).label("held"),
        )
        .group_by(lots.c.program_id, lots.c.member_id, lots.c.asset)
        .subquery()
    )
    held_points = func.coalesce(held.c.held, 0)
    return _rows(
        conn,
        select(
            wallets.c.program_id,
            wallets.c.member_id,
            wallets.c.asset,
            wallets.c.balance,
            wallets.c.debt,
            held_points.label("lots_remaining"),
        )
        .outerjoin(
            held,
            and_(
                held.c.program_id == wallets.c.program_id,
                held.c.member_id == wallets.c.member_id,
                held.c.asset == wallets.c.asset,
            ),
        )
        .where(
            or_(
                wallets.c.balance != held_points - wallets.c.debt,
                and_(wallets.c.debt > 0, held_points > 0),
                wallets.c.debt < 0,
            )
        ),
    )


def _movements_balance_entries(conn: Connection) -> list[dict[str, Any]]:
    """Points that left or entered lots in an entry equal what the entry moved on the member's
    account, less the debt it changed (earn and credit entries add a lot instead)."""
    lot_side = (
        select(lot_movements.c.entry_id, func.sum(lot_movements.c.amount).label("lots_delta"))
        .group_by(lot_movements.c.entry_id)
        .subquery()
    )
    created = (
        select(lots.c.entry_id, func.sum(lots.c.amount).label("created"))
        .group_by(lots.c.entry_id)
        .subquery()
    )
    member_side = (
        select(postings.c.entry_id, func.sum(postings.c.amount).label("member_delta"))
        .where(postings.c.member_id.is_not(None))
        .group_by(postings.c.entry_id)
        .subquery()
    )
    lots_total = func.coalesce(lot_side.c.lots_delta, 0) + func.coalesce(created.c.created, 0)
    member_total = func.coalesce(member_side.c.member_delta, 0)
    # Debt changes are not stored per entry, so only entries that cannot touch debt are checked
    # exactly here; the wallet-vs-lots check above covers debt overall.
    return _rows(
        conn,
        select(
            journal_entries.c.id,
            journal_entries.c.kind,
            lots_total.label("lots"),
            member_total.label("member"),
        )
        .outerjoin(lot_side, lot_side.c.entry_id == journal_entries.c.id)
        .outerjoin(created, created.c.entry_id == journal_entries.c.id)
        .outerjoin(member_side, member_side.c.entry_id == journal_entries.c.id)
        .where(
            and_(
                journal_entries.c.kind.in_(["redeem", "adjust_debit", "expire"]),
                lots_total != member_total,
            )
        ),
    )


def _redemptions_cancelled_once(conn: Connection) -> list[dict[str, Any]]:
    return _rows(
        conn,
        select(journal_entries.c.reverses_entry_id, func.count().label("cancellations"))
        .where(journal_entries.c.kind == "redeem_cancel")
        .group_by(journal_entries.c.reverses_entry_id)
        .having(func.count() > 1),
    )


def _cancellations_match(conn: Connection) -> list[dict[str, Any]]:
    return _rows(
        conn,
        select(redemption_cancellations.c.redemption_id)
        .join(redemptions, redemptions.c.id == redemption_cancellations.c.redemption_id)
        .join(journal_entries, journal_entries.c.id == redemption_cancellations.c.entry_id)
        .where(journal_entries.c.reverses_entry_id != redemptions.c.entry_id),
    )


CHECKS: list[tuple[str, str, Callable[[Connection], list[dict[str, Any]]]]] = [
    ("entries_balance", "every journal entry's postings sum to zero per asset", _entries_balance),
    ("entries_have_postings", "every journal entry has postings", _entries_have_postings),
    ("postings_have_wallets", "every member posting belongs to a wallet", _postings_have_wallets),
    (
        "wallets_match_postings",
        "each wallet balance equals the sum of its postings",
        _wallets_match_postings,
    ),
    (
        "movements_have_lots_and_entries",
        "every lot movement's lot and entry exist and belong to its program and member",
        _movements_have_lots_and_entries,
    ),
    (
        "lots_match_movements",
        "each lot's remaining equals its amount plus its movements, within 0..amount",
        _lots_match_movements,
    ),
    (
        "wallets_match_lots",
        "each wallet balance equals its lots' remaining minus its debt, and "
        "no member holds both points and debt",
        _wallets_match_lots,
    ),
    (
        "movements_match_entries",
        "points taken from lots by a burn or expiry equal the points the entry moved",
        _movements_balance_entries,
    ),
    ("redemptions_cancelled_once", "no redemption is cancelled twice", _redemptions_cancelled_once),
    (
        "cancellations_reverse_their_redemption",
        "a cancellation reverses its own redemption",
        _cancellations_match,
    ),
]


def audit_ledger(engine: Engine) -> list[Finding]:
    """Every broken invariant, in the order of ``CHECKS``; empty when the ledger is sound."""

    def work(conn: Connection) -> list[Finding]:
        findings = []
        for name, description, check in CHECKS:
            examples = check(conn)
            if examples:
                findings.append(Finding(name, description, examples))
        return findings

    return run_transaction(engine, work, write=False)
