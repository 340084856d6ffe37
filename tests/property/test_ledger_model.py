"""Random sequences of operations through the application layer, checked after every step
against an independent model of the member's lots and debt, and against the ledger audit.

Runs on SQLite and PostgreSQL (the ``engine`` fixture). Each example starts from an emptied
database with its own tenant, program (random earn rate, rounding, expiry and negative-balance
policy) and two members, so examples never see each other's rows and a failure shrinks to the
steps that cause it.

The model is written from the documented rules, not from the engine's code paths:

* earning creates one lot, earned when the purchase occurred (never later than now) and
  expiring ``days`` after that; a debt is repaid out of it first;
* a redemption, debit or return (and, in the engine, a credit too) first expires the member's
  overdue lots, so points past their expiry are never spent or taken back; a refused operation
  does not;
* a burn (redemption, debit adjustment) takes lots earliest expiry first, never-expiring last,
  then oldest; a burn beyond what is available is refused and changes nothing;
* a credit that would expire at or before now is refused;
* a return reverses what the order earned less what the rest of the basket earns alone at
  the program's rate (each line's share of the points is still reported per line, and the
  difference as ``points_adjusted``); all units back means all points back; over all
  returns of an order the member is charged what they reverse less what expired unspent
  from the purchase's lot; the charge is taken first from the purchase's own lot, then from
  the other lots in consumption order, and what was already spent becomes debt
  (``allow_debt``) or is written off (``take_available``);
* cancelling a redemption gives every lot back what the redemption took (keeping the lot's
  expiry), repaying debt first;
* a return naming lines of an order recorded without lines is refused;
* the expiry job empties every lot whose ``expires_at`` is at or before ``now``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, and_, select

from loyalty.adapters.db.tables import lots as lots_table
from loyalty.adapters.db.tables import metadata
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.audit import audit_ledger
from loyalty.application.balances import get_balance, get_statement
from loyalty.application.event_documents import (
    LineItem,
    MemberRef,
    PurchaseEvent,
    ReturnEvent,
    ReturnLine,
)
from loyalty.application.events import submit_event
from loyalty.application.expiry import ExpiryReport, expire_due_lots
from loyalty.application.members import MemberProfile, enroll_member
from loyalty.application.program_document import (
    EarnRateDocument,
    ExpiryDocument,
    PointsWalletDocument,
    ProgramDocument,
)
from loyalty.application.programs import create_program
from loyalty.application.redemptions import adjust_points, cancel_redemption, redeem_points
from loyalty.domain.errors import (
    DomainError,
    ExpiryInPast,
    IdempotencyConflict,
    InsufficientPoints,
    MemberMismatch,
    RedemptionAlreadyCancelled,
    ReturnExceedsPurchase,
    UnknownOrderLine,
)
from loyalty.domain.points import Rounding
from loyalty.domain.program import ExpiryPolicy, NegativeBalancePolicy

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
STATEMENT_LIMIT = 200  # the API's page maximum; no example makes more entries
_ids = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


# --- the reference model ------------------------------------------------------------------


@dataclass(eq=False)
class MLot:
    lot_id: str
    seq: int
    amount: int
    remaining: int
    earned_at: datetime
    expires_at: datetime | None
    expired: int = 0
    """Points that expired out of this lot, over its life."""

    def key(self) -> tuple[Any, ...]:
        return (
            self.expires_at is None,
            self.expires_at or self.earned_at,
            self.earned_at,
            self.seq,
        )


@dataclass(eq=False)
class MMember:
    member_id: str
    lots: list[MLot] = field(default_factory=list)
    debt: int = 0
    statement: list[tuple[str, int]] = field(default_factory=list)
    """(kind, signed points) of every entry on the member's account, oldest first."""

    @property
    def balance(self) -> int:
        return sum(lot.remaining for lot in self.lots) - self.debt

    def overdue(self, now: datetime) -> list[MLot]:
        return [
            lot
            for lot in self.lots
            if lot.expires_at is not None and lot.expires_at <= now and lot.remaining > 0
        ]

    def available(self, now: datetime) -> int:
        return max(self.balance - sum(lot.remaining for lot in self.overdue(now)), 0)

    def expire(self, now: datetime) -> list[MLot]:
        due = self.overdue(now)
        if due:
            self.statement.append(("expire", -sum(lot.remaining for lot in due)))
            for lot in due:
                lot.expired += lot.remaining
                lot.remaining = 0
        return due


