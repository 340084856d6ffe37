"""A quote of a program whose purchases take the bulk path, and the balance endpoint, read the
member's wallet and lots in separate statements, without a lock. On PostgreSQL they do so in
one ``REPEATABLE READ`` snapshot: under ``READ COMMITTED`` each statement sees what has
committed by its own start, so a purchase committing between the two would give a balance
from before it and lots from after it. Here purchases of one member commit without pause
while quotes (or balance reads) of the same member run, and every answer must describe one
committed state (plus the cart, for a quote)."""

from __future__ import annotations

import threading

import pytest

from loyalty.application.balances import get_balance
from loyalty.application.event_documents import MemberRef
from loyalty.application.quote import quote_purchase
from tests.reliability.helpers import NOW, make_setup, purchase_event

pytestmark = pytest.mark.postgresql

BASE_PENDING = 10
"""What each purchase of 1,000 minor units earns at the base rate, held 14 days."""
BONUS_AVAILABLE = 5
"""Its bonus, spendable at once."""
READS = 150


@pytest.mark.parametrize("read", ["quote", "balance"])
def test_every_answer_reads_one_committed_state_while_purchases_of_its_member_commit(
    postgres_engine, read
):
    setup = make_setup(
        postgres_engine,
        points={"pending_days": 14},
        rules=[
            {
                "id": "bonus",
                "name": "Bonus, spendable at once",
                "trigger": "purchase",
                "pending_days": 0,
                "effect": {"type": "fixed", "points": BONUS_AVAILABLE},
            }
        ],
    )
    member_id = setup.enroll("M")
    member = MemberRef(id=member_id)
    stop = threading.Event()
    errors: list[BaseException] = []
    purchases = 0

    def buy() -> None:
        nonlocal purchases
        try:
            while not stop.is_set():
                setup.purchase(member_id, f"O{purchases}", points=BASE_PENDING)
                purchases += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    buyer = threading.Thread(target=buy, daemon=True)
    buyer.start()
    seen: list[tuple[int, int]] = []
    try:
        for _ in range(READS):
            if read == "quote":
                cart = purchase_event("cart", member={"id": member_id}, total_minor=1000)
                answer = quote_purchase(
                    postgres_engine,
                    setup.principal,
                    setup.program_id,
                    cart,
                    member=member,
                    now=NOW,
                )["balance_after"]
            else:
                answer = get_balance(
                    postgres_engine, setup.principal, setup.program_id, member_id, now=NOW
                )
            seen.append((answer["balance"], answer["pending"]))
    finally:
        stop.set()
        buyer.join(timeout=60)
    assert not errors, errors
    assert purchases > 0
    per_purchase = BASE_PENDING + BONUS_AVAILABLE
    for balance, pending in seen:
        # After k committed purchases: balance 15 k and pending 10 k (a quote adds its cart:
        # k + 1 of each).
        assert balance % per_purchase == 0, (balance, pending)
        assert pending * per_purchase == balance * BASE_PENDING, (balance, pending)
    # The quotes saw the purchases go by, not one state over and over.
    assert len({balance for balance, _ in seen}) > 1
