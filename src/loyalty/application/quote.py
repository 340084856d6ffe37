""" "What will I earn": the real purchase, run and rolled back.

A quote runs the very code a purchase runs (same evaluator, same member lookup, same debt
repayment and balance arithmetic) inside a transaction that is always rolled back, so what it
answers is what committing the same purchase would do at that moment, and it changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.ids import new_id
from loyalty.application import holds, memberships, purchase_batches, tiers
from loyalty.application.access import Principal, Scope
from loyalty.application.balances import WalletFigures, wallet_figures
from loyalty.application.event_documents import MemberRef, PurchaseEvent
from loyalty.application.events import record_purchase_in
from loyalty.application.members import (
    EXTERNAL_PREFIX,
    MemberProfile,
    find_member,
    insert_member,
)
from loyalty.application.programs import ProgramContext, load_program
from loyalty.domain.discounts import line_discounts
from loyalty.domain.ledger import POINTS
from loyalty.domain.tiers import tier_by_id

READ_ONLY_GUESSES_MAX = 10_000
"""Programs whose last quote's path is remembered in one process (then forgotten at once)."""
_read_only: dict[str, bool] = {}
"""Per program id, whether its last quote could only read: the next quote starts the
transaction that path needs. A wrong guess (the program changed) costs one more
transaction, never a wrong answer: each path checks the program it loaded."""


def _remember(program_id: str, read_only: bool) -> None:
    if len(_read_only) >= READ_ONLY_GUESSES_MAX:
        _read_only.clear()
    _read_only[program_id] = read_only


