"""Real responses match the response models published in the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime

from loyalty.entrypoints.api import responses as bodies


def _check(model, response, status):
    assert response.status_code == status, response.text
    return model.model_validate(response.json())


def test_every_success_response_matches_its_published_model(api):
    now = datetime.now(UTC).isoformat()
    created = _check(
        bodies.ProgramOut,
        api.request(
            "POST",
            "/v1/programs",
            json={
                "name": "Contract",
                "currency": "EUR",
                "points": {"expiry": {"policy": "after_days", "days": 30}},
                "enrollment": {"auto_enroll_on_purchase": True},
            },
        ),
        201,
    )
    p = f"/v1/programs/{created.id}"
    _check(bodies.ProgramList, api.request("GET", "/v1/programs"), 200)
    _check(bodies.ProgramOut, api.request("GET", p), 200)
    _check(
        bodies.ProgramOut,
        api.request(
            "PUT",
            p,
            json={
                "name": "Contract 2",
                "currency": "EUR",
                "enrollment": {"auto_enroll_on_purchase": True},
            },
        ),
        200,
    )
    _check(bodies.ProgramOut, api.request("GET", f"{p}/versions/1"), 200)
    member = _check(
        bodies.MemberOut,
        api.request(
            "POST",
            f"{p}/members",
            json={
                "external_id": "C1",
                "email": "c1@example.com",
                "birth_date": "1990-02-03",
                "attributes": {"vip": True},
            },
        ),
        201,
    )
    _check(bodies.MemberPage, api.request("GET", f"{p}/members?limit=1"), 200)
    _check(bodies.MemberOut, api.request("GET", f"{p}/members/{member.id}"), 200)
    _check(
        bodies.MemberOut, api.request("PATCH", f"{p}/members/ext:C1", json={"locale": "fr-FR"}), 200
    )
    purchase = {
        "type": "purchase",
        "id": "O1",
        "member": {"external_id": "C2"},
        "occurred_at": now,
        "currency": "EUR",
        "total_minor": 5000,
        "lines": [{"sku": "A", "quantity": 2, "unit_price_minor": 2500}],
    }
    earned = bodies.EventResult.model_validate(
        api.request("POST", f"{p}/events", json=purchase).json()
    ).root
    assert isinstance(earned, bodies.PurchaseResult) and earned.points_earned == 50
    returned = bodies.EventResult.model_validate(
        api.request(
            "POST",
            f"{p}/events",
            json={
                "type": "return",
                "id": "R1",
                "order_id": "O1",
                "occurred_at": now,
                "lines": [{"sku": "A", "quantity": 1}],
            },
        ).json()
    ).root
    assert isinstance(returned, bodies.ReturnResult) and returned.points_taken == 25
    action = bodies.EventResult.model_validate(
        api.request(
            "POST",
            f"{p}/events",
            json={
                "type": "action",
                "id": "A1",
                "member": {"external_id": "C2"},
                "occurred_at": now,
                "action": "review_posted",
            },
        ).json()
    ).root
    assert isinstance(action, bodies.ActionResult)
    _check(bodies.BalanceOut, api.request("GET", f"{p}/members/ext:C2/balance"), 200)
    _check(bodies.LedgerPage, api.request("GET", f"{p}/members/ext:C2/ledger"), 200)
    red = _check(
        bodies.RedemptionOut,
        api.request(
            "POST",
            f"{p}/members/ext:C2/redemptions",
            json={"points": 5, "reason": "coffee"},
            headers={"Idempotency-Key": "k1"},
        ),
        201,
    )
    _check(bodies.RedemptionStatus, api.request("GET", f"{p}/redemptions/{red.id}"), 200)
    _check(bodies.CancellationOut, api.request("POST", f"{p}/redemptions/{red.id}/cancel"), 200)
    _check(
        bodies.AdjustmentOut,
        api.request(
            "POST",
            f"{p}/members/ext:C2/adjustments",
            json={"points": 7, "reason": "goodwill"},
            headers={"Idempotency-Key": "k2"},
        ),
        201,
    )
    _check(
        bodies.AdjustmentOut,
        api.request(
            "POST",
            f"{p}/members/ext:C2/adjustments",
            json={"points": -3, "reason": "correction"},
            headers={"Idempotency-Key": "k3"},
        ),
        201,
    )
    _check(
        bodies.ApiKeyCreated,
        api.request(
            "POST",
            "/v1/api-keys",
            json={"name": "till", "scopes": ["write"], "program_id": created.id},
        ),
        201,
    )
    _check(bodies.ApiKeyList, api.request("GET", "/v1/api-keys"), 200)
    problem = api.request("GET", f"{p}/members/ext:nobody")
    assert problem.headers["content-type"] == "application/problem+json"
    assert _check(bodies.Problem, problem, 404).code == "member_not_found"


def test_the_openapi_document_publishes_a_success_body_for_every_route(api):
    spec = api.client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method, operation in operations.items():
            successes = [code for code in operation["responses"] if code.startswith("2")]
            assert successes, f"{method.upper()} {path} documents no success response"
            if method != "delete":
                body = operation["responses"][successes[0]].get("content", {})
                assert "application/json" in body, f"{method.upper()} {path} has no JSON body"
