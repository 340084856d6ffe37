"""A campaign budget holds under concurrent purchases of different members."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sqlalchemy import func, select

from loyalty.adapters.db.tables import rule_awards, rule_budgets
from loyalty.application import events, programs
from loyalty.application.access import Scope, authenticate, create_api_key
from loyalty.application.audit import audit_ledger
from loyalty.application.event_documents import PurchaseEvent
from loyalty.application.program_document import ProgramDocument

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_forty_members_racing_for_a_budget_of_ten_awards_get_exactly_ten(engine):
    issued = create_api_key(
        engine, tenant_name="t", name="k", scopes=[Scope.ADMIN], program_id=None, now=NOW
    )
    principal = authenticate(engine, issued.token)
    document = ProgramDocument.model_validate(
        {
            "name": "Budget",
            "currency": "EUR",
            "points": {"earn": {"points": 0}},
            "enrollment": {"auto_enroll_on_purchase": True},
            "rules": [
                {
                    "id": "launch",
                    "name": "Launch",
                    "trigger": "purchase",
                    "effect": {"type": "fixed", "points": 25},
                    "limits": {
                        "budget": {"points": 250},
                        "per_member": [{"period": "lifetime", "max_count": 1}],
                    },
                }
            ],
        }
    )
    program_id = str(programs.create_program(engine, principal, document, now=NOW).body["id"])
    barrier = threading.Barrier(40)

    def buy(n: int) -> int:
        event = PurchaseEvent.model_validate(
            {
                "type": "purchase",
                "id": f"O{n}",
                "member": {"external_id": f"M{n}"},
                "occurred_at": NOW.isoformat(),
                "currency": "EUR",
                "total_minor": 100,
                "lines": [{"unit_price_minor": 100}],
            }
        )
        barrier.wait()
        return int(
            events.submit_event(engine, principal, program_id, event, now=NOW).body["points_earned"]
        )

    with ThreadPoolExecutor(40) as pool:
        earned = list(pool.map(buy, range(40)))
    assert sorted(earned, reverse=True)[:11] == [25] * 10 + [0]
    assert sum(earned) == 250
    with engine.connect() as conn:
        used = conn.execute(select(rule_budgets.c.points_used)).scalar_one()
        awards = conn.execute(select(func.count()).select_from(rule_awards)).scalar_one()
    assert (used, awards) == (250, 10)
    assert audit_ledger(engine) == []