class _RollBack(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__("quote")
        self.result = result


def quote_purchase(
    engine: Engine,
    principal: Principal,
    program_id: str,
    cart: PurchaseEvent,
    *,
    member: MemberRef | None,
    now: datetime,
    order_reference: str | None = None,
    nowait: bool = False,
) -> dict[str, Any]:
    """Points a cart would earn, per line and per rule, and the balance it would leave, and
    what the member could pay of it with points and cashback (after what holds of
    ``order_reference`` already took).
    Without a member, the cart is priced for a new member with no attributes. Raises
    ``ProgramNotFound``, ``MemberNotFound``, ``CurrencyMismatch``; with ``nowait``
    (``run_transaction``), ``WouldWait`` where it would wait, having written nothing."""

    def read(conn: Connection) -> dict[str, Any] | None:
        ctx = load_program(conn, principal, program_id, Scope.READ)
        if not purchase_batches.takes_bulk_path(ctx.settings):
            _remember(program_id, False)
            return None  # its purchases read and write state of their own: run one, roll back
        event, known = _member_of(conn, ctx, cart, member)
        offered = None if member is None else _discounts(conn, ctx, cart, known, now=now)
        preview = purchase_batches.preview_purchase(
            conn,
            ctx,
            event,
            member=known,
            new_customer=member is None,
            now=now,
            actor=principal.key_id,
        )
        payment = (
            None
            if known is None
            else _payment(conn, ctx, cart, known, order_reference, preview.before, now=now)
        )
        result = preview.body
        balance = result["balance"]
        after = (
            None
            if member is None
            else WalletFigures(
                balance=balance["balance"],
                available=balance["available"],
                pending=balance["pending"],
                debt=balance["debt"],
            )
        )
        return {**_quote_view(result, after), "discounts": offered, "payment": payment}

    def work(conn: Connection) -> dict[str, Any]:
        ctx = load_program(conn, principal, program_id, Scope.READ)
        _remember(program_id, purchase_batches.takes_bulk_path(ctx.settings))
        guest = member is None
        event, known = _member_of(conn, ctx, cart, member)
        if guest:
            insert_member(
                conn,
                program_id=program_id,
                external_id=event.member.as_ref()[len(EXTERNAL_PREFIX) :],
                profile=MemberProfile(),
                source="api",
                now=now,
            )
        offered = None if guest else _discounts(conn, ctx, event, known, now=now)
        payment = (
            None if known is None else _payment(conn, ctx, cart, known, order_reference, now=now)
        )
        body = event.model_dump(mode="json", exclude_none=True)
        # The purchase's own balance (with its expiry buckets) is not part of a quote: only
        # the four figures below are, and a guest gets none.
        result = record_purchase_in(
            conn, ctx, event, body, now=now, actor=principal.key_id, with_balance=False
        )
        after = (
            None
            if guest
            else wallet_figures(conn, program_id, result["member_id"], now=now)[POINTS]
        )
        raise _RollBack({**_quote_view(result, after), "discounts": offered, "payment": payment})

    # A program whose purchases take the bulk path is quoted by the code that records them,
    # from what one snapshot reads, writing nothing: no lock, no write transaction (on
    # SQLite a write transaction waits for every other writer). Any other program's quote
    # records the purchase and rolls it back. Which one a program needs is known once its
    # document is read, inside the transaction; the last answer for it picks the transaction.
    if _read_only.get(program_id, True):
        quoted = run_transaction(engine, read, write=False, snapshot=True, nowait=nowait)
        if quoted is not None:
            return quoted
    try:
        run_transaction(engine, work, nowait=nowait)
    except _RollBack as done:
        return done.result
    raise AssertionError("a quote always rolls back")


def _member_of(
    conn: Connection, ctx: ProgramContext, cart: PurchaseEvent, member: MemberRef | None
) -> tuple[PurchaseEvent, Row[Any] | None]:
    """The cart as the purchase of ``member`` (for a guest, of a customer with a new
    external id, who is not a member), and the member's row if they are one."""
    if member is None:
        guest = MemberRef(external_id=f"quote-guest-{new_id('q')}")
        return cart.model_copy(update={"member": guest}), None
    return cart, find_member(conn, ctx.program_id, cart.member.as_ref())


def _payment(
    conn: Connection,
    ctx: ProgramContext,
    cart: PurchaseEvent,
    known: Row[Any],
    order_reference: str | None,
    figures: dict[str, WalletFigures] | None = None,
    *,
    now: datetime,
) -> list[dict[str, Any]]:
    """What the member can pay with, from what they have before this cart earns anything
    (``figures``, if already read)."""
    return holds.payment_options(
        conn,
        ctx,
        known.id,
        order_total_minor=cart.total_minor,
        order_reference=order_reference,
        now=now,
        figures=figures,
    )


def _discounts(
    conn: Connection,
    ctx: ProgramContext,
    cart: PurchaseEvent,
    member: Row[Any] | None,
    *,
    now: datetime,
) -> dict[str, Any]:
    """The member discount lines a checkout should apply to this cart, by the spend so far and
    tier (before this cart) of ``member``, the cart's member if they exist."""
    settings = ctx.settings
    spend = 0
    tier_percent = 0
    if member is not None:
        spend = tiers.lifetime_spend(conn, ctx.program_id, member.id)
        tier_id, plans = memberships.standing(conn, ctx, member.id, now=now)
        held = memberships.tiers_by_set(conn, ctx, member.id, tier=tier_id, plans=plans)
        # A member in several tier sets gets the best of their tiers' discounts.
        tier_percent = max(
            (
                tier_by_id(tier_set, held[tier_set.set_id]).discount_percent
                for tier_set in settings.tier_sets
                if tier_set.set_id in held
            ),
            default=0,
        )
    lines = list(cart.to_purchase().lines)
    offered = line_discounts(
        settings.discounts, lines, cumulative_spend_minor=spend, tier_percent=tier_percent
    )
    return {
        "amount_minor": sum(d.amount_minor for d in offered),
        "cumulative_spend_minor": spend,
        "lines": [
            {
                "line_id": d.line_id,
                "percent": d.percent,
                "source": d.source,
                "amount_minor": d.amount_minor,
            }
            for d in offered
        ],
    }


def _quote_view(result: dict[str, Any], after: WalletFigures | None) -> dict[str, Any]:
    """``after``: the member's points after the purchase; None for a guest."""
    guest = after is None
    return {
        # A member the quote would enroll does not exist: no id to give.
        "member_id": None if guest or result["member_enrolled"] else result["member_id"],
        "member_enrolled": False if guest else result["member_enrolled"],
        "points_earned": result["points_earned"],
        "base_minor": result["base_minor"],
        "program_version": result["program_version"],
        "rules": result["rules"],
        "limited": result["limited"],
        "lines": result["lines"],
        "expires_at": result["lot"]["expires_at"] if result["lot"] else None,
        "debt_repaid": sum(lot["debt_repaid"] for lot in result["lots"]),
        # Pending vs available: points held by a pending period, and when each part can be
        # spent (the lots the purchase would create, without their ids).
        "points_pending": sum(lot["points"] for lot in result["lots"] if lot["available_at"]),
        "lots": [
            {"points": lot["points"], "available_at": lot["available_at"]} for lot in result["lots"]
        ],
        "cashback_earned_minor": result["cashback"]["earned_minor"] if result["cashback"] else None,
        "balance_after": None
        if after is None
        else {
            "balance": after.balance,
            "available": after.available,
            "pending": after.pending,
            "debt": after.debt,
        },
    }
