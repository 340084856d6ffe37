"""A small demo: one tenant, one cafe-and-bakery program, a dozen members with three months of
purchase history, a return and a redemption. Deterministic for a given ``now``."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, select

from loyalty.adapters.db.engine import run_transaction
from loyalty.adapters.db.tables import api_keys, programs
from loyalty.adapters.db.tables import redemptions as redemptions_table
from loyalty.application import access, members, redemptions
from loyalty.application import programs as program_uc
from loyalty.application.access import Principal, Scope
from loyalty.application.batch import record_events_batch
from loyalty.application.event_documents import LineItem, MemberRef, PurchaseEvent, ReturnEvent
from loyalty.application.events import AnyEvent
from loyalty.application.program_document import ProgramDocument
from loyalty.domain.errors import MemberAlreadyExists

DEMO_TENANT = "demo"
DEMO_KEY_ID = "key_demo"
DEMO_KEY_SECRET = "loyalty-demo-secret"  # noqa: S105 - the demo key is public by design
DEMO_TOKEN = f"{DEMO_KEY_ID}.{DEMO_KEY_SECRET}"

CATALOG = [
    ("ESP", "Espresso", "coffee", "House", 250),
    ("CAP", "Cappuccino", "coffee", "House", 380),
    ("LAT", "Oat latte", "coffee", "House", 420),
    ("CRO", "Croissant", "bakery", "House", 290),
    ("BAG", "Sourdough loaf", "bakery", "House", 650),
    ("BEA", "Coffee beans 250 g", "retail", "Roastery", 1290),
    ("MUG", "Ceramic mug", "retail", "Roastery", 1800),
]
NAMES = [
    ("Ada", "Lovelace"),
    ("Alan", "Turing"),
    ("Grace", "Hopper"),
    ("Edsger", "Dijkstra"),
    ("Barbara", "Liskov"),
    ("Donald", "Knuth"),
    ("Frances", "Allen"),
    ("Ken", "Thompson"),
    ("Radia", "Perlman"),
    ("Tony", "Hoare"),
    ("Margaret", "Hamilton"),
    ("John", "McCarthy"),
]


@dataclass(frozen=True, slots=True)
class DemoInfo:
    token: str
    program_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class _DemoState:
    tenant_id: str | None
    key_created_at: datetime | None
    program_id: str | None
    complete: bool


DEMO_REWARDS = [
    {
        "id": "free-croissant",
        "name": "A free croissant",
        "type": "free_product",
        "cost_points": 20,
        "skus": ["CRO"],
    },
    {
        "id": "five-off",
        "name": "EUR 5 off an order of EUR 20 or more",
        "type": "coupon_amount",
        "cost_points": 100,
        "value_minor": 500,
        "min_order_minor": 2000,
        "limit_per_member": {"max_count": 1, "period": "month"},
    },
]
"""The demo's reward catalog (the README's walk-through redeems the croissant)."""


def _demo_state(engine: Engine) -> _DemoState:
    def work(conn: Connection) -> _DemoState:
        key = conn.execute(
            select(api_keys.c.tenant_id, api_keys.c.created_at).where(api_keys.c.id == DEMO_KEY_ID)
        ).first()
        if key is None:
            return _DemoState(None, None, None, complete=False)
        program = conn.execute(
            select(programs.c.id)
            .where(programs.c.tenant_id == key.tenant_id)
            .order_by(programs.c.id)
        ).first()
        if program is None:
            return _DemoState(key.tenant_id, key.created_at, None, complete=False)
        # The demo's last step is the redemption: its presence marks a complete load.
        done = conn.execute(
            select(redemptions_table.c.id)
            .where(redemptions_table.c.program_id == program.id)
            .limit(1)
        ).first()
        return _DemoState(key.tenant_id, key.created_at, str(program.id), done is not None)

    return run_transaction(engine, work, write=False)


def demo_exists(engine: Engine) -> str | None:
    state = _demo_state(engine)
    return state.program_id if state.complete else None


def load_demo(engine: Engine, *, now: datetime, seed: int = 7) -> DemoInfo:
    """Load the demo, or finish a load that was interrupted: every step is idempotent and
    replays with the times of the first attempt."""
    state = _demo_state(engine)
    if state.complete and state.program_id is not None:
        return DemoInfo(DEMO_TOKEN, state.program_id, created=False)
    if state.tenant_id is None:
        issued = access.create_api_key(
            engine,
            tenant_name=DEMO_TENANT,
            name="demo admin key",
            scopes=[Scope.ADMIN],
            program_id=None,
            now=now,
            key_id=DEMO_KEY_ID,
            secret=DEMO_KEY_SECRET,
        )
        tenant_id = issued.tenant_id
    else:
        tenant_id = state.tenant_id
        now = state.key_created_at or now
    principal = Principal(tenant_id, DEMO_KEY_ID, access.expand_scopes([Scope.ADMIN]), None)
    document = ProgramDocument.model_validate(
        {
            "name": "Bean & Crumb Rewards",
            "currency": "EUR",
            "time_zone": "Europe/Paris",
            "points": {
                "earn": {"points": 1, "per_spend_minor": 100, "rounding": "floor"},
                "expiry": {"policy": "after_days", "days": 365},
                "negative_balance": "allow_debt",
            },
            "enrollment": {"auto_enroll_on_purchase": True},
            "rewards": DEMO_REWARDS,
        }
    )
    start = now - timedelta(days=90)
    program_id = state.program_id or str(
        program_uc.create_program(
            engine, principal, document, now=start, idempotency_key="demo-program"
        ).body["id"]
    )
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    for i, (first, last) in enumerate(NAMES, start=1):
        with contextlib.suppress(MemberAlreadyExists):
            members.enroll_member(
                engine,
                principal,
                program_id,
                external_id=f"C{1000 + i}",
                profile=members.MemberProfile(
                    email=f"{first}.{last}@example.com".lower(),
                    first_name=first,
                    last_name=last,
                    locale="en-GB",
                    marketing_consent=i % 3 != 0,
                    attributes={"favourite": rng.choice(CATALOG)[1]},
                ),
                now=start,
            )
    history: list[tuple[datetime, AnyEvent]] = []
    order = 0
    for i in range(1, len(NAMES) + 1):
        for _ in range(rng.randint(2, 9)):
            order += 1
            at = start + timedelta(
                days=rng.randint(0, 88), hours=rng.randint(7, 18), minutes=rng.randint(0, 59)
            )
            picks = rng.sample(CATALOG, rng.randint(1, 4))
            lines = [
                LineItem(
                    sku=sku,
                    name=name,
                    category=cat,
                    brand=brand,
                    quantity=rng.randint(1, 3),
                    unit_price_minor=price,
                )
                for sku, name, cat, brand, price in picks
            ]
            total = sum(li.quantity * li.unit_price_minor for li in lines)
            history.append(
                (
                    at,
                    PurchaseEvent(
                        type="purchase",
                        id=f"ORD-{order:05d}",
                        member=MemberRef(external_id=f"C{1000 + i}"),
                        occurred_at=at,
                        currency="EUR",
                        total_minor=total,
                        lines=lines,
                        channel=rng.choice(["store", "app"]),
                        store="Paris-01",
                    ),
                )
            )
    history.sort(key=lambda item: item[0])
    for at, event in history:
        record_events_batch(engine, principal, program_id, [event], now=at)
    first_at, first_order = history[0]
    returned_at = first_at + timedelta(days=2)
    record_events_batch(
        engine,
        principal,
        program_id,
        [
            ReturnEvent(
                type="return", id="RET-00001", order_id=first_order.id, occurred_at=returned_at
            )
        ],
        now=returned_at,
    )
    redeemed_at = now - timedelta(days=1)
    if _balance(engine, principal, program_id, "ext:C1001", redeemed_at) >= 5:
        redemptions.redeem_points(
            engine,
            principal,
            program_id,
            "ext:C1001",
            points=5,
            reason="free espresso",
            reference="demo",
            idempotency_key="demo-redemption-1",
            now=redeemed_at,
        )
    return DemoInfo(DEMO_TOKEN, program_id, created=True)


def _balance(engine: Engine, principal: Principal, program_id: str, ref: str, now: datetime) -> int:
    from loyalty.application.balances import get_balance

    return int(get_balance(engine, principal, program_id, ref, now=now)["available"])
