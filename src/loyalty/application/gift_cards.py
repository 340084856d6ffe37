"""Gift cards: a value in the program's minor units that checkouts spend in parts, across
several orders. Every spend and every cancelled spend is a row of ``gift_card_uses``
(append-only; one use and at most one cancellation per order), and what remains is the card's
value minus their sum. ``gift_cards.spent_minor`` is that sum kept as a projection in the same
transaction, so the database itself refuses an overdraft. Callers hold the lock on the card's
``reward_issues`` row, which serialises spends of one card."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from loyalty.adapters.db.tables import gift_card_uses, gift_cards
from loyalty.adapters.ids import new_id
from loyalty.domain.catalog import GiftCardBalance
from loyalty.domain.errors import GiftCardUseNotFound

USE = "use"
CANCEL = "cancel"


def open_card(conn: Connection, *, program_id: str, issue_id: str, value_minor: int) -> None:
    """Fix a newly issued card's value: a later change of the reward doesn't change it."""
    conn.execute(
        insert(gift_cards),
        {
            "issue_id": issue_id,
            "program_id": program_id,
            "value_minor": value_minor,
            "spent_minor": 0,
        },
    )


def balance(
    conn: Connection, issue: Any, *, unopened_value_minor: int | None
) -> GiftCardBalance | None:
    """The card's value and what is spent of it, from its uses; None when ``issue`` is no gift
    card. A card issued before gift cards had balances has no row yet: it is worth
    ``unopened_value_minor`` (its reward's value), unspent."""
    card = conn.execute(select(gift_cards).where(gift_cards.c.issue_id == issue.id)).first()
    if card is None:
        if unopened_value_minor is None:
            return None
        return GiftCardBalance(unopened_value_minor, 0)
    spent = conn.execute(
        select(func.coalesce(func.sum(gift_card_uses.c.amount_minor), 0)).where(
            gift_card_uses.c.issue_id == issue.id
        )
    ).scalar_one()
    # The projection and the uses are written together; disagreeing would be a bug.
    assert int(spent) == int(card.spent_minor), (issue.id, spent, card.spent_minor)
    return GiftCardBalance(int(card.value_minor), int(spent))


def find_use(conn: Connection, issue_id: str, order_reference: str, kind: str) -> Any:
    u = gift_card_uses.c
    return conn.execute(
        select(gift_card_uses).where(
            and_(u.issue_id == issue_id, u.kind == kind, u.order_reference == order_reference)
        )
    ).first()


def record(
    conn: Connection,
    issue: Any,
    before: GiftCardBalance,
    *,
    kind: str,
    amount_minor: int,
    order_reference: str,
    actor: str | None,
    now: datetime,
) -> GiftCardBalance:
    """Append a use (``amount_minor`` taken) or a cancellation (given back) and move the
    projection with it; returns the balance after."""
    after = before.take(amount_minor) if kind == USE else before.give_back(amount_minor)
    opened = select(gift_cards.c.issue_id).where(gift_cards.c.issue_id == issue.id)
    if conn.execute(opened).first() is None:
        open_card(
            conn, program_id=issue.program_id, issue_id=issue.id, value_minor=before.value_minor
        )
    conn.execute(
        insert(gift_card_uses),
        {
            "id": new_id("gcu"),
            "program_id": issue.program_id,
            "issue_id": issue.id,
            "kind": kind,
            "amount_minor": amount_minor if kind == USE else -amount_minor,
            "order_reference": order_reference,
            "actor": actor,
            "created_at": now,
        },
    )
    # Relative, so the database's check would catch an overdraft even if a lock had failed.
    delta = after.spent_minor - before.spent_minor
    conn.execute(
        update(gift_cards)
        .where(gift_cards.c.issue_id == issue.id)
        .values(spent_minor=gift_cards.c.spent_minor + delta)
    )
    return after


def use_to_cancel(conn: Connection, issue_id: str, order_reference: str) -> int:
    """What the order's use of the card took, to give back."""
    use = find_use(conn, issue_id, order_reference, USE)
    if use is None:
        raise GiftCardUseNotFound(order_reference)
    return int(use.amount_minor)