@dataclass(eq=False)
class MLine:
    line_id: str
    sku: str | None
    quantity: int
    points: int
    returned: int = 0
    unit_price_minor: int = 0
    discount_minor: int = 0


@dataclass(eq=False)
class MOrder:
    order_id: str
    member: MMember
    lines: list[MLine]
    points: int
    points_returned: int = 0
    """Of an order without lines: the points its returns reversed."""
    lot: MLot | None = None
    reversed: int = 0
    """Points reversed by all returns of the order so far."""
    charged: int = 0
    """Points those returns charged to the member (taken, made debt or written off)."""


@dataclass(eq=False)
class MRedemption:
    redemption_id: str
    member: MMember
    points: int
    idempotency_key: str
    takes: list[tuple[MLot, int]]
    body: dict[str, Any]
    cancelled: bool = False


class ModelRejects(Exception):
    """The model says the engine must refuse: with this error type and context."""

    def __init__(self, error: type[DomainError], context: dict[str, Any]) -> None:
        super().__init__(error.__name__)
        self.error = error
        self.context = context


def reference_round(value: Fraction, rounding: Rounding) -> int:
    if rounding is Rounding.FLOOR:
        return math.floor(value)
    if rounding is Rounding.CEIL:
        return math.ceil(value)
    if rounding is Rounding.HALF_UP:
        return math.floor(value + Fraction(1, 2))
    return round(value)


