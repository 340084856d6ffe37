"""Member-to-member transfers: one member gives points to another of the same program, where
the program allows it, as one balanced journal entry (the sender's lots give, earliest
expiry first; the receiver gets a new lot under the program's expiry policy)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, func, select

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.ledger_store import (
    EntryRecord,
    insert_lots,
    lot_row,
    member_lots,
    move_lots,
    write_entry,
)
from loyalty.adapters.db.locking import lock_wallets
from loyalty.adapters.db.tables import journal_entries, postings
from loyalty.adapters.ids import new_id
from loyalty.application.access import Principal, Scope
from loyalty.application.balances import balance_view
from loyalty.application.expiry import expire_member_now
from loyalty.application.idempotency import Outcome, fingerprint, run_idempotent
from loyalty.application.members import resolve_member
from loyalty.application.programs import load_program
from loyalty.domain.errors import TransferRefused
from loyalty.domain.ledger import (
    EntryKind,
    MovementKind,
    Posting,
    member_account,
    plan_earn,
    plan_redemption,
)
from loyalty.domain.rules import Period, period_start


def transfer(
    engine: Engine,
    principal: Principal,
    program_id: str,
    sender_ref: str,
    *,
    receiver_ref: str,
    points: int,
    reason: str | None,
    idempotency_key: str,
    now: datetime,
) -> Outcome:
    """Move ``points`` from one member to another. Refused (``TransferRefused``, with a
    reason) when the program doesn't allow transfers, past its limits, or to oneself;
    ``InsufficientPoints`` when the sender hasn't the points available."""

    def work(conn: Connection) -> Outcome:
        ctx = load_program(conn, principal, program_id, Scope.WRITE)
        rules = ctx.settings.transfers
        sender = resolve_member(conn, program_id, sender_ref)
        receiver = resolve_member(conn, program_id, receiver_ref)
        if not rules.enabled:
            raise TransferRefused("transfers_disabled")
        if sender.id == receiver.id:
            raise TransferRefused("same_member")
        if rules.max_per_transfer is not None and points > rules.max_per_transfer:
            raise TransferRefused("over_transfer_limit", limit=rules.max_per_transfer)

        def effect() -> tuple[int, dict[str, Any]]:
            wallets = lock_wallets(conn, program_id, [sender.id, receiver.id])
            if expire_member_now(conn, program_id, sender.id, now=now):
                wallets = lock_wallets(conn, program_id, [sender.id, receiver.id])
            if rules.max_per_month is not None:
                since = period_start(Period.MONTH, now, ZoneInfo(ctx.settings.time_zone))
                sent = -int(
                    conn.execute(
                        select(func.coalesce(func.sum(postings.c.amount), 0))
                        .select_from(
                            postings.join(
                                journal_entries, journal_entries.c.id == postings.c.entry_id
                            )
                        )
                        .where(
                            and_(
                                journal_entries.c.program_id == program_id,
                                journal_entries.c.kind == EntryKind.TRANSFER.value,
                                journal_entries.c.created_at >= since,
                                postings.c.account == member_account(sender.id),
                            )
                        )
                    ).scalar_one()
                )
                if sent + points > rules.max_per_month:
                    raise TransferRefused(
                        "over_monthly_limit", limit=rules.max_per_month, sent_this_month=sent
                    )
            lots = member_lots(conn, program_id, sender.id, spendable_at=now)
            takes = plan_redemption(
                lots,
                points=points,
                balance=sum(lot.remaining for lot in lots) - wallets[sender.id].debt,
            )
            plan = plan_earn(points, debt=wallets[receiver.id].debt)
            entry_id = new_id("ent")
            write_entry(
                conn,
                EntryRecord(
                    entry_id=entry_id,
                    program_id=program_id,
                    member_id=sender.id,
                    kind=EntryKind.TRANSFER,
                    program_version=ctx.settings.version,
                    created_at=now,
                    reason=reason,
                    source_type="transfer",
                    source_id=receiver.id,
                    actor=principal.key_id,
                    details={"to": receiver.id, "debt_repaid": plan.debt_repaid},
                ),
                [Posting(member_account(sender.id), member_account(receiver.id), points)],
                debt_delta={receiver.id: -plan.debt_repaid} if plan.debt_repaid else None,
            )
            move_lots(
                conn,
                entry_id=entry_id,
                program_id=program_id,
                member_id=sender.id,
                kind=MovementKind.TRANSFER_OUT,
                changes=[(t.lot_id, -t.points) for t in takes],
            )
            lot_id = new_id("lot")
            insert_lots(
                conn,
                [
                    lot_row(
                        lot_id=lot_id,
                        program_id=program_id,
                        member_id=receiver.id,
                        entry_id=entry_id,
                        amount=points,
                        remaining=points,
                        earned_at=now,
                        expires_at=ctx.settings.expiry.expires_at(now),
                    )
                ],
                [],
            )
            if plan.debt_repaid:
                move_lots(
                    conn,
                    entry_id=entry_id,
                    program_id=program_id,
                    member_id=receiver.id,
                    kind=MovementKind.DEBT_REPAYMENT,
                    changes=[(lot_id, -plan.debt_repaid)],
                )
            return 201, {
                "entry_id": entry_id,
                "from": sender.id,
                "to": receiver.id,
                "points": points,
                "reason": reason,
                "created_at": now.isoformat(),
                "from_balance": balance_view(conn, program_id, sender.id, now=now),
                "to_balance": balance_view(conn, program_id, receiver.id, now=now),
            }

        return run_idempotent(
            conn,
            tenant_id=principal.tenant_id,
            scope=program_id,
            key=f"transfer:{idempotency_key}",
            client_key=idempotency_key,
            request_fingerprint=fingerprint(sender.id, receiver.id, points, reason),
            now=now,
            work=effect,
        )

    return run_transaction(engine, work)
