"""Random sequences of requests through the HTTP API, each answer and every member's balance
checked after every step against a small reference model of the program.

``tests/property/test_ledger_model.py`` checks the ledger's lots in depth through the
application layer; this one checks what a client sees: status codes, problem codes, the
points an answer states, ``Idempotent-Replayed`` on a replay, and the balance endpoint, with
the route, validation, group commit and error table in the way. Runs on SQLite and
PostgreSQL; ``LOYALTY_RELIABILITY_FULL=1`` (``make test-reliability``) runs more and longer
sequences.

The model, written from the documented rules of a program with the default wallet (1 point
per 100 minor units spent, rounded down; no expiry; no pending period; ``allow_debt``):

* a purchase earns ``floor(total / 100)``; it repays the member's debt first, and the balance
  grows by all of it; the same order id again with the same body is a replay (same answer,
  nothing recorded), with another body ``409 idempotency_conflict``;
* a purchase for someone who is not a member is ``404 member_not_found`` (no auto-enrolment);
* a redemption of more than the points available is ``422 insufficient_points`` and burns
  nothing; otherwise the balance falls by exactly the points asked;
* a manual credit is earned like a purchase (debt first);
* returning a whole order takes its points back: from the points left, and what was spent
  already becomes debt; the balance falls by the order's points either way;
* a quote states what the purchase would earn and leave, and changes nothing.

The balance is the points left less the debt; with no expiry or pending period the points
available are the points left.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine

from loyalty.application.access import Scope, create_api_key
from loyalty.entrypoints.api.app import create_app
from tests.property.test_ledger_model import reset_database

FULL = os.environ.get("LOYALTY_RELIABILITY_FULL") == "1"
MEMBERS = ["ana", "ben"]
"""Enrolled when each sequence starts."""
NAMES = [*MEMBERS, "zoe"]
"""``zoe`` is not a member until a sequence enrols her."""
prices = st.integers(min_value=0, max_value=12_000)
quantities = st.integers(min_value=1, max_value=4)


@dataclass
class Member:
    points_left: int = 0
    """Points in the member's lots (with no expiry or pending period: all available)."""
    debt: int = 0

    @property
    def balance(self) -> int:
        return self.points_left - self.debt

    def credit(self, points: int) -> int:
        """Earn ``points``, repaying debt first; returns what repaid debt."""
        repaid = min(points, self.debt)
        self.debt -= repaid
        self.points_left += points - repaid
        return repaid


@dataclass
class Order:
    member: str
    body: dict[str, Any]
    points: int
    returned: bool = False


@dataclass
class Model:
    members: dict[str, Member] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)


def _earned(quantity: int, price: int) -> int:
    """What a purchase of one line earns under the program's default rate: a point per 100
    minor units, rounded down."""
    return quantity * price // 100


