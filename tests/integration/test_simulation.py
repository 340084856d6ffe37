"""A backtest of a program on history earns what the live engine earned on the same events."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from loyalty.application import events, programs
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.event_documents import ActionEvent, PurchaseEvent, ReturnEvent
from loyalty.application.program_document import ProgramDocument, settings_from_document
from loyalty.application.simulation import compare, simulate

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DOCUMENT = {
    "name": "Grocer",
    "currency": "EUR",
    "time_zone": "Europe/Paris",
    "points": {"earn": {"points": 1, "per_spend_minor": 100, "rounding": "half_even"}},
    "enrollment": {"auto_enroll_on_purchase": True},
    "rules": [
        {
            "id": "own-2x",
            "name": "2x own brand",
            "trigger": "purchase",
            "conditions": {"include": {"brands": ["Private"]}},
            "effect": {"type": "multiplier", "factor_percent": 200},
            "limits": {"per_member": [{"period": "month", "max_points": 40}]},
        },
        {
            "id": "weekend",
            "name": "Weekend bonus",
            "trigger": "purchase",
            "conditions": {"days_of_week": ["sat", "sun"], "min_total_minor": 2000},
            "effect": {"type": "fixed", "points": 15},
            "limits": {"budget": {"points": 200, "period": "month"}},
        },
        {
            "id": "bulk",
            "name": "Bulk buyer",
            "trigger": "purchase",
            "conditions": {"expression": "purchase.items.exists(i, i.quantity >= 3)"},
            "effect": {"type": "formula", "formula": "purchase.items.size() * 2"},
        },
        {
            "id": "above-usual",
            "name": "20% above your usual basket",
            "trigger": "purchase",
            "conditions": {"above_average_percent": 20},
            "effect": {"type": "fixed", "points": 25},
        },
        {
            "id": "review",
            "name": "Review",
            "trigger": "action",
            "action": "review_posted",
            "effect": {"type": "fixed", "points": 10},
            "limits": {"per_member": [{"period": "week", "max_count": 1}]},
        },
        {
            "id": "return-weekday",
            "name": "Goodwill on weekday returns",
            "trigger": "return",
            "conditions": {"days_of_week": ["mon", "tue", "wed", "thu", "fri"]},
            "effect": {"type": "fixed", "points": 3},
            "limits": {"per_member": [{"period": "month", "max_count": 2}]},
        },
    ],
}


def _history(seed: int) -> list[PurchaseEvent | ActionEvent | ReturnEvent]:
    rng = random.Random(seed)
    history: list[PurchaseEvent | ActionEvent | ReturnEvent] = []
    orders: list[str] = []
    at = T0
    for n in range(160):
        at += timedelta(hours=rng.randint(1, 14))
        member = {"external_id": f"M{rng.randint(1, 6)}"}
        if orders and rng.random() < 0.1:
            history.append(
                ReturnEvent.model_validate(
                    {
                        "type": "return",
                        "id": f"R{n}",
                        "order_id": orders.pop(rng.randrange(len(orders))),
                        "occurred_at": at.isoformat(),
                    }
                )
            )
            continue
        if rng.random() < 0.2:
            history.append(
                ActionEvent.model_validate(
                    {
                        "type": "action",
                        "id": f"A{n}",
                        "member": member,
                        "occurred_at": at.isoformat(),
                        "action": "review_posted",
                    }
                )
            )
            continue
        lines = [
            {
                "unit_price_minor": rng.randint(50, 3000),
                "quantity": rng.randint(1, 3),
                "brand": rng.choice(["Private", "Other"]),
            }
            for _ in range(rng.randint(1, 4))
        ]
        history.append(
            PurchaseEvent.model_validate(
                {
                    "type": "purchase",
                    "id": f"O{n}",
                    "member": member,
                    "occurred_at": at.isoformat(),
                    "currency": "EUR",
                    "total_minor": sum(li["unit_price_minor"] * li["quantity"] for li in lines),
                    "lines": lines,
                }
            )
        )
        orders.append(f"O{n}")
    return history


def test_a_backtest_earns_exactly_what_the_live_engine_earned(engine):
    issued = create_api_key(
        engine, tenant_name="t", name="k", scopes=[Scope.ADMIN], program_id=None, now=T0
    )
    principal = authenticate(engine, issued.token)
    document = ProgramDocument.model_validate(DOCUMENT)
    program_id = str(programs.create_program(engine, principal, document, now=T0).body["id"])
    history = _history(seed=11)
    live_by_rule: dict[str, int] = defaultdict(int)
    live_total = 0
    for event in history:
        body = events.submit_event(engine, principal, program_id, event, now=event.occurred_at).body
        live_total += body["points_earned"]
        for share in body["rules"]:
            live_by_rule[share["rule"]] += share["points"]

    report = simulate(settings_from_document(document, version=1), history)
    assert report.points == live_total
    assert dict(report.points_by_rule) == dict(live_by_rule)
    assert report.caps_hit["own-2x"] + report.caps_hit["review"] > 0  # the caps were exercised
    assert report.points_by_rule["above-usual"] > 0
    assert report.points_by_rule["bulk"] > 0
    assert report.points_by_rule["return-weekday"] > 0
    assert report.purchases + report.actions + report.returns == len(history)


def test_comparing_a_candidate_shows_the_difference_per_rule():
    current = ProgramDocument.model_validate(DOCUMENT)
    candidate_doc = {
        **DOCUMENT,
        "rules": [
            {
                **DOCUMENT["rules"][0],
                "effect": {"type": "multiplier", "factor_percent": 300},
                "limits": {"per_member": [{"period": "month", "max_points": 400}]},
            },
            *DOCUMENT["rules"][1:],
        ],
    }
    candidate = ProgramDocument.model_validate(candidate_doc)
    history = _history(seed=3)
    base = simulate(settings_from_document(current, version=1), history)
    new = simulate(settings_from_document(candidate, version=2), history)
    diff = compare(new, base)
    assert diff["points_by_rule"]["base"] == 0
    assert diff["points_by_rule"]["weekend"] == 0
    assert (
        diff["points_by_rule"]["own-2x"]
        == new.points_by_rule["own-2x"] - base.points_by_rule["own-2x"]
    )
    assert diff["points_by_rule"]["own-2x"] > 0
    assert diff["points"] == sum(diff["points_by_rule"].values())