def reference_allocate(total: int, weights: list[int]) -> list[int]:
    """Largest remainder over exact fractions; ties to the earlier part."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        return [0] * len(weights)
    exact = [Fraction(total * w, weight_sum) for w in weights]
    shares = [math.floor(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def take(lots: list[MLot], points: int) -> tuple[list[tuple[MLot, int]], int]:
    """Take up to ``points`` in consumption order, applying it to the model lots."""
    takes = []
    left = points
    for lot in sorted((x for x in lots if x.remaining > 0), key=MLot.key):
        if left == 0:
            break
        step = min(lot.remaining, left)
        lot.remaining -= step
        takes.append((lot, step))
        left -= step
    return takes, left


# --- strategies ---------------------------------------------------------------------------


@st.composite
def purchases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int]:
    n = draw(st.integers(min_value=0, max_value=3))
    explicit_ids = draw(st.booleans())
    lines = []
    for i in range(n):
        quantity = draw(st.integers(min_value=1, max_value=4))
        price = draw(st.integers(min_value=0, max_value=5000))
        gross = quantity * price
        discount = draw(st.one_of(st.just(0), st.integers(min_value=0, max_value=gross)))
        lines.append(
            {
                "line_id": f"L{i + 1}" if explicit_ids else None,
                "sku": draw(st.sampled_from(["A", "B", None])),
                "quantity": quantity,
                "unit_price_minor": price,
                "discount_minor": discount,
            }
        )
    if lines:
        total = sum(li["quantity"] * li["unit_price_minor"] - li["discount_minor"] for li in lines)
    else:
        total = draw(st.integers(min_value=0, max_value=20_000))
    return lines, total


program_documents = st.builds(
    lambda points, per, rounding, expiry, policy: ProgramDocument(
        name="property",
        currency="EUR",
        points=PointsWalletDocument(
            earn=EarnRateDocument(points=points, per_spend_minor=per, rounding=rounding),
            expiry=ExpiryDocument()
            if expiry is None
            else ExpiryDocument(policy=ExpiryPolicy.AFTER_DAYS, days=expiry),
            negative_balance=policy,
        ),
    ),
    st.integers(min_value=1, max_value=3),
    st.sampled_from([50, 100, 250]),
    st.sampled_from(Rounding),
    st.sampled_from([None, 1, 2, 3]),
    st.sampled_from(NegativeBalancePolicy),
)


# --- the machine --------------------------------------------------------------------------

OPERATIONS = [
    *["purchase"] * 4,
    *["time_passes"] * 3,
    *["return_whole_order"] * 2,
    *["return_some_units"] * 2,
    "return_refused",
    *["redeem_some"] * 2,
    "redeem_near_the_balance",
    *["cancel"] * 2,
    "repeat_a_redemption_request",
    "repeat_an_event",
    *["credit"] * 2,
    "debit",
    *["run_expiry"] * 2,
]


def reset_database(engine: Engine) -> None:
    # DELETE, not TRUNCATE: the tables hold a few hundred rows, and TRUNCATE's file work
    # costs far more on PostgreSQL than deleting them.
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


def machine_for(engine: Engine) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.ready = False
            self.now = T0
            self.lot_seq = itertools.count()
            self.members: list[MMember] = []
            self.orders: list[MOrder] = []
            self.redemptions: list[MRedemption] = []
            # Accepted events and the response they got, to send again.
            self.recorded_events: list[tuple[MMember, Any, dict[str, Any]]] = []

        # -- set-up ------------------------------------------------------------------------

        @initialize(document=program_documents)
        def open_program(self, document: ProgramDocument) -> None:
            reset_database(engine)
            issued = create_api_key(
                engine,
                tenant_name=unique("tenant"),
                name="admin",
                scopes=[Scope.ADMIN],
                program_id=None,
                now=T0,
            )
            self.principal = authenticate(engine, issued.token)
            wallet = document.points
            self.policy = wallet.negative_balance
            self.expiry_days = wallet.expiry.days
            self.earn = wallet.earn
            self.program_id = create_program(engine, self.principal, document, now=T0).body["id"]
            for n in range(2):
                body = enroll_member(
                    engine,
                    self.principal,
                    self.program_id,
                    external_id=f"C{n}",
                    profile=MemberProfile(),
                    now=T0,
                ).body
                self.members.append(MMember(body["id"]))
            self.ready = True

        # -- helpers -----------------------------------------------------------------------

        def default_expiry(self, earned_at: datetime) -> datetime | None:
            if self.expiry_days is None:
                return None
            return earned_at + timedelta(days=self.expiry_days)

        def earn_into(
            self,
            member: MMember,
            lot_id: str,
            points: int,
            *,
            earned_at: datetime,
            expires_at: datetime | None,
        ) -> tuple[MLot, int]:
            repaid = min(points, member.debt)
            member.debt -= repaid
            lot = MLot(lot_id, next(self.lot_seq), points, points - repaid, earned_at, expires_at)
            member.lots.append(lot)
            return lot, repaid

        def snapshot(self, member: MMember) -> tuple[Any, ...]:
            """Everything the engine shows about a member: balance, full statement, lots."""
            return (
                get_balance(
                    engine, self.principal, self.program_id, member.member_id, now=self.now
                ),
                self.statement(member),
                self.stored_lots(member),
            )

        def statement(self, member: MMember) -> list[dict[str, Any]]:
            page = get_statement(
                engine,
                self.principal,
                self.program_id,
                member.member_id,
                limit=STATEMENT_LIMIT,
                cursor=None,
            )
            assert page["next_cursor"] is None
            return list(page["items"])

        def stored_lots(self, member: MMember) -> dict[str, tuple[int, int, datetime | None]]:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(
                        lots_table.c.id,
                        lots_table.c.amount,
                        lots_table.c.remaining,
                        lots_table.c.expires_at,
                    ).where(
                        and_(
                            lots_table.c.program_id == self.program_id,
                            lots_table.c.member_id == member.member_id,
                        )
                    )
                ).all()
            return {r.id: (r.amount, r.remaining, r.expires_at) for r in rows}

        def expect_refusal(self, member: MMember, rejection: ModelRejects, action: Any) -> None:
            """The engine refuses with the model's error and context, and nothing about the
            member changes (the invariant then checks every member against the model, which a
            refusal leaves as it was)."""
            before = self.snapshot(member)
            with pytest.raises(rejection.error) as caught:
                action()
            for key, value in rejection.context.items():
                assert caught.value.context[key] == value, (key, caught.value.context)
            assert self.snapshot(member) == before

        def burn(self, member: MMember, points: int) -> list[tuple[MLot, int]]:
            """The model of a redemption or debit: refuse beyond what is available (overdue
            lots do not count), else expire the overdue lots and take."""
            available = member.available(self.now)
            if points > available:
                raise ModelRejects(
                    InsufficientPoints, {"points_required": points, "points_available": available}
                )
            member.expire(self.now)
            takes, left = take(member.lots, points)
            assert left == 0
            return takes

        # -- the operations ----------------------------------------------------------------
        #
        # One rule draws the next operation from a weighted list, so every example mixes all
        # of them (separate rules would let Hypothesis switch whole operations off for an
        # example, and returns, debt and expiry would then rarely meet).

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            operation = data.draw(st.sampled_from(OPERATIONS), label="operation")
            if operation.startswith("return_") and not self.orders:
                operation = "purchase"
            if operation in {"cancel", "repeat_a_redemption_request"} and not self.redemptions:
                operation = "redeem_near_the_balance"
            getattr(self, operation)(data)

        def member(self, data: st.DataObject) -> MMember:
            return self.members[data.draw(st.integers(0, 1), label="member")]

        def time_passes(self, data: st.DataObject) -> None:
            self.now += timedelta(hours=data.draw(st.integers(1, 48), label="hours"))

        def purchase(self, data: st.DataObject) -> None:
            """A purchase sent ``hours_late`` after it happened (negative: dated ahead)."""
            member = self.member(data)
            lines, total = data.draw(purchases(), label="basket")
            hours_late = data.draw(
                st.one_of(st.just(0), st.integers(min_value=-24, max_value=96)), label="hours late"
            )
            order_id = unique("O")
            occurred_at = self.now - timedelta(hours=hours_late)
            event = PurchaseEvent(
                type="purchase",
                id=order_id,
                member=MemberRef(id=member.member_id),
                occurred_at=occurred_at,
                currency="EUR",
                total_minor=total,
                lines=[LineItem(**{k: v for k, v in li.items() if v is not None}) for li in lines],
            )
            body = submit_event(engine, self.principal, self.program_id, event, now=self.now).body
            self.recorded_events.append((member, event, body))

            bases = [li["quantity"] * li["unit_price_minor"] - li["discount_minor"] for li in lines]
            base = sum(bases) if lines else total
            points = reference_round(
                Fraction(base * self.earn.points, self.earn.per_spend_minor), self.earn.rounding
            )
            shares = reference_allocate(points, bases)
            order = MOrder(
                order_id,
                member,
                [
                    MLine(
                        li["line_id"] or str(i),
                        li["sku"],
                        li["quantity"],
                        share,
                        unit_price_minor=li["unit_price_minor"],
                        discount_minor=li["discount_minor"],
                    )
                    for i, (li, share) in enumerate(zip(lines, shares, strict=True), start=1)
                ],
                points,
            )
            self.orders.append(order)
            assert body["points_earned"] == points
            assert body["base_minor"] == base
            assert [(x["line_id"], x["points"]) for x in body["lines"]] == [
                (line.line_id, line.points) for line in order.lines
            ]
            if points == 0:
                assert body["lot"] is None
                return
            earned_at = min(occurred_at, self.now)
            expires_at = self.default_expiry(earned_at)
            order.lot, repaid = self.earn_into(
                member, body["lot"]["id"], points, earned_at=earned_at, expires_at=expires_at
            )
            assert body["lot"]["expires_at"] == (expires_at.isoformat() if expires_at else None)
            assert body["lot"]["points"] == points
            assert body["lot"]["debt_repaid"] == repaid
            member.statement.append(("earn", points))

        def open_orders(self) -> list[MOrder]:
            """Orders with units (or, without lines, points) not yet returned."""
            return [
                o
                for o in self.orders
                if any(x.returned < x.quantity for x in o.lines)
                or (not o.lines and o.points_returned < o.points)
            ] or self.orders

        def return_whole_order(self, data: st.DataObject) -> None:
            order = data.draw(st.sampled_from(self.open_orders()), label="order")
            self.give_back(order, None, wrong_member=False)

        def return_some_units(self, data: st.DataObject) -> None:
            """One or two request lines, by line id or by SKU, mostly within what is left."""
            order = data.draw(st.sampled_from(self.open_orders()), label="order")
            requested: list[tuple[str | None, str | None, int]] = []
            for _ in range(data.draw(st.integers(1, 2), label="request lines")):
                if not order.lines:
                    line_id, sku = data.draw(st.sampled_from([("L1", None), (None, "A")]))
                    requested.append((line_id, sku, 1))
                    continue
                line = data.draw(st.sampled_from(order.lines), label="line")
                by_sku = line.sku is not None and data.draw(st.booleans(), label="by sku")
                left = line.quantity - line.returned
                qty = data.draw(st.integers(1, left) if left > 0 else st.just(1), label="quantity")
                requested.append((None, line.sku, qty) if by_sku else (line.line_id, None, qty))
            self.give_back(order, requested, wrong_member=False)

        def return_refused(self, data: st.DataObject) -> None:
            """Returns the engine must refuse: another member's order, an unknown line or SKU,
            more units than are left."""
            order = data.draw(st.sampled_from(self.orders), label="order")
            how = data.draw(st.sampled_from(["wrong member", "unknown", "too many"]))
            if how == "wrong member":
                self.give_back(order, None, wrong_member=True)
                return
            if how == "unknown" or not order.lines:
                line_id, sku = data.draw(st.sampled_from([("nope", None), (None, "Z")]))
                self.give_back(order, [(line_id, sku, 1)], wrong_member=False)
                return
            line = data.draw(st.sampled_from(order.lines), label="line")
            extra = data.draw(st.integers(1, 3), label="extra")
            self.give_back(
                order,
                [(line.line_id, None, line.quantity - line.returned + extra)],
                wrong_member=False,
            )

        def give_back(
            self,
            order: MOrder,
            requested: list[tuple[str | None, str | None, int]] | None,
            *,
            wrong_member: bool,
        ) -> None:
            member = order.member
            event = ReturnEvent(
                type="return",
                id=unique("R"),
                order_id=order.order_id,
                member=MemberRef(id=self.members[1 - self.members.index(member)].member_id)
                if wrong_member
                else None,
                occurred_at=self.now,
                lines=None
                if requested is None
                else [
                    ReturnLine(line_id=lid, quantity=q)
                    if lid is not None
                    else ReturnLine(sku=sku, quantity=q)
                    for lid, sku, q in requested
                ],
            )

            def submit() -> dict[str, Any]:
                return submit_event(
                    engine, self.principal, self.program_id, event, now=self.now
                ).body

            if wrong_member:
                self.expect_refusal(
                    member, ModelRejects(MemberMismatch, {"order_id": order.order_id}), submit
                )
                return
            try:
                plan = self.plan_return(order, requested)
            except ModelRejects as rejection:
                self.expect_refusal(member, rejection, submit)
                return
            body = submit()
            self.recorded_events.append((member, event, body))

            member.expire(self.now)
            line_points = sum(pts for _, _, pts in plan)
            points = self.reversal(order, plan) if order.lines else line_points
            # Points of the purchase that expired unspent are gone already: over all returns
            # of an order, the member is charged what they reverse less what expired.
            expired_own = order.lot.expired if order.lot is not None else 0
            charge = max(0, max(0, order.reversed + points - expired_own) - order.charged)
            order.reversed += points
            order.charged += charge
            taken = debt_added = written_off = 0
            if charge > 0:
                own = [order.lot] if order.lot is not None else []
                _, left = take(own, charge)
                _, left = take([x for x in member.lots if x is not order.lot], left)
                taken = charge - left
                if self.policy is NegativeBalancePolicy.ALLOW_DEBT:
                    debt_added = left
                    member.debt += left
                    taken = charge
                else:
                    written_off = left
                if taken:
                    member.statement.append(("return", -taken))
            for line_id, qty, pts in plan:
                if line_id == "order":
                    order.points_returned += pts
                else:
                    next(x for x in order.lines if x.line_id == line_id).returned += qty
            assert [(x["line_id"], x["quantity"], x["points"]) for x in body["lines"]] == plan
            assert body["points_reversed"] == points
            assert body["points_adjusted"] == points - line_points
            assert body["points_already_expired"] == points - charge
            assert body["points_taken"] == taken
            assert body["debt_added"] == debt_added
            assert body["points_written_off"] == written_off

        def reversal(self, order: MOrder, plan: list[tuple[str, int, int]]) -> int:
            """What the return reverses: what the order earned, less what the rest of the
            basket earns alone at the program's rate (never more than the order earned),
            less what earlier returns reversed."""
            if order.points == 0:
                return 0
            now_returned = {line_id: qty for line_id, qty, _ in plan}
            rest = 0
            any_left = False
            for x in order.lines:
                left = x.quantity - x.returned - now_returned.get(x.line_id, 0)
                if left:
                    any_left = True
                    rest += x.unit_price_minor * left - x.discount_minor * left // x.quantity
            kept = 0
            if any_left:
                kept = reference_round(
                    Fraction(rest * self.earn.points, self.earn.per_spend_minor),
                    self.earn.rounding,
                )
            return max(0, order.points - min(kept, order.points) - order.reversed)

        def plan_return(
            self, order: MOrder, requested: list[tuple[str | None, str | None, int]] | None
        ) -> list[tuple[str, int, int]]:
            """(line, quantity, points) the return takes back, from the documented rules."""
            if not order.lines:
                if requested:
                    line_id, sku, _ = requested[0]
                    raise ModelRejects(
                        UnknownOrderLine, {"order_id": order.order_id, "line": line_id or sku}
                    )
                left = order.points - order.points_returned
                return [("order", 1, left)] if left > 0 else []
            wanted: dict[str, int] = {}
            if requested is None:
                wanted = {x.line_id: x.quantity - x.returned for x in order.lines}
            else:
                for line_id, sku, qty in requested:
                    label = line_id if line_id is not None else sku
                    if line_id is not None:
                        candidates = [x for x in order.lines if x.line_id == line_id]
                    else:
                        candidates = [x for x in order.lines if x.sku == sku]
                    if not candidates:
                        raise ModelRejects(
                            UnknownOrderLine, {"order_id": order.order_id, "line": label}
                        )
                    free = sum(
                        x.quantity - x.returned - wanted.get(x.line_id, 0) for x in candidates
                    )
                    if qty > free:
                        raise ModelRejects(
                            ReturnExceedsPurchase,
                            {
                                "order_id": order.order_id,
                                "line": label,
                                "quantity_returnable": free,
                                "quantity_requested": qty,
                            },
                        )
                    for x in candidates:
                        step = min(x.quantity - x.returned - wanted.get(x.line_id, 0), qty)
                        wanted[x.line_id] = wanted.get(x.line_id, 0) + step
                        qty -= step
            plan = []
            for x in order.lines:
                qty = wanted.get(x.line_id, 0)
                if qty:
                    after = x.points * (x.returned + qty) // x.quantity
                    before = x.points * x.returned // x.quantity
                    plan.append((x.line_id, qty, after - before))
            return plan

        def redeem(self, member: MMember, points: int) -> None:
            key = unique("redeem")

            def submit() -> dict[str, Any]:
                return redeem_points(
                    engine,
                    self.principal,
                    self.program_id,
                    member.member_id,
                    points=points,
                    reason="reward",
                    reference=None,
                    idempotency_key=key,
                    now=self.now,
                ).body

            try:
                takes = self.burn(member, points)
            except ModelRejects as rejection:
                self.expect_refusal(member, rejection, submit)
                return
            body = submit()
            assert [(x["lot_id"], x["points"]) for x in body["lots"]] == [
                (lot.lot_id, pts) for lot, pts in takes
            ]
            assert body["points"] == points
            member.statement.append(("redeem", -points))
            self.redemptions.append(MRedemption(body["id"], member, points, key, takes, body))

        def redeem_some(self, data: st.DataObject) -> None:
            member = self.member(data)
            self.redeem(member, data.draw(st.integers(1, 200), label="points"))

        def redeem_near_the_balance(self, data: st.DataObject) -> None:
            member = self.member(data)
            delta = data.draw(st.integers(-2, 2), label="points minus available")
            self.redeem(member, max(member.available(self.now) + delta, 1))

        def cancel(self, data: st.DataObject) -> None:
            red = data.draw(st.sampled_from(self.redemptions), label="redemption")
            member = red.member

            def submit() -> dict[str, Any]:
                return cancel_redemption(
                    engine,
                    self.principal,
                    self.program_id,
                    red.redemption_id,
                    reason="changed mind",
                    idempotency_key=None,
                    now=self.now,
                ).body

            if red.cancelled:
                self.expect_refusal(
                    member,
                    ModelRejects(RedemptionAlreadyCancelled, {"redemption_id": red.redemption_id}),
                    submit,
                )
                return
            body = submit()
            red.cancelled = True
            repaid: dict[int, int] = {}
            repay_left = member.debt
            for lot, pts in sorted(
                red.takes,
                key=lambda t: (t[0].expires_at is None, t[0].expires_at or self.now, t[0].seq),
            ):
                step = min(pts, repay_left)
                repaid[lot.seq] = step
                repay_left -= step
            for lot, pts in red.takes:
                lot.remaining += pts - repaid[lot.seq]
            member.debt -= sum(repaid.values())
            member.statement.append(("redeem_cancel", red.points))
            assert body["status"] == "cancelled"
            assert body["points"] == red.points

        def repeat_an_event(self, data: st.DataObject) -> None:
            """A source sending an accepted purchase or return again gets the first response
            back and moves nothing; the same id with different content is refused."""
            if not self.recorded_events:
                return
            member, event, body = data.draw(st.sampled_from(self.recorded_events), label="event")
            before = self.snapshot(member)
            outcome = submit_event(engine, self.principal, self.program_id, event, now=self.now)
            assert outcome.replayed
            assert outcome.body == body
            changed = event.model_copy(update={"occurred_at": event.occurred_at - timedelta(1)})
            with pytest.raises(IdempotencyConflict):
                submit_event(engine, self.principal, self.program_id, changed, now=self.now)
            assert self.snapshot(member) == before

        def repeat_a_redemption_request(self, data: st.DataObject) -> None:
            """The same idempotency key replays the first response and moves nothing; with a
            different amount it is refused."""
            red = data.draw(st.sampled_from(self.redemptions), label="redemption")
            before = self.snapshot(red.member)
            for points, replay in ((red.points, True), (red.points + 1, False)):

                def submit(points: int = points) -> Any:
                    return redeem_points(
                        engine,
                        self.principal,
                        self.program_id,
                        red.member.member_id,
                        points=points,
                        reason="reward",
                        reference=None,
                        idempotency_key=red.idempotency_key,
                        now=self.now,
                    )

                if replay:
                    outcome = submit()
                    assert outcome.replayed
                    assert outcome.body == red.body
                else:
                    with pytest.raises(IdempotencyConflict):
                        submit()
            assert self.snapshot(red.member) == before

        def credit(self, data: st.DataObject) -> None:
            member = self.member(data)
            points = data.draw(st.integers(1, 300), label="points")
            expires_in_hours = data.draw(
                st.one_of(st.none(), st.integers(min_value=-48, max_value=200)),
                label="expires in hours",
            )
            expires_at = (
                None if expires_in_hours is None else self.now + timedelta(hours=expires_in_hours)
            )

            def submit() -> dict[str, Any]:
                return adjust_points(
                    engine,
                    self.principal,
                    self.program_id,
                    member.member_id,
                    points=points,
                    reason="goodwill",
                    reference=None,
                    expires_at=expires_at,
                    idempotency_key=unique("credit"),
                    now=self.now,
                ).body

            if expires_at is not None and expires_at <= self.now:
                self.expect_refusal(
                    member,
                    ModelRejects(ExpiryInPast, {"expires_at": expires_at.isoformat()}),
                    submit,
                )
                return
            body = submit()
            member.expire(self.now)
            self.earn_into(
                member,
                body["lots"][0]["lot_id"],
                points,
                earned_at=self.now,
                expires_at=expires_at or self.default_expiry(self.now),
            )
            member.statement.append(("adjust_credit", points))

        def debit(self, data: st.DataObject) -> None:
            member = self.member(data)
            points = data.draw(st.integers(1, 300), label="points")

            def submit() -> dict[str, Any]:
                return adjust_points(
                    engine,
                    self.principal,
                    self.program_id,
                    member.member_id,
                    points=-points,
                    reason="correction",
                    reference=None,
                    expires_at=None,
                    idempotency_key=unique("debit"),
                    now=self.now,
                ).body

            try:
                takes = self.burn(member, points)
            except ModelRejects as rejection:
                self.expect_refusal(member, rejection, submit)
                return
            body = submit()
            assert [(x["lot_id"], x["points"]) for x in body["lots"]] == [
                (lot.lot_id, pts) for lot, pts in takes
            ]
            member.statement.append(("adjust_debit", -points))

        def run_expiry(self, data: st.DataObject) -> None:
            report = expire_due_lots(engine, now=self.now)
            lots_expired = points_expired = members_touched = 0
            for member in self.members:
                due = member.overdue(self.now)
                if not due:
                    continue
                lots_expired += len(due)
                points_expired += sum(lot.remaining for lot in due)
                members_touched += 1
                member.expire(self.now)
            assert report == ExpiryReport(
                lots_expired, points_expired, members_touched, 1 if lots_expired else 0
            )
            assert expire_due_lots(engine, now=self.now) == ExpiryReport(0, 0, 0, 0)

        # -- the checks after every step ---------------------------------------------------

        @invariant()
        def ledger_matches_the_model(self) -> None:
            if not self.ready:
                return
            assert audit_ledger(engine) == []
            for member in self.members:
                assert member.debt >= 0
                view = get_balance(
                    engine, self.principal, self.program_id, member.member_id, now=self.now
                )
                buckets: dict[datetime, int] = {}
                for lot in member.lots:
                    if lot.remaining > 0 and lot.expires_at is not None:
                        buckets[lot.expires_at] = buckets.get(lot.expires_at, 0) + lot.remaining
                assert (view["balance"], view["debt"], view["available"]) == (
                    member.balance,
                    member.debt,
                    member.available(self.now),
                )
                assert view["expiring"] == [
                    {"expires_at": at.isoformat(), "points": pts, "expired": at <= self.now}
                    for at, pts in sorted(buckets.items())
                ]
                assert self.stored_lots(member) == {
                    lot.lot_id: (lot.amount, lot.remaining, lot.expires_at) for lot in member.lots
                }
                items = self.statement(member)
                assert [(i["kind"], i["points"]) for i in reversed(items)] == member.statement
                assert sum(i["points"] for i in items) == member.balance

    return LedgerMachine


@pytest.mark.slow
def test_random_operations_keep_the_ledger_equal_to_the_model(engine):
    run_state_machine_as_test(
        machine_for(engine),
        settings=settings(
            max_examples=20,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
