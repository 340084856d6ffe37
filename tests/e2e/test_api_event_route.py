"""The busy path of ``POST /v1/programs/{program_id}/events`` answers every request exactly as
the documented route does, and hands it whatever it does not take whole."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from loyalty.application.access import Scope, create_api_key
from loyalty.entrypoints.api import event_route
from loyalty.entrypoints.api.app import create_app
from loyalty.entrypoints.api.event_route import EventRoute

AT = datetime(2026, 5, 4, 12, tzinfo=UTC).isoformat()
# The engine's ids and the moment of recording differ between two recordings of one request.
ID = re.compile(rb"\b(evt|mbr|ent|lot|prg|red|hld)_[0-9A-Z]{26}\b")
MOMENT = re.compile(rb'"as_of":"[^"]*"')


def _purchase(order_id: str, member: str = "C1", **fields: Any) -> dict[str, Any]:
    return {
        "type": "purchase",
        "id": order_id,
        "member": {"external_id": member},
        "occurred_at": AT,
        "currency": "EUR",
        "total_minor": 4_250,
        "lines": [
            {"sku": "A", "quantity": 2, "unit_price_minor": 1_000},
            {"sku": "B", "quantity": 1, "unit_price_minor": 2_250, "category": "café"},
        ],
        **fields,
    }


def _json(body: Any) -> tuple[dict[str, str], bytes]:
    import json

    return {"Content-Type": "application/json"}, json.dumps(body).encode()


def _raw(content_type: str, body: bytes) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": content_type}, body


# (what the case is, its headers and body, which token: "key" a verified key, else as given)
CASES: list[tuple[str, tuple[dict[str, str], bytes], str | None]] = [
    ("a purchase of a new customer", _json(_purchase("O1")), "key"),
    ("a purchase of a known customer", _json(_purchase("O2")), "key"),
    ("the same purchase again", _json(_purchase("O2")), "key"),
    ("the same id, another body", _json(_purchase("O2", total_minor=4_300)), "key"),
    ("another currency", _json(_purchase("O3", currency="USD")), "key"),
    ("no such member", _json({**_purchase("O4"), "member": {"id": "mbr_nobody"}}), "key"),
    ("a return", _json({"type": "return", "id": "R1", "order_id": "O1", "occurred_at": AT}), "key"),
    (
        "an action",
        _json(
            {
                "type": "action",
                "id": "A1",
                "action": "review",
                "member": {"external_id": "C1"},
                "occurred_at": AT,
            }
        ),
        "key",
    ),
    ("a field missing", _json({k: v for k, v in _purchase("O5").items() if k != "id"}), "key"),
    ("an unknown field", _json(_purchase("O6", coupon="X")), "key"),
    ("a wrong type", _json(_purchase("O7", total_minor="12")), "key"),
    ("a negative total", _json(_purchase("O8", total_minor=-1)), "key"),
    ("not JSON", _raw("application/json", b'{"type": "purchase",'), "key"),
    ("an empty body", _raw("application/json", b""), "key"),
    ("NaN", _raw("application/json", _json(_purchase("O9"))[1].replace(b"4250", b"NaN")), "key"),
    (
        "a byte order mark",
        _raw("application/json", b"\xef\xbb\xbf" + _json(_purchase("O10"))[1]),
        "key",
    ),
    (
        "a raw tab in a string",
        _raw("application/json", _json(_purchase("O11"))[1].replace(b'"C1"', b'"C\t1"')),
        "key",
    ),
    (
        "a lone surrogate",
        _raw("application/json", _json(_purchase("O12"))[1].replace(b'"C1"', b'"C\\ud8001"')),
        "key",
    ),
    ("a huge number", _json(_purchase("O13", total_minor=10**30)), "key"),
    (
        "JSON with a charset",
        _raw("application/json; charset=utf-8", _json(_purchase("O14"))[1]),
        "key",
    ),
    ("another content type", _raw("text/plain", _json(_purchase("O15"))[1]), "key"),
    ("no key", _json(_purchase("O16")), None),
    ("an unknown key", _json(_purchase("O17")), "key_nobody.secret"),
    ("a read-only key", _json(_purchase("O18")), "read"),
]


@contextmanager
def _client(engine: Any, *, busy_path: bool) -> Iterator[TestClient]:
    app = create_app(engine)
    if not busy_path:
        app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, EventRoute)]
    with TestClient(app) as client:
        yield client


def _answers(api: Any, *, busy_path: bool) -> list[tuple[str, int, dict[str, str], bytes]]:
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    read = create_api_key(
        api.engine,
        tenant_name="acme",
        name="reader",
        scopes=[Scope.READ],
        program_id=None,
        now=datetime.now(UTC),
    ).token
    tokens = {"key": api.token, "read": read}
    answers = []
    with _client(api.engine, busy_path=busy_path) as client:
        # The keys verified once, as a till's key is after its first request.
        for token in tokens.values():
            client.get("/v1/programs", headers={"Authorization": f"Bearer {token}"})
        for name, (headers, body), token in CASES:
            sent = dict(headers)
            if token is not None:
                sent["Authorization"] = f"Bearer {tokens.get(token, token)}"
            r = client.post(f"/v1/programs/{program}/events", content=body, headers=sent)
            shown = {
                k: v for k, v in r.headers.items() if k not in {"date", "server", "content-length"}
            }
            text = MOMENT.sub(b'"as_of":"-"', ID.sub(rb"\1_-", r.content))
            answers.append((name, r.status_code, shown, text.replace(program.encode(), b"P")))
    return answers


def test_every_request_is_answered_as_the_documented_route_answers_it(api):
    busy = _answers(api, busy_path=True)
    documented = _answers(api, busy_path=False)
    for got, expected in zip(busy, documented, strict=True):
        assert got == expected
    statuses = {name: status for name, status, _, _ in busy}
    # The cases are what their names say (so the comparison covers what it claims to).
    assert statuses["a purchase of a new customer"] == 201
    assert statuses["the same purchase again"] == 201  # replayed
    assert statuses["a return"] == statuses["an action"] == 201
    assert statuses["the same id, another body"] == 409
    assert statuses["an unknown field"] == 422
    assert statuses["no key"] == 401
    assert statuses["a read-only key"] == 403


def test_well_formed_events_of_a_verified_key_take_the_busy_path(api, monkeypatch):
    handed_back: list[str] = []
    original = event_route._hand_back

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        handed_back.append(scope["path"])
        await original(scope, receive, send)

    monkeypatch.setattr(event_route, "_hand_back", spy)
    program = api.create_program(enrollment={"auto_enroll_on_purchase": True})
    url = f"/v1/programs/{program}/events"
    assert api.request("POST", url, json=_purchase("O1")).status_code == 201
    assert api.request("POST", url, json=_purchase("O1")).headers["Idempotent-Replayed"] == "true"
    assert handed_back == []
    assert api.request("POST", url, json=_purchase("O2", total_minor="1")).status_code == 422
    assert api.request("POST", url, json=_purchase("O3"), token="nobody.x").status_code == 401
    assert handed_back == [url, url]
    # GET on the same path is not this route's.
    assert api.request("GET", url).status_code == 405
    assert handed_back == [url, url]


@pytest.mark.parametrize("length", [32, 33])
def test_a_long_program_id_is_judged_by_the_documented_route(api, length):
    r = api.request("POST", f"/v1/programs/{'p' * length}/events", json=_purchase("O1"))
    assert r.status_code == (404 if length == 32 else 422)
    assert r.headers["content-type"] == "application/problem+json"
