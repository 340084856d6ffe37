"""Parallel spending of one member's cashback, alone and racing with a return that takes the
cashback back. The member's points wallet row is the lock for every wallet of the member, so
no hold may overdraw the cashback and every minor unit stays accounted for."""

from __future__ import annotations

from sqlalchemy import Engine

from loyalty.application import holds
from loyalty.application.audit import audit_ledger
from loyalty.domain.errors import InsufficientCashback
from loyalty.domain.ledger import CASH
from tests.reliability.helpers import NOW, assert_only, make_setup, race, successes

CASHBACK = 1_000
THREADS = 40
SPEND = 50  # 40 x 50 = 2,000 asked for, twice the cashback


def _setup(engine: Engine, **document: object):
    s = make_setup(engine, cashback={"rate_bp": 10_000}, **document)
    member = s.enroll("C1")
    # A line-less purchase of 10.00 at 100% cashback: 1,000 of cashback.
    s.purchase(member, "O1", points=10)
    assert s.balance(member)["cashback"]["balance_minor"] == CASHBACK
    return s, member


def _hold(s, member: str, i: int):
    return holds.reserve(
        s.engine,
        s.principal,
        s.program_id,
        member,
        points=SPEND,
        order_reference=f"W{i}",
        ttl_seconds=600,
        idempotency_key=f"hold-{i}",
        now=NOW,
        asset=CASH,
    )


def test_parallel_cashback_holds_never_overdraw(engine: Engine) -> None:
    s, member = _setup(engine)
    results = race(THREADS, lambda i: _hold(s, member, i))
    assert_only(results, (InsufficientCashback,), "parallel cashback holds")
    won = successes(results)
    assert len(won) == CASHBACK // SPEND
    cash = s.balance(member)["cashback"]
    assert (cash["balance_minor"], cash["debt_minor"]) == (0, 0)
    assert audit_ledger(engine) == []


def test_cashback_holds_racing_with_a_return_account_for_every_unit(engine: Engine) -> None:
    s, member = _setup(engine)
    results = race(
        11,
        lambda i: s.return_order("R1", "O1") if i == 10 else _hold(s, member, i),
    )
    assert_only(results, (InsufficientCashback,), "holds racing a return")
    won_holds = [r for r in successes(results[:10])]
    returned = results[10]
    assert not isinstance(returned, BaseException), returned
    charged = returned.body["cashback"]["charged_minor"]
    # The return takes back all the order's cashback, whatever holds got first: what was
    # already held becomes a debt (the program allows debt by default).
    assert charged == CASHBACK
    cash = s.balance(member)["cashback"]
    held = SPEND * len(won_holds)
    assert cash["balance_minor"] == CASHBACK - held - charged
    assert cash["debt_minor"] == returned.body["cashback"]["debt_added_minor"] == held
    assert audit_ledger(engine) == []
