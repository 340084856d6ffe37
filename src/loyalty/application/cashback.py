"""The cashback wallet: credited by purchases, taken back by returns, spent at checkout
through holds. Money in minor units of the program's currency, kept in lots like points (each
with its own expiry and pending period) in a second wallet of the member.

Every function here runs in the caller's transaction, after the caller locked the member's
points wallet: that lock serialises every change to a member, whatever the wallet."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, select

from loyalty.adapters.db.ledger_store import expired_from_entry, member_lots
from loyalty.adapters.db.locking import lock_second_wallet
from loyalty.adapters.db.tables import events, journal_entries, lots, return_lines
from loyalty.application.ledger_ops import debit_lots, plan_credit, write_credit
from loyalty.application.programs import ProgramContext, settings_at
from loyalty.domain.cashback import cashback_for
from loyalty.domain.ledger import CASH, EntryKind, MovementKind, plan_takeback
from loyalty.domain.purchase import Purchase


def charged_by_returns(conn: Connection, purchase_event_id: str, column: Any) -> int:
    """The sum of ``column`` of ``events`` (points or cashback, negative when charged) over the
    returns recorded so far against a purchase."""
    return int(
        conn.execute(
            select(func.coalesce(func.sum(column), 0)).where(
                events.c.id.in_(
                    select(return_lines.c.return_event_id).where(
                        return_lines.c.purchase_event_id == purchase_event_id
                    )
                )
            )
        ).scalar_one()
    )


def credit_cashback(
    conn: Connection,
    ctx: ProgramContext,
    *,
    member_id: str,
    purchase: Purchase,
    order_id: str,
    event_id: str,
    tier: str | None,
    earned_at: datetime,
    now: datetime,
    actor: str,
) -> dict[str, Any] | None:
    """Credit the cashback a purchase earns as one lot of the member's cashback wallet, in an
    entry of its own. None when the program pays no cashback; a view with ``earned_minor`` 0
    when this purchase earns none."""
    policy = ctx.settings.cashback
    if policy is None:
        return None
    amount, eligible = cashback_for(policy, purchase, tier=tier)
    view: dict[str, Any] = {
        "earned_minor": amount,
        "eligible_minor": eligible,
        "rate_bp": policy.rate_for(tier),
        "entry_id": None,
        "lot": None,
    }
    if amount == 0:
        return view
    wallet = lock_second_wallet(conn, ctx.program_id, member_id, CASH, now=now)
    expires_at = policy.expiry.expires_at(earned_at)
    available_at = earned_at + timedelta(days=policy.pending_days) if policy.pending_days else None
    credit = write_credit(
        conn,
        plan_credit(
            program_id=ctx.program_id,
            member_id=member_id,
            debt=wallet.debt,
            points=amount,
            kind=EntryKind.CASHBACK,
            from_purpose="issued",
            program_version=ctx.settings.version,
            now=now,
            expires_at=expires_at,
            earned_at=earned_at,
            available_at=available_at,
            reason="cashback",
            source_type="purchase",
            source_id=order_id,
            actor=actor,
            details={
                "event_id": event_id,
                "eligible_minor": eligible,
                "rate_bp": view["rate_bp"],
                "tier": tier,
            },
            asset=CASH,
        ),
    )
    lot = credit.lots[0]
    view["entry_id"] = credit.entry_id
    view["lot"] = {
        "id": lot.lot_id,
        "amount_minor": lot.points,
        "expires_at": expires_at.isoformat() if expires_at else None,
        "available_at": available_at.isoformat() if available_at else None,
        "debt_repaid_minor": lot.debt_repaid,
    }
    return view


def take_back_cashback(
    conn: Connection,
    ctx: ProgramContext,
    *,
    member_id: str,
    order_id: str,
    purchase_event_id: str,
    rest: Purchase | None,
    return_id: str,
    event_id: str,
    now: datetime,
    actor: str,
) -> dict[str, Any] | None:
    """After a return, take back the cashback the rest of the basket no longer earns, at the
    rate and tier the purchase earned it with (the rest is what is left after every return so
    far, so the figures are cumulative and a later return never takes anything twice).
    Cashback of the purchase that expired unspent is not charged again. ``charged_minor`` is
    what this return charged (taken, owed or written off), to be recorded on its event. None
    when the purchase earned no cashback."""
    earned = conn.execute(
        select(
            journal_entries.c.id, journal_entries.c.program_version, journal_entries.c.details
        ).where(
            and_(
                journal_entries.c.program_id == ctx.program_id,
                journal_entries.c.member_id == member_id,
                journal_entries.c.kind == EntryKind.CASHBACK.value,
                journal_entries.c.source_type == "purchase",
                journal_entries.c.source_id == order_id,
            )
        )
    ).first()
    if earned is None:
        return None
    credited = int(
        conn.execute(
            select(func.sum(lots.c.amount)).where(lots.c.entry_id == earned.id)
        ).scalar_one()
    )
    policy = settings_at(conn, ctx.program_id, int(earned.program_version)).cashback
    kept = 0
    if rest is not None and policy is not None:
        kept = min(cashback_for(policy, rest, tier=earned.details.get("tier"))[0], credited)
    expired_own = expired_from_entry(conn, earned.id)
    charged_before = -charged_by_returns(conn, purchase_event_id, events.c.cashback_minor)
    charge = max(0, credited - kept - expired_own - charged_before)
    view: dict[str, Any] = {
        "reversed_minor": credited - kept,
        "charged_minor": charge,
        "taken_minor": 0,
        "debt_added_minor": 0,
        "written_off_minor": 0,
        "entry_id": None,
    }
    if charge == 0:
        return view
    lock_second_wallet(conn, ctx.program_id, member_id, CASH, now=now)
    own = member_lots(conn, ctx.program_id, member_id, entry_id=earned.id, asset=CASH)
    others = member_lots(conn, ctx.program_id, member_id, asset=CASH)
    takeback = plan_takeback(
        points=charge, own_lots=own, other_lots=others, policy=ctx.settings.negative_balance
    )
    view["taken_minor"] = takeback.points_taken - takeback.debt_added
    view["debt_added_minor"] = takeback.debt_added
    view["written_off_minor"] = takeback.points_written_off
    if takeback.points_taken == 0:
        return view
    view["entry_id"] = debit_lots(
        conn,
        program_id=ctx.program_id,
        member_id=member_id,
        takes=takeback.takes,
        points=takeback.points_taken,
        kind=EntryKind.CASHBACK_RETURN,
        movement=MovementKind.RETURN,
        to_purpose="issued",
        program_version=ctx.settings.version,
        now=now,
        debt_added=takeback.debt_added,
        reason="cashback returned",
        source_type="return",
        source_id=return_id,
        reverses_entry_id=earned.id,
        actor=actor,
        details={
            "event_id": event_id,
            "charged_minor": charge,
            "debt_added_minor": takeback.debt_added,
            "written_off_minor": takeback.points_written_off,
        },
        asset=CASH,
    )
    return view