def _problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def machine_for(engine: Engine) -> type[RuleBasedStateMachine]:
    class ApiMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.model = Model()
            self.ids = itertools.count()
            self.client: TestClient | None = None
            self.last_order_id = ""

        def teardown(self) -> None:
            if self.client is not None:
                self.client.__exit__(None, None, None)

        # -- set-up ------------------------------------------------------------------------

        @initialize()
        def open_program(self) -> None:
            reset_database(engine)
            issued = create_api_key(
                engine,
                tenant_name="model",
                name="admin",
                scopes=[Scope.ADMIN],
                program_id=None,
                now=datetime.now(UTC),
            )
            self.client = TestClient(create_app(engine))
            self.client.__enter__()
            self.client.headers["Authorization"] = f"Bearer {issued.token}"
            r = self.client.post("/v1/programs", json={"name": "Model", "currency": "EUR"})
            assert r.status_code == 201, r.text
            self.base = f"/v1/programs/{r.json()['id']}"
            for name in MEMBERS:
                self.enroll(name)

        def post(self, path: str, body: dict[str, Any], key: str | None = None) -> Any:
            assert self.client is not None
            headers = {"Idempotency-Key": key} if key else {}
            return self.client.post(self.base + path, json=body, headers=headers)

        def new_id(self, prefix: str) -> str:
            return f"{prefix}-{next(self.ids)}"

        def purchase_body(self, order_id: str, name: str, quantity: int, price: int) -> Any:
            return {
                "type": "purchase",
                "id": order_id,
                "member": {"external_id": name},
                "occurred_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat(),
                "currency": "EUR",
                "total_minor": quantity * price,
                "lines": [{"line_id": "1", "quantity": quantity, "unit_price_minor": price}],
            }

        # -- rules -----------------------------------------------------------------------

        @rule(name=st.sampled_from(NAMES))
        def enroll(self, name: str) -> None:
            r = self.post("/members", {"external_id": name})
            if name in self.model.members:
                _problem(r, 409, "member_already_exists")
            else:
                assert r.status_code == 201, r.text
                self.model.members[name] = Member()

        @rule(name=st.sampled_from(NAMES), quantity=quantities, price=prices)
        def purchase(self, name: str, quantity: int, price: int) -> None:
            order_id = self.new_id("O")
            body = self.purchase_body(order_id, name, quantity, price)
            r = self.post("/events", body)
            member = self.model.members.get(name)
            if member is None:
                _problem(r, 404, "member_not_found")
                return
            assert r.status_code == 201, r.text
            points = _earned(quantity, price)
            repaid = member.credit(points)
            answer = r.json()
            assert answer["points_earned"] == points
            assert (answer["lot"]["debt_repaid"] if answer["lot"] else 0) == repaid
            self.model.orders[order_id] = Order(name, body, points)
            self.last_order_id = order_id

        @precondition(lambda self: self.model.orders)
        @rule(data=st.data(), same_body=st.booleans())
        def send_an_order_again(self, data: st.DataObject, same_body: bool) -> None:
            order_id = data.draw(st.sampled_from(sorted(self.model.orders)))
            order = self.model.orders[order_id]
            body = dict(order.body)
            if not same_body:
                body["total_minor"] += 1
            r = self.post("/events", body)
            if same_body:
                assert r.status_code == 201, r.text
                assert r.headers.get("Idempotent-Replayed") == "true"
                assert r.json()["points_earned"] == order.points
            else:
                _problem(r, 409, "idempotency_conflict")

        @precondition(lambda self: self.model.members)
        @rule(data=st.data(), how=st.sampled_from(["all", "one more", "some"]))
        def redeem(self, data: st.DataObject, how: str) -> None:
            # Spending everything, or one point more than there is, is what makes a later
            # return run into debt or a redemption be refused: drawn as often as the rest.
            name = data.draw(st.sampled_from(sorted(self.model.members)))
            member = self.model.members[name]
            points = {
                "all": max(member.points_left, 1),
                "one more": member.points_left + 1,
                "some": data.draw(st.integers(1, max(member.points_left, 1))),
            }[how]
            self.redeem_points(name, points)

        def redeem_points(self, name: str, points: int) -> None:
            member = self.model.members[name]
            r = self.post(
                f"/members/ext:{name}/redemptions", {"points": points}, key=self.new_id("r")
            )
            if points > member.points_left:
                _problem(r, 422, "insufficient_points")
                assert r.json()["points_available"] == member.points_left
            else:
                assert r.status_code == 201, r.text
                member.points_left -= points

        @precondition(lambda self: self.model.members)
        @rule(data=st.data(), points=st.integers(min_value=1, max_value=80))
        def credit(self, data: st.DataObject, points: int) -> None:
            name = data.draw(st.sampled_from(sorted(self.model.members)))
            r = self.post(
                f"/members/ext:{name}/adjustments",
                {"points": points, "reason": "goodwill"},
                key=self.new_id("a"),
            )
            assert r.status_code == 201, r.text
            self.model.members[name].credit(points)

        @precondition(lambda self: any(not o.returned for o in self.model.orders.values()))
        @rule(data=st.data())
        def return_an_order(self, data: st.DataObject) -> None:
            open_orders = sorted(k for k, o in self.model.orders.items() if not o.returned)
            self.return_order(data.draw(st.sampled_from(open_orders)))

        def return_order(self, order_id: str) -> None:
            order = self.model.orders[order_id]
            r = self.post(
                "/events",
                {
                    "type": "return",
                    "id": self.new_id("R"),
                    "order_id": order_id,
                    "occurred_at": datetime.now(UTC).isoformat(),
                },
            )
            assert r.status_code == 201, r.text
            member = self.model.members[order.member]
            taken = min(order.points, member.points_left)
            member.points_left -= taken
            member.debt += order.points - taken
            order.returned = True

        @rule(name=st.sampled_from(MEMBERS), quantity=quantities, price=prices)
        def buy_spend_everything_and_return(self, name: str, quantity: int, price: int) -> None:
            # The way into debt, three requests long, as one step: rare by chance.
            self.purchase(name, quantity, price)
            self.redeem_points(name, max(self.model.members[name].points_left, 1))
            self.return_order(self.last_order_id)

        @precondition(lambda self: any(m.debt for m in self.model.members.values()))
        @rule(data=st.data(), quantity=quantities, price=prices)
        def purchase_while_in_debt(self, data: st.DataObject, quantity: int, price: int) -> None:
            # Debt needs a return after the points were spent; drawn on purpose once it
            # exists, so that repaying it is tried in most sequences, not by luck.
            indebted = sorted(n for n, m in self.model.members.items() if m.debt)
            self.purchase(data.draw(st.sampled_from(indebted)), quantity, price)

        @precondition(
            lambda self: any(
                not o.returned and o.points > self.model.members[o.member].points_left
                for o in self.model.orders.values()
            )
        )
        @rule(data=st.data())
        def return_an_order_already_spent(self, data: st.DataObject) -> None:
            spent = sorted(
                k
                for k, o in self.model.orders.items()
                if not o.returned and o.points > self.model.members[o.member].points_left
            )
            self.return_order(data.draw(st.sampled_from(spent)))

        @rule(name=st.sampled_from(NAMES), quantity=quantities, price=prices)
        def quote(self, name: str, quantity: int, price: int) -> None:
            body = self.purchase_body("unused", name, quantity, price)
            cart = {k: v for k, v in body.items() if k not in ("type", "id")}
            r = self.post("/quote", cart)
            member = self.model.members.get(name)
            if member is None:
                _problem(r, 404, "member_not_found")
                return
            assert r.status_code == 200, r.text
            points = _earned(quantity, price)
            after = Member(member.points_left, member.debt)
            repaid = after.credit(points)
            answer = r.json()
            assert (answer["points_earned"], answer["debt_repaid"]) == (points, repaid)
            assert answer["balance_after"] == {
                "balance": after.balance,
                "available": after.points_left,
                "pending": 0,
                "debt": after.debt,
            }

        # -- checked after every step -------------------------------------------------------

        @invariant()
        def balances_match_the_model(self) -> None:
            if self.client is None:
                return
            for name, member in self.model.members.items():
                r = self.client.get(f"{self.base}/members/ext:{name}/balance")
                assert r.status_code == 200, r.text
                view = r.json()
                assert (view["balance"], view["available"], view["debt"], view["pending"]) == (
                    member.balance,
                    member.points_left,
                    member.debt,
                    0,
                ), name

    return ApiMachine


@pytest.mark.slow
def test_random_requests_get_the_answers_and_balances_the_model_predicts(engine):
    run_state_machine_as_test(
        machine_for(engine),
        settings=settings(
            max_examples=100 if FULL else 15,
            stateful_step_count=50 if FULL else 30,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
