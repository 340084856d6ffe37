"""Helpers shared by the HTTP end-to-end tests (``test_api_*``). It holds no tests itself."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from loyalty.application.access import Scope, create_api_key

PROBLEM_JSON = "application/problem+json"


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and stable code."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM_JSON, r.headers
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:loyalty:problem:{code}", body
    assert body["title"] == HTTPStatus(status).phrase, body
    assert body["status"] == status, body
    assert body["code"] == code, body
    assert isinstance(body["detail"], str), body
    assert body["detail"] != "", body
    return body


def error_fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["errors"]]


def new_key() -> str:
    return uuid.uuid4().hex


def other_tenant_token(api: Any, *, tenant_name: str = "other") -> str:
    issued = create_api_key(
        api.engine,
        tenant_name=tenant_name,
        name="other admin",
        scopes=[Scope.ADMIN],
        program_id=None,
        now=datetime(2026, 1, 15, 12, 0, tzinfo=UTC),
    )
    return issued.token


def key_id_of(token: str) -> str:
    return token.partition(".")[0]


def purchase_body(
    order_id: str,
    external_id: str,
    lines: list[dict[str, Any]],
    *,
    currency: str = "EUR",
    **fields: Any,
) -> dict[str, Any]:
    total = sum(
        li.get("quantity", 1) * li["unit_price_minor"] - li.get("discount_minor", 0) for li in lines
    )
    return {
        "type": "purchase",
        "id": order_id,
        "member": {"external_id": external_id},
        "occurred_at": datetime.now(UTC).isoformat(),
        "currency": currency,
        "total_minor": total,
        "lines": lines,
        **fields,
    }


def return_body(return_id: str, order_id: str, lines: list[dict[str, Any]] | None = None) -> Any:
    body: dict[str, Any] = {
        "type": "return",
        "id": return_id,
        "order_id": order_id,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    if lines is not None:
        body["lines"] = lines
    return body


def post_event(api: Any, program: str, body: dict[str, Any], **kwargs: Any) -> Any:
    return api.request("POST", f"/v1/programs/{program}/events", json=body, **kwargs)


def adjust(
    api: Any,
    program: str,
    member: str,
    points: int,
    *,
    reason: str = "goodwill",
    expires_at: str | None = None,
    key: str | None = None,
    token: str | None = None,
) -> Any:
    body: dict[str, Any] = {"points": points, "reason": reason}
    if expires_at is not None:
        body["expires_at"] = expires_at
    return api.request(
        "POST",
        f"/v1/programs/{program}/members/{member}/adjustments",
        json=body,
        headers={"Idempotency-Key": key or new_key()},
        token=token,
    )


def credit(api: Any, program: str, member: str, points: int, **kwargs: Any) -> dict[str, Any]:
    r = adjust(api, program, member, points, **kwargs)
    assert r.status_code == 201, r.text
    return dict(r.json())


def redeem(
    api: Any,
    program: str,
    member: str,
    points: int,
    *,
    key: str | None = None,
    token: str | None = None,
    **fields: Any,
) -> Any:
    return api.request(
        "POST",
        f"/v1/programs/{program}/members/{member}/redemptions",
        json={"points": points, **fields},
        headers={"Idempotency-Key": key or new_key()},
        token=token,
    )


def ledger_page(api: Any, program: str, member: str, **params: Any) -> dict[str, Any]:
    r = api.request("GET", f"/v1/programs/{program}/members/{member}/ledger", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def ledger(api: Any, program: str, member: str) -> list[dict[str, Any]]:
    page = ledger_page(api, program, member, limit=200)
    assert page["next_cursor"] is None
    return list(page["items"])


def shares(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each rule's name and points, without the explanation of how it computed them."""
    return [{"rule": r["rule"], "points": r["points"]} for r in rules]
