"""Tills spending one gift card at once.

On PostgreSQL the lock on the card's row serialises the spends (the database's check on
``gift_cards.spent_minor`` would refuse an overdraft even without it); on SQLite
``BEGIN IMMEDIATE`` does. Either way the card is never overdrawn, each order is spent at most
once, and what remains is the value less the sum of the recorded uses."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from loyalty.adapters.db.tables import gift_card_uses, gift_cards
from loyalty.application.catalog import cancel_gift_card_use, redeem_reward, use_coupon
from loyalty.domain.errors import GiftCardBalanceShort
from tests.reliability.helpers import NOW, assert_only, failures, make_setup, race, successes

VALUE = 5_000
THREADS = 32
SPEND = 300  # 32 x 300 = 9,600 asked of a 5,000 card: 16 spends fit, 200 is left


def _card(engine: Engine) -> tuple[object, str]:
    s = make_setup(
        engine,
        rewards=[
            {
                "id": "gift",
                "name": "EUR 50 gift card",
                "type": "gift_card",
                "cost_points": 10,
                "value_minor": VALUE,
            }
        ],
    )
    member = s.enroll("C1")
    s.purchase(member, "O1", points=100)
    issued = redeem_reward(
        engine, s.principal, s.program_id, member, "gift", idempotency_key="g", now=NOW
    )
    return s, str(issued.body["code"])


def _recorded(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        uses = conn.execute(select(func.count()).select_from(gift_card_uses)).scalar_one()
        total = conn.execute(select(func.sum(gift_card_uses.c.amount_minor))).scalar_one()
        spent = conn.execute(select(gift_cards.c.spent_minor)).scalar_one()
    return int(uses), int(total or 0), int(spent)


def test_tills_spending_one_card_at_once_never_overdraw_it(engine: Engine) -> None:
    s, code = _card(engine)
    results = race(
        THREADS,
        lambda i: use_coupon(
            engine,
            s.principal,
            s.program_id,
            code,
            order_reference=f"T-{i}",
            amount_minor=SPEND,
            now=NOW,
        ),
    )
    assert_only(results, (GiftCardBalanceShort,), "parallel gift card spends")
    won = successes(results)
    assert len(won) == VALUE // SPEND
    # Each till saw what remained after its own spend: all different, down to 200.
    remaining = sorted(o.body["remaining_minor"] for o in won)
    assert remaining == [VALUE % SPEND + SPEND * k for k in range(len(won))]
    for exc in failures(results):
        assert exc.context["remaining_minor"] == VALUE % SPEND
    assert _recorded(engine) == (len(won), len(won) * SPEND, len(won) * SPEND)


def test_one_order_sent_by_several_tills_at_once_is_spent_once(engine: Engine) -> None:
    s, code = _card(engine)
    results = race(
        8,
        lambda i: use_coupon(
            engine,
            s.principal,
            s.program_id,
            code,
            order_reference="T-1",
            amount_minor=SPEND,
            now=NOW,
        ),
    )
    assert_only(results, (), "one order, many tills")
    outcomes = successes(results)
    assert sum(not o.replayed for o in outcomes) == 1
    assert {o.body["remaining_minor"] for o in outcomes} == {VALUE - SPEND}
    assert _recorded(engine) == (1, SPEND, SPEND)
    # Returning the order from several tills at once gives the amount back once.
    backs = race(
        4,
        lambda i: cancel_gift_card_use(
            engine, s.principal, s.program_id, code, order_reference="T-1", now=NOW
        ),
    )
    assert_only(backs, (), "one return, many tills")
    assert sum(not o.replayed for o in successes(backs)) == 1
    assert _recorded(engine) == (2, 0, 0)
