"""POST .../events:batch: many events in one request, each validated, idempotent, recorded
and answered on its own."""

from __future__ import annotations

from datetime import UTC, datetime

from loyalty.application.audit import audit_ledger
from tests.e2e.test_api_support import assert_problem, other_tenant_token

AT = datetime(2026, 5, 4, 12, tzinfo=UTC).isoformat()


def _purchase(order_id, euros, member="C1"):
    return {
        "type": "purchase",
        "id": order_id,
        "member": {"external_id": member},
        "occurred_at": AT,
        "currency": "EUR",
        "total_minor": euros * 100,
    }


def test_each_event_of_a_batch_is_recorded_or_refused_on_its_own(api):
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    url = f"/v1/programs/{program}/events"
    first = api.request("POST", url, json=_purchase("O1", 10))
    assert first.status_code == 201, first.text
    events = [
        _purchase("O1", 10),  # already recorded: replayed, not counted twice
        _purchase("O2", 20),
        {**_purchase("O3", 30), "currency": "eur"},  # invalid: refused alone
        _purchase("O1", 99),  # the same id with another body: a conflict
        {"type": "return", "id": "R1", "order_id": "NOPE", "occurred_at": AT},
        _purchase("O4", 40, member="C2"),
    ]
    r = api.request("POST", f"{url}:batch", json={"events": events})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["status"] for x in body["results"]] == [200, 201, 422, 409, 404, 201]
    assert (body["accepted"], body["replayed"], body["rejected"]) == (3, 1, 3)
    assert body["results"][0]["body"] == first.json()
    assert body["results"][2]["problem"]["code"] == "validation_error"
    assert body["results"][2]["problem"]["errors"][0]["field"] == "purchase.currency"
    assert body["results"][3]["problem"]["code"] == "idempotency_conflict"
    assert body["results"][4]["problem"]["code"] == "order_not_found"
    assert body["results"][1]["body"]["points_earned"] == 20
    assert api.balance(program, "ext:C1")["balance"] == 30
    assert api.balance(program, "ext:C2")["balance"] == 40
    # The whole batch again: everything recorded is replayed, nothing moves.
    again = api.request("POST", f"{url}:batch", json={"events": events}).json()
    assert again["replayed"] == 3
    assert api.balance(program, "ext:C1")["balance"] == 30
    assert audit_ledger(api.engine) == []


def test_a_batch_is_refused_whole_past_its_limit_or_for_another_tenant(api):
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    url = f"/v1/programs/{program}/events:batch"
    too_many = {"events": [_purchase(f"O{n}", 1) for n in range(1_001)]}
    assert_problem(api.request("POST", url, json=too_many), 422, "validation_error")
    assert_problem(api.request("POST", url, json={"events": []}), 422, "validation_error")
    intruder = other_tenant_token(api)
    refused = api.request("POST", url, token=intruder, json={"events": [_purchase("X", 1)]})
    assert_problem(refused, 404, "program_not_found")
